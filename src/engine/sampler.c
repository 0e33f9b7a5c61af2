/* sampler.c: see sampler.h. The random generator is xoshiro256** seeded through splitmix64,
 * so a seed gives the same text on every machine. */
#include "sampler.h"
#include "../base/common.h"

#include <math.h>
#include <stdlib.h>

struct tl_sampler {
    tl_sampler_params p;
    int n_vocab;
    uint64_t rng[4];
    int32_t *recent; /* ring of the last repeat_last_n tokens */
    int n_recent, recent_pos;
    struct cand { float logit; int32_t id; } *cand;
};

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(uint64_t *s) {
    const uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

static double next_unit(uint64_t *s) { return (double)(next_u64(s) >> 11) * (1.0 / 9007199254740992.0); }

tl_sampler_params tl_sampler_default_params(void) {
    tl_sampler_params p = {.temp = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f,
                           .repeat_penalty = 1.0f, .repeat_last_n = 64, .seed = 42};
    return p;
}

int tl_sampler_check(const tl_sampler_params *p, tl_error *err) {
    const struct {
        const char *name;
        float v, lo, hi; /* compared as the floats they are stored in */
    } f[] = {{"temperature", p->temp, 0, 1e4f},
             {"top_p", p->top_p, 0, 1},
             {"min_p", p->min_p, 0, 1},
             {"repeat_penalty", p->repeat_penalty, 1e-6f, 1e4f}};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++)
        if (!(f[i].v >= f[i].lo && f[i].v <= f[i].hi)) /* NaN fails too */
            return tl_fail(err, "'%s' is %g, outside [%g, %g]", f[i].name, f[i].v, f[i].lo, f[i].hi);
    if (p->top_k < 0) return tl_fail(err, "'top_k' is %d, below 0", p->top_k);
    if (p->repeat_last_n < 0 || p->repeat_last_n > 1 << 20)
        return tl_fail(err, "'repeat_last_n' is %d, outside [0, %d]", p->repeat_last_n, 1 << 20);
    return 0;
}

tl_sampler *tl_sampler_new(const tl_sampler_params *p, int n_vocab) {
    tl_sampler *s = tl_xcalloc(1, sizeof *s);
    s->p = *p;
    s->n_vocab = n_vocab;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    if (s->p.repeat_last_n < 0) s->p.repeat_last_n = 0;
    s->recent = tl_xcalloc((size_t)(s->p.repeat_last_n + 1), sizeof(int32_t));
    s->cand = tl_xmalloc(sizeof *s->cand * (size_t)n_vocab);
    return s;
}

void tl_sampler_free(tl_sampler *s) {
    if (!s) return;
    free(s->recent);
    free(s->cand);
    free(s);
}

void tl_sampler_accept(tl_sampler *s, int32_t id) {
    if (s->p.repeat_last_n == 0) return;
    s->recent[s->recent_pos] = id;
    s->recent_pos = (s->recent_pos + 1) % s->p.repeat_last_n;
    if (s->n_recent < s->p.repeat_last_n) s->n_recent++;
}

int32_t tl_argmax(const float *logits, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

static int cmp_desc(const void *a, const void *b) {
    const struct cand *x = a, *y = b;
    if (x->logit > y->logit) return -1;
    if (x->logit < y->logit) return 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* The k best of n logits into c[0..k), in cmp_desc's order (by logit, then lower id first):
 * what sorting all n and keeping the first k gives, without sorting the rest. Ids arrive in
 * increasing order, so a candidate equal to the last kept one ranks after it. */
static void top_k(const float *logits, int n, int k, struct cand *c) {
    int m = 0;
    for (int i = 0; i < n; i++) {
        const float x = logits[i];
        if (m == k && !(x > c[k - 1].logit)) continue;
        int at = m < k ? m++ : k - 1;
        while (at > 0 && c[at - 1].logit < x) {
            c[at] = c[at - 1];
            at--;
        }
        c[at] = (struct cand){x, i};
    }
}

int32_t tl_sampler_sample(tl_sampler *s, float *logits) {
    const tl_sampler_params *p = &s->p;
    if (p->repeat_penalty != 1.0f) {
        /* each distinct recent token penalized once (as llama.cpp) */
        for (int i = 0; i < s->n_recent; i++) {
            const int32_t id = s->recent[i];
            bool seen = false;
            for (int j = 0; j < i; j++) seen |= s->recent[j] == id;
            if (seen || id < 0 || id >= s->n_vocab) continue;
            logits[id] = logits[id] > 0 ? logits[id] / p->repeat_penalty : logits[id] * p->repeat_penalty;
        }
    }
    if (p->temp <= 0.0f) return tl_argmax(logits, s->n_vocab);

    int n = s->n_vocab;
    if (p->top_k > 0 && p->top_k < n) { /* only the top k are ever looked at */
        n = p->top_k;
        top_k(logits, s->n_vocab, n, s->cand);
    } else {
        for (int i = 0; i < n; i++) s->cand[i] = (struct cand){logits[i], i};
        qsort(s->cand, (size_t)n, sizeof *s->cand, cmp_desc);
    }
    /* softmax over the survivors (at temperature 1 for the p filters, as llama.cpp) */
    double *prob = tl_xmalloc(sizeof(double) * (size_t)n);
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += prob[i] = exp((double)s->cand[i].logit - s->cand[0].logit);
    if (p->top_p < 1.0f) {
        double cum = 0.0;
        for (int i = 0; i < n; i++) {
            cum += prob[i] / sum;
            if (cum >= p->top_p) {
                n = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0.0f) {
        int keep = 1;
        while (keep < n && prob[keep] >= p->min_p * prob[0]) keep++;
        n = keep;
    }
    sum = 0.0;
    for (int i = 0; i < n; i++) sum += prob[i] = exp(((double)s->cand[i].logit - s->cand[0].logit) / p->temp);
    double r = next_unit(s->rng) * sum;
    int32_t pick = s->cand[n - 1].id;
    for (int i = 0; i < n; i++) {
        r -= prob[i];
        if (r < 0.0) {
            pick = s->cand[i].id;
            break;
        }
    }
    free(prob);
    return pick;
}
