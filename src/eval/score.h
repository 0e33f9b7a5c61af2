/* score.h: answer scoring for the accuracy harness (NIAH, RULER-style tasks, task files).
 *
 * Normalization, applied by every metric except "exact":
 *   - UTF-8 is decoded leniently (invalid bytes become U+FFFD, never a crash);
 *   - every Unicode White_Space codepoint (NBSP, U+2000..U+200A, U+3000, ...) and the
 *     zero-width U+200B..U+200D / U+FEFF count as whitespace; runs collapse to one space and
 *     the ends are trimmed;
 *   - letters are lower-cased: ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic (a small
 *     built-in table; other scripts are left as they are, which is what case-less scripts need);
 *   - for "contains" and "F1": Unicode punctuation (category P) is dropped and the English
 *     articles a/an/the are removed (SQuAD's convention).
 * "exact" compares after whitespace collapsing, trimming and lower-casing but keeps
 * punctuation other than a trailing . , ; : ! ? (so "71432." equals "71432").
 * F1 is SQuAD's bag-of-tokens F1 over whitespace tokens, except that CJK ideographs, kana
 * and hangul count as one token each (LongBench's Chinese F1 works on characters). */
#ifndef TL_EVAL_SCORE_H
#define TL_EVAL_SCORE_H

#include <stdbool.h>
#include <stddef.h>

#include "../../include/tailor.h"

/* tl_metric, its names (tl_metric_name, tl_metric_parse) and tl_score, a metric over several
 * references: include/tailor.h. */

double tl_score_exact(const char *pred, const char *ref);
double tl_score_contains(const char *pred, const char *ref);
double tl_score_f1(const char *pred, const char *ref);
/* First maximal run of ASCII digits in pred equals ref's digits (ref trimmed). */
double tl_score_number(const char *pred, const char *ref);
/* Fraction of refs found in pred (normalized, word-bounded). */
double tl_score_all(const char *pred, const char *const *refs, int n_refs);

#endif
