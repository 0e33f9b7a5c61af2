/* sampler.h: turning logits into the next token. tl_sampler_params and the sampler's calls
 * (greedy when temp <= 0; otherwise the llama.cpp order: repetition penalty -> top-k -> top-p
 * -> min-p -> temperature -> draw) are part of the public face: include/tailor.h. */
#ifndef TL_SAMPLER_H
#define TL_SAMPLER_H

#include "../base/common.h"

#include <stdint.h>

/* Index of the largest logit (first on ties). */
int32_t tl_argmax(const float *logits, int n);

#endif
