/* refcheck.h: compare tailor with a reference fixture made by scripts/ref/ (format in
 * scripts/ref/README.md): the top-20 logits at the recorded positions within tol (tol_q8 for
 * cases under 32 tokens, which take the 8-bit activation path), top-1 equal, the greedy
 * continuation for its first greedy_min_ok tokens (-1: all) up to the first near tie. optional:
 * a model CI does not fetch (a skip either way). q8_skip_pos0: position 0 is not compared on
 * the 8-bit path (a first token with massive activations, Qwen2.5). f32 KV throughout. */
#ifndef TL_TEST_REFCHECK_H
#define TL_TEST_REFCHECK_H

#include <stdbool.h>

void tl_ref_check_model(const char *fixture, const char *model_path, float tol, float tol_q8, int greedy_min_ok,
                        bool optional, bool q8_skip_pos0);

#endif
