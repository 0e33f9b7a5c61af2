/* calibrate.c: TailorKV layer identification (definitions in calibrate.h). */
#include "calibrate.h"
#include "../../include/tailor.h"
#include "../kv/policy.h"

#include <math.h>
#include <stdlib.h>

/* Descending order for the partial selection below. */
static void select_largest(float *a, int n, int k) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        const float piv = a[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] > piv) i++;
            while (a[j] < piv) j--;
            if (i <= j) {
                const float t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

double tl_calib_row_score(const float *logits, int n, double top, float *scratch) {
    if (n <= 0) return NAN;
    float mx = logits[0];
    for (int i = 1; i < n; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += scratch[i] = expf(logits[i] - mx);
    int k = (int)ceil(top * n - 1e-9);
    k = k < 1 ? 1 : k > n ? n : k;
    select_largest(scratch, n, k);
    double topm = 0;
    for (int i = 0; i < k; i++) topm += scratch[i];
    const double r = 1.0 - topm / sum;
    return r < 0 ? 0 : r;
}

typedef struct {
    tl_kv_layer base;
    tl_kv_layer *inner;
    int first_pos;
    double top;
    float *k; /* [n_ctx][n_head_kv][head_dim_k] f32 copy */
    double sum;
    int64_t count;
} probe;

static int probe_forward(tl_kv_layer *l, tl_pool *pool, int n_tok, const float *q, const float *k, const float *v,
                         float *out, tl_error *err) {
    probe *p = (probe *)l;
    const tl_kv_shape *s = &l->shape;
    const int n_past = l->n_tokens, H = s->n_head_kv, dk = s->head_dim_k, G = s->n_head / s->n_head_kv;
    if (n_past + n_tok > s->n_ctx)
        return tl_fail(err, "calibration probe: %d + %d tokens exceed the context %d", n_past, n_tok, s->n_ctx);
    memcpy(p->k + (size_t)n_past * H * dk, k, sizeof(float) * (size_t)n_tok * H * dk);
    const int last = n_past + n_tok - 1;
    if (last >= p->first_pos) {
        float *lg = tl_xmalloc(sizeof(float) * (size_t)(last + 1) * 2);
        float *scr = lg + last + 1;
        for (int i = TL_MAX(0, p->first_pos - n_past); i < n_tok; i++) {
            const int pos = n_past + i;
            const int lo = s->window > 0 ? TL_MAX(0, pos - s->window + 1) : 0;
            for (int h = 0; h < s->n_head; h++) {
                const float *qr = q + ((size_t)i * s->n_head + h) * dk;
                for (int t = lo; t <= pos; t++) {
                    const float *kr = p->k + ((size_t)t * H + h / G) * dk;
                    float d = 0;
                    for (int c = 0; c < dk; c++) d += qr[c] * kr[c];
                    lg[t - lo] = d * s->scale;
                }
                tl_softcap(lg, pos - lo + 1, s->softcap);
                p->sum += tl_calib_row_score(lg, pos - lo + 1, p->top, scr);
                p->count++;
            }
        }
        free(lg);
    }
    if (tl_kv_forward(p->inner, pool, n_tok, q, k, v, out, err)) return -1;
    l->n_tokens += n_tok;
    return 0;
}

static void probe_bytes(const tl_kv_layer *l, tl_kv_bytes *b) {
    const probe *p = (const probe *)l;
    p->inner->ops->bytes(p->inner, b);
}

static void probe_clear(tl_kv_layer *l) {
    probe *p = (probe *)l;
    tl_kv_clear(p->inner);
    l->n_tokens = 0;
    p->sum = 0;
    p->count = 0;
}

static void probe_destroy(tl_kv_layer *l) {
    probe *p = (probe *)l;
    tl_kv_destroy(p->inner);
    free(p->k);
    free(p);
}

static const tl_kv_ops probe_ops = {
    .name = "calib-probe", .forward = probe_forward, .bytes = probe_bytes, .clear = probe_clear, .destroy = probe_destroy};

tl_kv_layer *tl_calib_probe_new(tl_kv_layer *inner, int first_pos, double top, tl_error *err) {
    const tl_kv_shape *s = &inner->shape;
    float *k = malloc(sizeof(float) * (size_t)s->n_ctx * s->n_head_kv * s->head_dim_k);
    if (!k) {
        tl_fail(err, "calibration probe: cannot allocate the key copy for %d tokens", s->n_ctx);
        return NULL;
    }
    probe *p = tl_xcalloc(1, sizeof *p);
    p->base.ops = &probe_ops;
    p->base.shape = *s;
    p->base.n_tokens = inner->n_tokens;
    p->inner = inner;
    p->first_pos = first_pos;
    p->top = top;
    p->k = k;
    return &p->base;
}

double tl_calib_probe_score(const tl_kv_layer *l, int64_t *count) {
    const probe *p = (const probe *)l;
    if (count) *count = p->count;
    return p->count ? p->sum / (double)p->count : NAN;
}

int tl_calibrate(tl_model *m, const int32_t *tokens, int n, const tl_calib_params *p, double *scores, bool *window,
                 tl_error *err) {
    const tl_config *c = &m->cfg;
    if (n < 2) return tl_fail(err, "calibration text too short (%d tokens)", n);
    if (p->n_q < 1 || !(p->top > 0 && p->top <= 1)) return tl_fail(err, "calibration: n_q %d >= 1 and top %g in (0, 1] needed", p->n_q, p->top);
    tl_kv_layer_policy *pol = tl_xcalloc((size_t)c->n_layer, sizeof *pol);
    for (int i = 0; i < c->n_layer; i++) pol[i].kind = TL_KV_F32;
    tl_session *s = tl_session_new_with_policies(m, n, p->n_threads, p->chunk, pol, err);
    free(pol);
    if (!s) return -1;
    const int first = TL_MAX(0, n - p->n_q);
    for (int i = 0; i < c->n_layer; i++) {
        tl_kv_layer *pr = tl_calib_probe_new(s->kv[i], first, p->top, err);
        if (!pr) {
            tl_session_free(s);
            return tl_fail_prefix(err, "layer %d", i);
        }
        s->kv[i] = pr;
    }
    int rc = tl_session_eval(s, tokens, n, NULL, false, err);
    for (int i = 0; i < c->n_layer; i++) {
        scores[i] = tl_calib_probe_score(s->kv[i], NULL);
        window[i] = c->layer_swa[i];
    }
    tl_session_free(s);
    return rc;
}
