/* sampler.h: turning logits into the next token. Greedy when temp <= 0; otherwise the
 * llama.cpp order: repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw. */
#ifndef TL_SAMPLER_H
#define TL_SAMPLER_H

#include "common.h"

#include <stdint.h>

typedef struct {
    float temp;        /* <= 0: greedy */
    int top_k;         /* <= 0: off */
    float top_p;       /* >= 1: off */
    float min_p;       /* <= 0: off */
    float repeat_penalty; /* 1: off */
    int repeat_last_n; /* how many recent tokens the penalty looks at */
    uint64_t seed;
} tl_sampler_params;

typedef struct tl_sampler tl_sampler;

/* The accepted values of the sampling parameters, one rule for the CLI flags and the server's
 * request fields: temperature [0, 1e4] (0 greedy), top_k >= 0 (0 off), top_p [0, 1], min_p
 * [0, 1], repeat_penalty [1e-6, 1e4] (1 off; 0 would divide by zero), repeat_last_n [0, 2^20].
 * Returns 0, or -1 with err naming the field (by its request name) and the value. */
int tl_sampler_check(const tl_sampler_params *p, tl_error *err);

tl_sampler_params tl_sampler_default_params(void);
tl_sampler *tl_sampler_new(const tl_sampler_params *p, int n_vocab);
void tl_sampler_free(tl_sampler *s);
/* Pick a token from logits (modified in place by the penalty). */
int32_t tl_sampler_sample(tl_sampler *s, float *logits);
/* Record a token that entered the sequence (prompt or generated), for the penalty. */
void tl_sampler_accept(tl_sampler *s, int32_t id);
/* Index of the largest logit (first on ties). */
int32_t tl_argmax(const float *logits, int n);

#endif
