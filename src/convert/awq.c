/* awq.c: activation-aware weight quantization into w4g128 (awq.h describes the method). */
#include "awq.h"
#include "../../include/tailor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_POINT 4
#define ROWS_PER_TASK 16

const char *tl_awq_point_name(tl_act_point p) {
    switch (p) {
    case TL_ACT_ATTN_IN: return "qkv";
    case TL_ACT_ATTN_OUT: return "o";
    case TL_ACT_FFN_IN: return "gate_up";
    case TL_ACT_FFN_MID: return "down";
    }
    return "?";
}

void tl_awq_default_params(tl_awq_params *p) {
    memset(p, 0, sizeof *p);
    p->n_grid = 20;
    p->clip_grid = 20;
    p->max_samples = 512;
    p->n_ctx = 512;
}

/* ------------------------------------------------------------------ statistics */

typedef struct {
    int dim;
    double *abs_sum, *sq_sum; /* per input channel, over every token */
    float *rows;              /* kept rows [n_rows][dim] */
    int n_rows;
    int64_t n_seen;
} point_stats;

typedef struct {
    point_stats st[TL_MAX_LAYERS][N_POINT];
    int64_t stride; /* keep every stride-th row */
    int max_rows;
} collector;

/* The session calls this on its own thread, chunk by chunk, in token order. */
static void observe(void *vctx, int layer, tl_act_point pt, const float *x, int n_rows, int dim) {
    collector *c = vctx;
    point_stats *ps = &c->st[layer][pt];
    if (!ps->abs_sum) {
        ps->dim = dim;
        ps->abs_sum = tl_xcalloc((size_t)dim, sizeof(double));
        ps->sq_sum = tl_xcalloc((size_t)dim, sizeof(double));
        ps->rows = tl_xmalloc(sizeof(float) * (size_t)c->max_rows * (size_t)dim);
    }
    for (int r = 0; r < n_rows; r++, ps->n_seen++) {
        const float *xr = x + (size_t)r * dim;
        for (int i = 0; i < dim; i++) {
            ps->abs_sum[i] += fabsf(xr[i]);
            ps->sq_sum[i] += (double)xr[i] * xr[i];
        }
        if (ps->n_seen % c->stride == 0 && ps->n_rows < c->max_rows)
            memcpy(ps->rows + (size_t)ps->n_rows++ * dim, xr, sizeof(float) * (size_t)dim);
    }
}

static void collector_free(collector *c) {
    for (int l = 0; l < TL_MAX_LAYERS; l++)
        for (int p = 0; p < N_POINT; p++) {
            free(c->st[l][p].abs_sum);
            free(c->st[l][p].sq_sum);
            free(c->st[l][p].rows);
        }
}

/* ------------------------------------------------------------------ quantizing a matrix */

/* Rows of (W * diag(s)) / rs[row] to w4g128 (clipped with importance imp when clip > 1);
 * optionally the effective weights deq(Q) / s (what the unscaled input meets) into deq. */
typedef struct {
    const float *W;
    int64_t n_in, n_out;
    const float *s, *rs, *imp;
    int clip;
    uint8_t *q;   /* n_out rows of tl_row_size(w4g128, n_in), may be NULL if deq is given */
    float *deq;   /* may be NULL */
} qjob;

static void qjob_task(void *vc, int64_t task, int thread_id) {
    (void)thread_id;
    const qjob *j = vc;
    const size_t rs_bytes = tl_row_size(TL_TYPE_W4G128, j->n_in);
    float *tmp = tl_xmalloc(sizeof(float) * (size_t)j->n_in);
    uint8_t *qrow = j->q ? NULL : tl_xmalloc(rs_bytes);
    const int64_t r1 = TL_MIN(j->n_out, (task + 1) * ROWS_PER_TASK);
    for (int64_t r = task * ROWS_PER_TASK; r < r1; r++) {
        const float *w = j->W + r * j->n_in;
        /* the same expression in the search and in the final pass: equal bytes */
        for (int64_t c = 0; c < j->n_in; c++) {
            float v = w[c] * j->s[c];
            if (j->rs) v /= j->rs[r];
            tmp[c] = v;
        }
        uint8_t *q = j->q ? j->q + (size_t)r * rs_bytes : qrow;
        if (j->clip > 1) tl_quantize_row_w4g128_clip(tmp, q, j->n_in, j->imp, j->clip);
        else tl_quantize_row(TL_TYPE_W4G128, tmp, q, j->n_in);
        if (j->deq) {
            float *d = j->deq + r * j->n_in;
            tl_dequantize_row(TL_TYPE_W4G128, q, d, j->n_in);
            for (int64_t c = 0; c < j->n_in; c++) d[c] /= j->s[c];
        }
    }
    free(qrow);
    free(tmp);
}

static void run_qjob(tl_pool *pool, qjob *j) {
    tl_pool_run(pool, (j->n_out + ROWS_PER_TASK - 1) / ROWS_PER_TASK, qjob_task, j);
}

/* ------------------------------------------------------------------ search */

#define MAX_MEMBERS 3

typedef struct {
    tl_pool *pool;
    const point_stats *ps;
    int n_mem;
    const float *W[MAX_MEMBERS]; /* f32 originals */
    int64_t n_out[MAX_MEMBERS];
    float *yref[MAX_MEMBERS];    /* X W^T over the kept rows */
    float *deq, *y;              /* scratch: largest member */
} group_search;

/* Output error sum_k ||X deq_k^T - yref_k||^2 of the group with scales s. */
static double group_error(group_search *g, const float *s, int clip, const float *imp) {
    const int dim = g->ps->dim, n = g->ps->n_rows;
    double err = 0;
    for (int k = 0; k < g->n_mem; k++) {
        qjob j = {g->W[k], dim, g->n_out[k], s, NULL, imp, clip, NULL, g->deq};
        run_qjob(g->pool, &j);
        tl_matmul(g->pool, TL_TYPE_F32, g->deq, dim, g->n_out[k], g->ps->rows, n, g->y, g->n_out[k], NULL);
        const size_t cnt = (size_t)n * (size_t)g->n_out[k];
        for (size_t i = 0; i < cnt; i++) {
            const double e = (double)g->y[i] - g->yref[k][i];
            err += e * e;
        }
    }
    return err;
}

/* s = mean|x|^alpha, floor 1e-4, divided by sqrt(max * min) (AWQ's normalisation). */
static void make_scales(const point_stats *ps, float alpha, float *s) {
    float mx = 0, mn = INFINITY;
    for (int i = 0; i < ps->dim; i++) {
        float v = powf((float)(ps->abs_sum[i] / (double)ps->n_seen), alpha);
        if (!(v >= 1e-4f)) v = 1e-4f;
        s[i] = v;
        if (v > mx) mx = v;
        if (v < mn) mn = v;
    }
    const float norm = sqrtf(mx * mn);
    for (int i = 0; i < ps->dim; i++) s[i] /= norm;
}

/* Importance of input channel i for the clipping search: E[(x_i / s_i)^2]. */
static void make_importance(const point_stats *ps, const float *s, float *imp) {
    for (int i = 0; i < ps->dim; i++)
        imp[i] = (float)(ps->sq_sum[i] / (double)ps->n_seen / ((double)s[i] * s[i]));
}

/* Search one group: fills s (dim), *clip_out and the report. */
static void search_group(tl_pool *pool, const point_stats *ps, int n_mem, const float *const *W,
                         const int64_t *n_out, const tl_awq_params *p, float *s, int *clip_out,
                         tl_awq_group *rep) {
    const int dim = ps->dim, n = ps->n_rows;
    group_search g = {.pool = pool, .ps = ps, .n_mem = n_mem};
    int64_t max_out = 0;
    for (int k = 0; k < n_mem; k++) {
        g.W[k] = W[k];
        g.n_out[k] = n_out[k];
        if (n_out[k] > max_out) max_out = n_out[k];
    }
    g.deq = tl_xmalloc(sizeof(float) * (size_t)max_out * dim);
    g.y = tl_xmalloc(sizeof(float) * (size_t)max_out * n);
    rep->out_sq = 0;
    for (int k = 0; k < n_mem; k++) {
        g.yref[k] = tl_xmalloc(sizeof(float) * (size_t)n_out[k] * n);
        tl_matmul(pool, TL_TYPE_F32, W[k], dim, n_out[k], ps->rows, n, g.yref[k], n_out[k], NULL);
        for (size_t i = 0; i < (size_t)n_out[k] * n; i++) rep->out_sq += (double)g.yref[k][i] * g.yref[k][i];
    }
    float *cand = tl_xmalloc(sizeof(float) * dim), *imp = tl_xmalloc(sizeof(float) * dim);
    double best = INFINITY;
    const int n_grid = p->n_grid > 0 ? p->n_grid : 1;
    for (int gi = 0; gi < n_grid; gi++) {
        const float alpha = (float)gi / (float)n_grid;
        make_scales(ps, alpha, cand); /* alpha 0: all ones, i.e. plain RTN */
        const double e = group_error(&g, cand, 0, NULL);
        if (gi == 0) rep->err_rtn = e;
        if (e < best) {
            best = e;
            rep->alpha = alpha;
            memcpy(s, cand, sizeof(float) * dim);
        }
    }
    *clip_out = 0;
    rep->clipped = false;
    if (p->clip_grid > 1) {
        make_importance(ps, s, imp);
        const double e = group_error(&g, s, p->clip_grid, imp);
        if (e < best) {
            best = e;
            *clip_out = p->clip_grid;
            rep->clipped = true;
        }
    }
    rep->err_awq = best;
    for (int k = 0; k < n_mem; k++) free(g.yref[k]);
    free(g.deq);
    free(g.y);
    free(cand);
    free(imp);
}

/* ------------------------------------------------------------------ driver */

static void add_tensor(tl_awq_result *r, const char *name, tl_type type, uint32_t n_dims, int64_t ne0, int64_t ne1,
                       void *data, size_t nbytes) {
    r->tensors = tl_xrealloc(r->tensors, sizeof(tl_awq_tensor) * (size_t)(r->n_tensors + 1));
    tl_awq_tensor *t = &r->tensors[r->n_tensors++];
    t->name = tl_xstrdup(name);
    t->type = type;
    t->n_dims = n_dims;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = t->ne[3] = 1;
    t->data = data;
    t->nbytes = nbytes;
}

static float *mat_f32(const tl_mat *w) {
    float *f = tl_xmalloc(sizeof(float) * (size_t)w->n_in * (size_t)w->n_out);
    for (int64_t r = 0; r < w->n_out; r++) tl_get_row(w->type, w->data, w->n_in, r, f + r * w->n_in);
    return f;
}

/* f32 copy of vector v (n) divided by s, added as tensor name */
static void add_scaled_vec(tl_awq_result *r, const char *name, const float *v, const float *s, int64_t n) {
    float *o = tl_xmalloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) o[i] = v[i] / s[i];
    add_tensor(r, name, TL_TYPE_F32, 1, n, 1, o, sizeof(float) * (size_t)n);
}

enum { M_Q, M_K, M_V, M_O, M_GATE, M_UP, M_DOWN, N_MAT };

static int do_layer(tl_model *m, tl_pool *pool, collector *col, int il, const tl_awq_params *p, tl_awq_filter filter,
                    void *fctx, tl_awq_result *res, tl_error *err) {
    const tl_config *c = &m->cfg;
    const tl_layer_weights *L = &m->w.layers[il];
    const tl_mat *mats[N_MAT] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    static const tl_act_point input_of[N_MAT] = {TL_ACT_ATTN_IN, TL_ACT_ATTN_IN, TL_ACT_ATTN_IN, TL_ACT_ATTN_OUT,
                                                 TL_ACT_FFN_IN, TL_ACT_FFN_IN, TL_ACT_FFN_MID};
    bool quant[N_MAT];
    for (int k = 0; k < N_MAT; k++) {
        quant[k] = !filter || filter(fctx, mats[k]->name);
        if (quant[k] && mats[k]->n_in % 128)
            return tl_fail(err, "tensor '%s': %lld inputs are not a multiple of 128 (w4g128)", mats[k]->name,
                           (long long)mats[k]->n_in);
    }
    for (int pt = 0; pt < N_POINT; pt++) {
        const point_stats *ps = &col->st[il][pt];
        if (!ps->abs_sum || ps->n_rows == 0)
            return tl_fail(err, "layer %d: no activations were observed at the %s input", il,
                           tl_awq_point_name((tl_act_point)pt));
    }
    float *W[N_MAT];
    for (int k = 0; k < N_MAT; k++) W[k] = quant[k] ? mat_f32(mats[k]) : NULL;
    float *scale[N_POINT] = {NULL, NULL, NULL, NULL}; /* per group input, NULL = ones */
    int clip[N_POINT] = {0, 0, 0, 0};

    /* groups: members, and the extra matrix whose rows take 1/s (o -> v, down -> up) */
    static const struct { tl_act_point pt; int mem[MAX_MEMBERS]; int n_mem; int row_fold; } groups[N_POINT] = {
        {TL_ACT_ATTN_IN, {M_Q, M_K, M_V}, 3, -1},
        {TL_ACT_ATTN_OUT, {M_O}, 1, M_V},
        {TL_ACT_FFN_IN, {M_GATE, M_UP}, 2, -1},
        {TL_ACT_FFN_MID, {M_DOWN}, 1, M_UP},
    };
    for (int gi = 0; gi < N_POINT; gi++) {
        const tl_act_point pt = groups[gi].pt;
        const point_stats *ps = &col->st[il][pt];
        res->groups = tl_xrealloc(res->groups, sizeof(tl_awq_group) * (size_t)(res->n_groups + 1));
        tl_awq_group *rep = &res->groups[res->n_groups++];
        memset(rep, 0, sizeof *rep);
        rep->layer = il;
        rep->point = pt;
        bool ok = true;
        for (int k = 0; k < groups[gi].n_mem; k++) ok = ok && quant[groups[gi].mem[k]];
        if (groups[gi].row_fold >= 0) ok = ok && quant[groups[gi].row_fold];
        if (!ok) {
            rep->why = "a matrix of the group (or the one its scales fold into) is not quantized to w4g128";
            continue;
        }
        if (pt == TL_ACT_ATTN_OUT && (c->n_head != c->n_head_kv || c->head_dim_k != c->head_dim_v)) {
            rep->why = "grouped-query attention: one V channel feeds several heads, no per-channel fold into w_v";
            continue;
        }
        const float *gw[MAX_MEMBERS];
        int64_t gn[MAX_MEMBERS];
        for (int k = 0; k < groups[gi].n_mem; k++) {
            gw[k] = W[groups[gi].mem[k]];
            gn[k] = mats[groups[gi].mem[k]]->n_out;
        }
        scale[pt] = tl_xmalloc(sizeof(float) * (size_t)ps->dim);
        search_group(pool, ps, groups[gi].n_mem, gw, gn, p, scale[pt], &clip[pt], rep);
        rep->applied = true;
    }

    /* final tensors: every matrix the caller stores as w4g128 */
    char name[160];
    for (int k = 0; k < N_MAT; k++) {
        if (!quant[k]) continue;
        const tl_mat *w = mats[k];
        const point_stats *ps = &col->st[il][input_of[k]];
        float *ones = NULL;
        const float *s = scale[input_of[k]];
        if (!s) {
            ones = tl_xmalloc(sizeof(float) * (size_t)w->n_in);
            for (int64_t i = 0; i < w->n_in; i++) ones[i] = 1.0f;
            s = ones;
        }
        const float *rs = k == M_V ? scale[TL_ACT_ATTN_OUT] : k == M_UP ? scale[TL_ACT_FFN_MID] : NULL;
        float *imp = NULL;
        const int cl = clip[input_of[k]];
        if (cl > 1) {
            imp = tl_xmalloc(sizeof(float) * (size_t)w->n_in);
            make_importance(ps, s, imp);
        }
        const size_t bytes = tl_row_size(TL_TYPE_W4G128, w->n_in) * (size_t)w->n_out;
        uint8_t *q = tl_xmalloc(bytes);
        qjob j = {W[k], w->n_in, w->n_out, s, rs, imp, cl, q, NULL};
        run_qjob(pool, &j);
        add_tensor(res, w->name, TL_TYPE_W4G128, 2, w->n_in, w->n_out, q, bytes);
        free(imp);
        free(ones);
    }
    if (scale[TL_ACT_ATTN_IN]) {
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", il);
        add_scaled_vec(res, name, L->attn_norm, scale[TL_ACT_ATTN_IN], c->n_embd);
    }
    if (scale[TL_ACT_FFN_IN]) {
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", il);
        add_scaled_vec(res, name, L->ffn_norm, scale[TL_ACT_FFN_IN], c->n_embd);
    }
    if (scale[TL_ACT_ATTN_OUT] && L->bv) {
        snprintf(name, sizeof name, "blk.%d.attn_v.bias", il);
        add_scaled_vec(res, name, L->bv, scale[TL_ACT_ATTN_OUT], (int64_t)c->n_head_kv * c->head_dim_v);
    }
    for (int k = 0; k < N_MAT; k++) free(W[k]);
    for (int pt = 0; pt < N_POINT; pt++) free(scale[pt]);
    return 0;
}

int tl_awq_run(tl_model *m, const int32_t *tokens, int64_t n_tokens, const tl_awq_params *p, tl_awq_filter filter,
               void *filter_ctx, tl_awq_result *res, tl_error *err) {
    memset(res, 0, sizeof *res);
    tl_awq_params def;
    if (!p) {
        tl_awq_default_params(&def);
        p = &def;
    }
    if (p->max_tokens > 0 && n_tokens > p->max_tokens) n_tokens = p->max_tokens;
    if (n_tokens <= 0) return tl_fail(err, "AWQ: no calibration tokens");
    /* phi3 binds wq/wk/wv and w_gate/w_up as row ranges of one tensor; AWQ writes whole
     * tensors by name, so those would be written three and two times over */
    const tl_layer_weights *L0 = &m->w.layers[0];
    if (!strcmp(L0->wq.name, L0->wk.name) || !strcmp(L0->w_gate.name, L0->w_up.name))
        return tl_fail(err, "AWQ: %s models' fused tensors ('%s', '%s') are not supported; use --type q4_0, q8_0 or "
                            "w4g128 (round to nearest)", m->cfg.arch_name, L0->wq.name, L0->w_up.name);
    const int n_ctx = p->n_ctx > 0 ? p->n_ctx : 512;
    const int max_rows = p->max_samples > 0 ? p->max_samples : 512;
    collector *col = tl_xcalloc(1, sizeof *col);
    col->max_rows = max_rows;
    col->stride = (n_tokens + max_rows - 1) / max_rows;
    if (col->stride < 1) col->stride = 1;
    int rc = -1;
    tl_session *s = tl_session_new_with_policies(m, n_ctx, p->n_threads, 0, NULL, err); /* chunk: the default */
    if (!s) goto done;
    s->observer = observe;
    s->observer_ctx = col;
    double t0 = tl_time_s();
    for (int64_t off = 0; off < n_tokens; off += n_ctx) {
        const int len = (int)TL_MIN((int64_t)n_ctx, n_tokens - off);
        tl_session_reset(s);
        if (tl_session_eval(s, tokens + off, len, NULL, false, err)) {
            tl_fail_prefix(err, "AWQ calibration window at token %lld", (long long)off);
            goto done;
        }
        if (p->progress)
            fprintf(stderr, "\rawq: statistics %lld/%lld tokens", (long long)(off + len), (long long)n_tokens);
    }
    s->observer = NULL;
    res->n_tokens = n_tokens;
    res->n_samples = col->st[0][0].n_rows;
    res->seconds_stats = tl_time_s() - t0;
    if (p->progress) fprintf(stderr, " (%.1f s)\n", res->seconds_stats);
    t0 = tl_time_s();
    for (int il = 0; il < m->cfg.n_layer; il++) {
        if (do_layer(m, s->pool, col, il, p, filter, filter_ctx, res, err)) {
            tl_fail_prefix(err, "AWQ layer %d", il);
            goto done;
        }
        if (p->progress) {
            fprintf(stderr, "awq: layer %d:", il);
            for (int g = res->n_groups - N_POINT; g < res->n_groups; g++) {
                const tl_awq_group *r = &res->groups[g];
                if (r->applied)
                    fprintf(stderr, " %s alpha %.2f%s err %.3g -> %.3g;", tl_awq_point_name(r->point), r->alpha,
                            r->clipped ? " clip" : "", r->err_rtn / r->out_sq, r->err_awq / r->out_sq);
                else
                    fprintf(stderr, " %s skipped;", tl_awq_point_name(r->point));
            }
            fprintf(stderr, " (%.1f s)\n", tl_time_s() - t0);
        }
    }
    res->seconds_search = tl_time_s() - t0;
    rc = 0;
done:
    tl_session_free(s);
    collector_free(col);
    free(col);
    return rc;
}

const tl_awq_tensor *tl_awq_find(const tl_awq_result *r, const char *name) {
    for (int i = 0; i < r->n_tensors; i++)
        if (!strcmp(r->tensors[i].name, name)) return &r->tensors[i];
    return NULL;
}

void tl_awq_result_free(tl_awq_result *r) {
    for (int i = 0; i < r->n_tensors; i++) {
        free(r->tensors[i].name);
        free(r->tensors[i].data);
    }
    free(r->tensors);
    free(r->groups);
    memset(r, 0, sizeof *r);
}
