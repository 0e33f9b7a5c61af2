/* batch.c: session.c's forward pass over the rows of several sequences at once.
 *
 * The sequences are laid out by their row count, smallest first, and their rows concatenated:
 * every weight matmul runs over all rows (tl_matmul with n_rows = the step's total, so the
 * quantized kernels read each weight row once for all of them), the per-row work (norms,
 * residual adds, activations) runs over all rows, and RoPE and attention run per sequence, at
 * its positions, against its own KV store.
 *
 * tl_matmul picks its kernels by the number of rows: up to tl_matmul_rounded_rows(type) the
 * activations are rounded to q8 blocks, above it they stay f32. A sequence alone gets the
 * regime of its own row count, so the batch does the same: sequences small enough for the
 * rounded kernels (a prefix of the layout) go in calls of at most that many rows, the others
 * in one f32 call. Within a regime rows are independent, so each sequence's logits equal
 * tl_session_eval's up to the order of float additions, whatever else shares its step.
 * A batch made for a device's sequences (tl_batch_new_for with device "cuda") checks and lays
 * out the step here and runs it on the backend's own step (engine/backend.h; the CUDA
 * backend's is src/cuda/batch.cu). */
#include "batch.h"
#include "plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tl_batch {
    tl_model *m;
    tl_session_params sp;  /* the sequences tl_batch_session_new makes */
    const tl_backend_ops *be; /* their backend */
    void *dev;             /* a device's step (be->batch_new); then the CPU buffers below are unused */
    tl_pool *pool;
    const tl_vec_ops *vo;
    int max_rows, max_seqs;
    tl_activations act;   /* session.c's buffers, sized for max_rows; act.logits: [max_seqs][n_vocab] */
    float *q_pred;        /* [max_rows][n_head*head_dim_k] queries predicted for the next layer */
    uint64_t bytes;
    /* the step being run, in layout order */
    const tl_batch_seq **seq; /* [max_seqs] */
    int *row0;                /* [max_seqs + 1] first row of each sequence; row0[n] = total */
    int *n_rows;              /* [max_seqs] rows of each sequence, ascending */
    int n_seq;
};

static void *ws_alloc(tl_batch *b, size_t bytes) {
    void *p = tl_amalloc(bytes);
    if (!p) {
        fprintf(stderr, "tailor: out of memory allocating %zu bytes for the batch workspace\n", bytes);
        abort();
    }
    b->bytes += bytes;
    return p;
}

/* The step's layout (sequences and rows), whichever device runs it. */
static void layout_alloc(tl_batch *b, int max_seqs) {
    b->seq = tl_xcalloc((size_t)max_seqs, sizeof *b->seq);
    b->row0 = tl_xcalloc((size_t)max_seqs + 1, sizeof *b->row0);
    b->n_rows = tl_xcalloc((size_t)max_seqs, sizeof *b->n_rows);
}

tl_batch *tl_batch_new(tl_model *m, int max_rows, int max_seqs, int n_threads, tl_error *err) {
    if (max_rows < 1 || max_seqs < 1) {
        tl_fail(err, "batch: need room for at least one row and one sequence (got %d rows, %d sequences)", max_rows,
                max_seqs);
        return NULL;
    }
    const tl_config *c = &m->cfg;
    tl_batch *b = tl_xcalloc(1, sizeof *b);
    b->m = m;
    b->be = &tl_backend_cpu;
    b->pool = tl_pool_new(n_threads);
    b->vo = tl_vec_get();
    tl_model_pack(m, b->pool);
    b->max_rows = max_rows;
    b->max_seqs = max_seqs;
    const size_t E = (size_t)c->n_embd, R = (size_t)max_rows, qdim = (size_t)c->n_head * c->head_dim_k;
    tl_activations *a = &b->act;
    a->x = ws_alloc(b, sizeof(float) * R * E);
    a->xn = ws_alloc(b, sizeof(float) * TL_MAX(R, (size_t)max_seqs) * E);
    a->q = ws_alloc(b, sizeof(float) * R * qdim);
    a->k = ws_alloc(b, sizeof(float) * R * c->n_head_kv * c->head_dim_k);
    a->v = ws_alloc(b, sizeof(float) * R * c->n_head_kv * c->head_dim_v);
    a->attn = ws_alloc(b, sizeof(float) * R * c->n_head * c->head_dim_v);
    a->gate = ws_alloc(b, sizeof(float) * R * c->n_ff);
    a->up = ws_alloc(b, sizeof(float) * R * c->n_ff);
    a->tmp = ws_alloc(b, sizeof(float) * R * E);
    a->rope = ws_alloc(b, sizeof(float) * R * 2 * (size_t)c->n_rot);
    a->logits = ws_alloc(b, sizeof(float) * (size_t)max_seqs * c->n_vocab);
    b->q_pred = ws_alloc(b, sizeof(float) * R * qdim);
    /* matmul scratch: the largest activation conversion any matrix needs for the step's rows
     * (the output matrix sees at most max(max_rows, max_seqs) of them) */
    const int64_t out_rows = TL_MAX(max_rows, max_seqs);
    size_t need = tl_matmul_scratch_size(m->w.output.type, c->n_embd, out_rows);
    for (int il = 0; il < c->n_layer; il++) {
        const tl_layer_weights *L = &m->w.layers[il];
        const tl_mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof mats / sizeof *mats; i++)
            need = TL_MAX(need, tl_matmul_scratch_size(mats[i]->type, mats[i]->n_in, max_rows));
    }
    a->mm_scratch_bytes = need;
    a->mm_scratch = ws_alloc(b, need);
    layout_alloc(b, max_seqs);
    return b;
}

tl_batch *tl_batch_new_for(tl_model *m, int max_rows, int max_seqs, int n_threads, const tl_session_params *sp,
                           tl_error *err) {
    const tl_backend_ops *be = tl_backend_find(sp->device, err);
    if (!be) return NULL;
    if (tl_plan_check_kv(&m->cfg, sp->kv, err)) return NULL;
    if (!be->batch_new) {
        tl_batch *b = tl_batch_new(m, max_rows, max_seqs, n_threads, err);
        if (b) b->sp = *sp;
        return b;
    }
    if (max_rows < 1 || max_seqs < 1) {
        tl_fail(err, "batch: need room for at least one row and one sequence (got %d rows, %d sequences)", max_rows,
                max_seqs);
        return NULL;
    }
    void *dev = be->batch_new(m, max_rows, max_seqs, sp, err);
    if (!dev) return NULL;
    tl_batch *b = tl_xcalloc(1, sizeof *b);
    b->m = m;
    b->sp = *sp;
    b->be = be;
    b->dev = dev;
    b->max_rows = max_rows;
    b->max_seqs = max_seqs;
    layout_alloc(b, max_seqs);
    return b;
}

tl_session *tl_batch_session_new(tl_batch *b, tl_error *err) { return tl_session_new_for_batch(b->m, &b->sp, err); }

tl_session *tl_batch_session_new_plan(tl_batch *b, const tl_kv_plan *plan, tl_error *err) {
    if (b->dev) {
        tl_fail(err, "batch: a sequence with another KV plan than the batch's runs on the CPU only (a device's batch "
                     "plans its memory for its own)");
        return NULL;
    }
    tl_session_params sp = b->sp;
    sp.kv = plan;
    return tl_session_new_for_batch(b->m, &sp, err);
}

void tl_batch_free(tl_batch *b) {
    if (!b) return;
    if (b->dev) {
        b->be->batch_free(b->dev);
        free(b->seq);
        free(b->row0);
        free(b->n_rows);
        free(b);
        return;
    }
    tl_activations *a = &b->act;
    void *bufs[] = {a->x, a->xn, a->q, a->k, a->v, a->attn, a->gate, a->up, a->tmp, a->rope, a->logits, a->mm_scratch, b->q_pred};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) tl_afree(bufs[i]);
    tl_pool_free(b->pool);
    free(b->seq);
    free(b->row0);
    free(b->n_rows);
    free(b);
}

uint64_t tl_batch_bytes(const tl_batch *b) { return b->dev ? b->be->batch_bytes(b->dev) : b->bytes; }

/* y_j = x W_j for n matrices over the same inputs, rows grouped as `groups` rows each
 * (ascending), every group getting the kernels tl_matmul_w picks for it alone (see the top of
 * the file). ldy: floats between rows of y (0: the matrix's n_out). */
static void matmul_groups_n(tl_batch *b, const tl_mat *const *w, float *const *y, int n, const float *x,
                            const int *groups, int n_groups, int ldy) {
    const unsigned flags = b->sp.prefill_q8 ? TL_MM_Q8 : 0;
    const int64_t rounded = tl_matmul_rounded_rows_w(w[0]->type, w[0]->pack != NULL, flags);
    for (int j = 1; j < n; j++) /* the matrices share calls only where they share the regime */
        if (tl_matmul_rounded_rows_w(w[j]->type, w[j]->pack != NULL, flags) != rounded) {
            for (int k = 0; k < n; k++) matmul_groups_n(b, &w[k], &y[k], 1, x, groups, n_groups, ldy);
            return;
        }
    const int64_t n_in = w[0]->n_in;
    int small = 0, total = 0; /* rows of the groups within the rounded regime; all rows */
    for (int g = 0; g < n_groups; g++) {
        total += groups[g];
        if (groups[g] <= rounded) small += groups[g];
    }
    tl_mm_job jobs[3];
    for (int r = 0; r < total;) {
        /* rounded rows in calls of at most `rounded`, then the others in one call */
        const int cnt = r < small ? (int)TL_MIN((int64_t)(small - r), rounded) : total - r;
        for (int j = 0; j < n; j++) {
            const int64_t ld = ldy ? ldy : w[j]->n_out;
            jobs[j] = (tl_mm_job){w[j]->pack, w[j]->type, w[j]->data, w[j]->n_out, y[j] + (size_t)r * ld, ld};
        }
        tl_matmul_w_multi(b->pool, jobs, n, n_in, x + (size_t)r * n_in, cnt, b->act.mm_scratch, flags);
        r += cnt;
    }
}

static void matmul_groups(tl_batch *b, const tl_mat *w, const float *x, const int *groups, int n_groups, float *y,
                          int ldy) {
    matmul_groups_n(b, &w, &y, 1, x, groups, n_groups, ldy);
}

static void matmul(tl_batch *b, const tl_mat *w, const float *x, float *y) {
    matmul_groups(b, w, x, b->n_rows, b->n_seq, y, w->n_out);
}

/* Queries of layer il for every row: Wq (+bias), q-norm, RoPE at each row's position (the
 * matmul already done when q_done). */
static void query_rows(tl_batch *b, int il, const float *xn, float *q, bool q_done) {
    const tl_config *c = &b->m->cfg;
    const tl_layer_weights *L = &b->m->w.layers[il];
    const int qdim = c->n_head * c->head_dim_k, half = c->n_rot / 2, base = c->layer_swa[il] ? 1 : 0;
    const int R = b->row0[b->n_seq];
    if (!q_done) matmul(b, &L->wq, xn, q);
    tl_add_bias(q, L->bq, R, qdim);
    if (L->q_norm) tl_rmsnorm_rows(b->vo, q, q, L->q_norm, R * c->n_head, c->head_dim_k, c->norm_eps);
    for (int r = 0; r < R; r++) {
        const float *cs = b->act.rope + ((size_t)r * 2 + base) * half * 2;
        for (int h = 0; h < c->n_head; h++) tl_rope_head(q + (size_t)r * qdim + (size_t)h * c->head_dim_k, cs, c->n_rot, c->rope_style);
    }
}

/* Check the step and lay it out (sequences by row count, stable). */
static int layout(tl_batch *b, const tl_batch_seq *seqs, int n_seq, tl_error *err) {
    if (n_seq < 1 || n_seq > b->max_seqs)
        return tl_fail(err, "batch: %d sequences in a step (1..%d)", n_seq, b->max_seqs);
    int total = 0;
    for (int i = 0; i < n_seq; i++) {
        const tl_batch_seq *q = &seqs[i];
        const tl_session *s = q->s;
        if (s->model != b->m) return tl_fail(err, "batch: sequence %d belongs to another model", i);
        if (s->be != b->be)
            return tl_fail(err, "batch: sequence %d is on the %s; this batch's step runs on the %s", i,
                           s->be->gpu ? "GPU" : "CPU", b->be->gpu ? "GPU" : "CPU");
        if (s->observer) return tl_fail(err, "batch: sequence %d has an activation observer, which runs alone", i);
        if (q->n < 1) return tl_fail(err, "batch: sequence %d has %d tokens (at least 1)", i, q->n);
        if (s->n_past + q->n > s->n_ctx)
            return tl_fail(err, "batch: sequence %d: context overflow: %d tokens held + %d new exceed the context size %d",
                           i, s->n_past, q->n, s->n_ctx);
        for (int j = 0; j < i; j++)
            if (seqs[j].s == s) return tl_fail(err, "batch: sequences %d and %d are the same session", j, i);
        for (int t = 0; t < q->n; t++)
            if (q->tokens[t] < 0 || q->tokens[t] >= b->m->cfg.n_vocab)
                return tl_fail(err, "batch: sequence %d: token id %d at position %d is outside the vocabulary (0..%d)", i,
                               q->tokens[t], s->n_past + t, b->m->cfg.n_vocab - 1);
        total += q->n;
    }
    if (total > b->max_rows) return tl_fail(err, "batch: %d rows in a step, the workspace holds %d", total, b->max_rows);
    for (int i = 0; i < n_seq; i++) { /* insertion sort by row count keeps equal counts in order */
        int k = i;
        while (k > 0 && b->seq[k - 1]->n > seqs[i].n) {
            b->seq[k] = b->seq[k - 1];
            k--;
        }
        b->seq[k] = &seqs[i];
    }
    b->n_seq = n_seq;
    b->row0[0] = 0;
    for (int i = 0; i < n_seq; i++) {
        b->n_rows[i] = b->seq[i]->n;
        b->row0[i + 1] = b->row0[i] + b->n_rows[i];
    }
    return 0;
}

/* Final norm and the output matrix: last rows of all sequences that want them in one call,
 * sequences that want every row one call each (as tl_session_eval computes them). */
static void output(tl_batch *b) {
    const tl_config *c = &b->m->cfg;
    const tl_weights *w = &b->m->w;
    tl_activations *a = &b->act;
    const int E = c->n_embd, V = c->n_vocab;
    int n_last = 0;
    for (int i = 0; i < b->n_seq; i++) {
        const tl_batch_seq *q = b->seq[i];
        if (!q->logits || q->all_logits) continue;
        tl_rmsnorm_rows(b->vo, a->x + (size_t)(b->row0[i + 1] - 1) * E, a->xn + (size_t)n_last * E, w->output_norm, 1,
                        E, c->norm_eps);
        n_last++;
    }
    if (n_last) {
        int ones[n_last];
        for (int i = 0; i < n_last; i++) ones[i] = 1;
        matmul_groups(b, &w->output, a->xn, ones, n_last, a->logits, V);
        tl_softcap(a->logits, n_last * V, c->final_softcap);
        int k = 0;
        for (int i = 0; i < b->n_seq; i++) {
            const tl_batch_seq *q = b->seq[i];
            if (q->logits && !q->all_logits) memcpy(q->logits, a->logits + (size_t)k++ * V, sizeof(float) * (size_t)V);
        }
    }
    for (int i = 0; i < b->n_seq; i++) {
        const tl_batch_seq *q = b->seq[i];
        if (!q->logits || !q->all_logits) continue;
        tl_rmsnorm_rows(b->vo, a->x + (size_t)b->row0[i] * E, a->xn, w->output_norm, q->n, E, c->norm_eps);
        matmul_groups(b, &w->output, a->xn, &q->n, 1, q->logits, V);
        tl_softcap(q->logits, q->n * V, c->final_softcap);
    }
}

/* A device's step, over the same layout. */
static int eval_dev(tl_batch *b, tl_error *err) {
    if (b->be->batch_eval(b->dev, b->seq, b->n_seq, err)) return -1;
    for (int i = 0; i < b->n_seq; i++) b->seq[i]->s->n_past += b->n_rows[i];
    return 0;
}

int tl_batch_eval(tl_batch *b, const tl_batch_seq *seqs, int n_seq, tl_error *err) {
    if (layout(b, seqs, n_seq, err)) return -1;
    if (b->dev) return eval_dev(b, err);
    const tl_model *m = b->m;
    const tl_config *c = &m->cfg;
    const tl_weights *w = &m->w;
    const tl_vec_ops *vo = b->vo;
    tl_activations *a = &b->act;
    const int E = c->n_embd, half = c->n_rot / 2, R = b->row0[n_seq];
    const int qdim = c->n_head * c->head_dim_k;
    const int kdim = c->n_head_kv * c->head_dim_k;
    const int vdim = c->n_head_kv * c->head_dim_v;

    /* embeddings, and cos/sin for each row at its sequence's position, both RoPE bases */
    for (int i = 0; i < n_seq; i++) {
        const tl_batch_seq *q = b->seq[i];
        for (int t = 0; t < q->n; t++) {
            const size_t r = (size_t)b->row0[i] + t;
            tl_mat_get_row(&w->tok_embd, q->tokens[t], a->x + r * E);
            if (c->embd_scale) vo->scale(a->x + r * E, E, sqrtf((float)E));
            for (int base = 0; base < 2; base++)
                tl_session_rope_cs(q->s, q->s->n_past + t, base, a->rope + (r * 2 + base) * half * 2);
        }
    }

    for (int il = 0; il < c->n_layer; il++) {
        const tl_layer_weights *L = &w->layers[il];
        const int base = c->layer_swa[il] ? 1 : 0;
        tl_rmsnorm_rows(vo, a->x, a->xn, L->attn_norm, R, E, c->norm_eps);
        const tl_mat *qkv[3] = {&L->wq, &L->wk, &L->wv};
        float *qkv_y[3] = {a->q, a->k, a->v};
        matmul_groups_n(b, qkv, qkv_y, 3, a->xn, b->n_rows, b->n_seq, 0);
        query_rows(b, il, a->xn, a->q, true);
        tl_add_bias(a->k, L->bk, R, kdim);
        tl_add_bias(a->v, L->bv, R, vdim);
        if (L->k_norm) tl_rmsnorm_rows(vo, a->k, a->k, L->k_norm, R * c->n_head_kv, c->head_dim_k, c->norm_eps);
        for (int r = 0; r < R; r++) {
            const float *cs = a->rope + ((size_t)r * 2 + base) * half * 2;
            for (int h = 0; h < c->n_head_kv; h++)
                tl_rope_head(a->k + (size_t)r * kdim + (size_t)h * c->head_dim_k, cs, c->n_rot, c->rope_style);
        }
        /* stores of the next layer that want their queries predicted from this layer's input */
        bool predict = false;
        for (int i = 0; il + 1 < c->n_layer && i < n_seq; i++)
            predict |= b->seq[i]->s->kv[il + 1]->ops->wants_query_prediction;
        if (predict) {
            query_rows(b, il + 1, a->xn, b->q_pred, false);
            for (int i = 0; i < n_seq; i++) {
                tl_kv_layer *next = b->seq[i]->s->kv[il + 1];
                if (next->ops->wants_query_prediction)
                    next->ops->predicted_query(next, b->pool, b->n_rows[i], b->q_pred + (size_t)b->row0[i] * qdim);
            }
        }
        for (int i = 0; i < n_seq; i++) {
            const size_t r = (size_t)b->row0[i];
            if (tl_kv_forward(b->seq[i]->s->kv[il], b->pool, b->n_rows[i], a->q + r * qdim, a->k + r * kdim,
                              a->v + r * vdim, a->attn + r * c->n_head * c->head_dim_v, err))
                return tl_fail_prefix(err, "batch: sequence %d, layer %d", (int)(b->seq[i] - seqs), il);
        }
        matmul(b, &L->wo, a->attn, a->tmp);
        if (L->attn_post_norm) tl_rmsnorm_rows(vo, a->tmp, a->tmp, L->attn_post_norm, R, E, c->norm_eps);
        for (size_t i = 0; i < (size_t)R * E; i++) a->x[i] += a->tmp[i];

        tl_rmsnorm_rows(vo, a->x, a->xn, L->ffn_norm, R, E, c->norm_eps);
        const tl_mat *ffn[2] = {&L->w_gate, &L->w_up};
        float *ffn_y[2] = {a->gate, a->up};
        matmul_groups_n(b, ffn, ffn_y, 2, a->xn, b->n_rows, b->n_seq, 0);
        if (c->gelu_ffn) vo->geglu(a->gate, a->gate, a->up, R * c->n_ff);
        else vo->swiglu(a->gate, a->gate, a->up, R * c->n_ff);
        matmul(b, &L->w_down, a->gate, a->tmp);
        if (L->ffn_post_norm) tl_rmsnorm_rows(vo, a->tmp, a->tmp, L->ffn_post_norm, R, E, c->norm_eps);
        for (size_t i = 0; i < (size_t)R * E; i++) a->x[i] += a->tmp[i];
    }
    for (int i = 0; i < n_seq; i++) b->seq[i]->s->n_past += b->n_rows[i];
    output(b);
    for (int i = 0; i < n_seq; i++)
        if (!b->seq[i]->s->keys_checked) tl_session_check_keys(b->seq[i]->s);
    return 0;
}
