/* test_sampler.c: top-k sampling selects the k best logits without sorting the vocabulary, and
 * must pick exactly what sorting everything would: the same candidates in the same order (by
 * logit, ties by lower id). Checked against the full sort path on logits where everything
 * outside the top k is -inf (so it carries no probability and top_p stops inside the k): the
 * two samplers, same seed, must pick the same token every time. Logits are rounded to quarters
 * so that ties are frequent. */
#include "../../src/engine/sampler.h"
#include "../testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x2545F4914F6CDD1DULL;
static double unit(void) {
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    return (double)((rng * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}

static int by_logit_desc(const void *a, const void *b) {
    const float *x = a, *y = b; /* (logit, id) pairs */
    if (x[0] != y[0]) return x[0] > y[0] ? -1 : 1;
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

int main(void) {
    const int V = 3000, ks[] = {1, 2, 40, 100, 2999};
    float *l = malloc(sizeof(float) * V), *masked = malloc(sizeof(float) * V), *tmp = malloc(sizeof(float) * V);
    float *pairs = malloc(sizeof(float) * 2 * V);
    int picks = 0, differ = 0;
    for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++) {
        const int k = ks[ki];
        tl_sampler_params p = tl_sampler_default_params();
        p.top_k = k;
        p.top_p = 0.99f;
        p.min_p = 0.0f;
        p.temp = 0.9f;
        p.repeat_penalty = 1.0f;
        p.seed = 7 + (uint64_t)k;
        tl_sampler_params q = p;
        q.top_k = 0; /* the full sort */
        tl_sampler *a = tl_sampler_new(&p, V), *b = tl_sampler_new(&q, V);
        for (int trial = 0; trial < 200; trial++) {
            for (int i = 0; i < V; i++) l[i] = roundf((float)(unit() * 12.0 - 6.0) * 4.0f) / 4.0f;
            /* the k best by (logit desc, id asc); the rest masked */
            for (int i = 0; i < V; i++) pairs[2 * i] = l[i], pairs[2 * i + 1] = (float)i;
            qsort(pairs, (size_t)V, 2 * sizeof(float), by_logit_desc);
            for (int i = 0; i < V; i++) masked[i] = -INFINITY;
            for (int i = 0; i < k; i++) masked[(int)pairs[2 * i + 1]] = pairs[2 * i];
            memcpy(tmp, l, sizeof(float) * V);
            const int32_t x = tl_sampler_sample(a, tmp);
            memcpy(tmp, masked, sizeof(float) * V);
            const int32_t y = tl_sampler_sample(b, tmp);
            differ += x != y;
            picks++;
            CHECKF(x == y, "top_k %d trial %d: picked %d, the full sort %d", k, trial, x, y);
        }
        tl_sampler_free(a);
        tl_sampler_free(b);
    }
    printf("%d picks, %d differ from the full sort\n", picks, differ);
    free(l), free(masked), free(tmp), free(pairs);
    return tl_test_done();
}
