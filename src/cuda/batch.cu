/* batch.cu: continuous batching on the GPU, the step tl_batch_eval runs for GPU sessions.
 *
 * One forward pass over the rows of several sequences, each against its own KV caches. The
 * sequences' sessions hold their KV only (tl_cuda_session_new_kv); the activations for the
 * step's rows, cuBLAS, the block-format slab and TailorKV's staging belong to the batch (a
 * workspace session, forward.cuh), and everything runs on its stream. The sequences come in
 * ascending order of their row count, so the one-row sequences (decode) are rows 0 .. n_dec - 1.
 *
 * A sequence gets the numbers tl_cuda_eval gives it alone, whatever shares its step (the
 * per-session path is the reference; tests/cuda/test_cuda.c batch_cases), because every piece of
 * the pass runs, for its rows, the kernel that sequence would run alone:
 *  - the decode rows' products go through the matrix-vector kernels together
 *    (tlc_matvec_rows: each weight load serves up to TLC_MV_ROWS rows, each row summed as
 *    tlc_matvec sums it; block formats through tlc_qmatvec_rows, likewise), q/k/v in one
 *    launch, gate/up fused with the activation where a session fuses them;
 *  - each prefill sequence's products run over its own rows (tlc_linear: the GEMM a session
 *    runs for that chunk), so its activations are rounded to 16 bits only as they are alone;
 *  - row-wise work (norms, RoPE, activations, residual adds) runs over all rows in one launch;
 *  - attention and the KV append run per sequence, at its positions, under its own policy.
 * So the weights are read once per step for up to TLC_MV_ROWS decode rows, and once more per
 * prefill sequence. One GEMM over every row would read them once for all, but would round the
 * decode rows' activations to 16 bits and sum them in an order that depends on the neighbours.
 * TailorKV: the next sparse layer's query is predicted for the decode rows as a session
 * predicts it (that layer's Wq over this layer's normed input, q-norm, RoPE); with summary 0
 * the chosen channel rows move when the layer attends, on the step's stream, instead of the
 * session's side-stream prefetch (the same rows, without the overlap). */
#include "forward.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "../engine/plan.h"
#include "../kv/policy.h"
}

struct tl_cuda_batch {
    tl_model *m;
    tl_cuda_session *ws; /* the step's workspace (TLC_PART_WS): activations for max_rows rows */
    int max_rows, max_seqs;
    float *logits;       /* device [max_seqs][n_vocab]: the last rows' logits */
    float *logits_h;     /* pinned host copy of them */
    int32_t *tok_h;      /* pinned [max_rows]: the step's tokens */
    float *qpred;        /* device [2][max_seqs][q dim]: TailorKV's predicted queries by layer parity (NULL: none) */
    uint64_t bytes;      /* device bytes beyond the workspace session's: logits, qpred, TailorKV staging */
    /* the step being run */
    const tl_cuda_seq *seq;
    int n_seq, n_dec;
    int *row0; /* [max_seqs + 1] first row of each sequence; row0[n_seq] = rows */
    int *src;  /* [max_seqs] the rows whose logits are taken */
    /* a layer's one-token rows, attended and appended together (tlc_attn_decode_many,
     * tlc_kv_append_many), host arrays of max_seqs */
    tlc_dec_row *drow;
    int *dseq, *dpast;
    bool *ddone;
    uint8_t *dstate;
    tlc_layer_kv **dkv;
    const float **dk, **dv;
};

#define CK(call)                                                                                                     \
    do {                                                                                                             \
        cudaError_t e_ = (call);                                                                                     \
        if (e_ != cudaSuccess) return tl_fail(err, "%s: %s (%s:%d)", #call, cudaGetErrorString(e_), __FILE__, __LINE__); \
    } while (0)

extern "C" void tl_cuda_batch_free(tl_cuda_batch *b) {
    if (!b) return;
    if (b->ws) cudaStreamSynchronize(b->ws->cx.stream);
    cudaFree(b->logits);
    cudaFree(b->qpred);
    if (b->logits_h) cudaFreeHost(b->logits_h);
    if (b->tok_h) cudaFreeHost(b->tok_h);
    tl_cuda_session_free(b->ws);
    free(b->row0);
    free(b->src);
    free(b->drow);
    free(b->dseq);
    free(b->dpast);
    free(b->ddone);
    free(b->dstate);
    free(b->dkv);
    free(b->dk);
    free(b->dv);
    free(b);
}

static int alloc_qpred(tl_cuda_batch *b, tl_error *err) {
    if (b->qpred) return 0;
    const size_t bytes = sizeof(float) * 2 * (size_t)b->max_seqs * b->m->cfg.n_head * b->m->cfg.head_dim_k;
    CK(cudaMalloc((void **)&b->qpred, bytes));
    b->bytes += bytes;
    return 0;
}

extern "C" tl_cuda_batch *tl_cuda_batch_new(tl_model *m, int max_rows, int max_seqs, int n_ctx, const tl_kv_layer_policy *policies,
                                            const tl_cuda_opts *o, tl_error *err) {
    o = tlc_opts(o);
    if (max_rows < 1 || max_seqs < 1) {
        tl_fail(err, "batch: need room for at least one row and one sequence (got %d rows, %d sequences)", max_rows, max_seqs);
        return NULL;
    }
    const tl_config *c = &m->cfg;
    tl_cuda_batch *b = (tl_cuda_batch *)tl_xcalloc(1, sizeof *b);
    b->m = m;
    b->max_rows = max_rows;
    b->max_seqs = max_seqs;
    b->row0 = (int *)tl_xcalloc((size_t)max_seqs + 1, sizeof(int));
    b->src = (int *)tl_xcalloc((size_t)max_seqs, sizeof(int));
    const size_t S = (size_t)max_seqs;
    b->drow = (tlc_dec_row *)tl_xcalloc(S, sizeof *b->drow);
    b->dseq = (int *)tl_xcalloc(S, sizeof(int));
    b->dpast = (int *)tl_xcalloc(S, sizeof(int));
    b->ddone = (bool *)tl_xcalloc(S, sizeof(bool));
    b->dstate = (uint8_t *)tl_xcalloc(S, 1);
    b->dkv = (tlc_layer_kv **)tl_xcalloc(S, sizeof *b->dkv);
    b->dk = (const float **)tl_xcalloc(S, sizeof *b->dk);
    b->dv = (const float **)tl_xcalloc(S, sizeof *b->dv);
    if (!(b->ws = tlc_session_make(m, n_ctx, max_rows, NULL, TLC_PART_WS, o, err))) {
        tl_cuda_batch_free(b);
        return NULL;
    }
    const size_t lb = sizeof(float) * (size_t)max_seqs * c->n_vocab;
    cudaError_t e = cudaMalloc((void **)&b->logits, lb);
    if (e == cudaSuccess) e = cudaMallocHost((void **)&b->logits_h, lb);
    if (e == cudaSuccess) e = cudaMallocHost((void **)&b->tok_h, sizeof(int32_t) * (size_t)max_rows);
    if (e != cudaSuccess) {
        tl_fail(err, "batch: %d sequences' logits: %s", max_seqs, cudaGetErrorString(e));
        tl_cuda_batch_free(b);
        return NULL;
    }
    b->bytes += lb;
    /* TailorKV's staging for the sequences this batch is made for (others grow it when they come) */
    n_ctx = tl_plan_n_ctx(c, n_ctx);
    for (int il = 0; il < c->n_layer; il++) {
        tl_kv_shape sh;
        tl_kv_layer_policy p;
        tl_plan_layer_kv(c, n_ctx, il, policies ? &policies[il] : NULL, &sh, &p);
        if (p.kind != TL_KV_OFFLOAD) continue;
        tlc_off_sizes z;
        uint64_t grown;
        if (tlc_off_sizes_of(&p.off, c->n_head, c->n_head_kv, c->head_dim_k, c->head_dim_v, n_ctx, o->gen_cap, &z, err) ||
            tlc_off_reserve_sizes(&b->ws->cx, &z, &grown, err) || alloc_qpred(b, err)) {
            tl_fail_prefix(err, "batch: layer %d", il);
            tl_cuda_batch_free(b);
            return NULL;
        }
        b->bytes += grown;
    }
    return b;
}

extern "C" uint64_t tl_cuda_batch_bytes(const tl_cuda_batch *b) {
    const tl_cuda_session *ws = b->ws;
    return ws->act_bytes + ws->cx.scratch_bytes + ws->all_logits_rows * (uint64_t)b->m->cfg.n_vocab * 4 + b->bytes;
}

/* ---------------- the products ---------------- */

/* y_s (+)= W_s x (+ b_s) for nr rows of x, each as a session computes one row (tlc_linear with
 * n = 1): matrices of unlike types one at a time; the others over all rows at once
 * (tlc_matvec_rows, block formats through tlc_qmatvec_rows). x rows n_in apart, y rows n_out[s]. */
static int one_row_products(tl_cuda_batch *b, int nr, int nseg, const dmat *const *W, const float *x, float *const *y,
                            const float *const *bias, const int *add, tl_error *err) {
    tl_cuda_session *ws = b->ws;
    const int n_in = W[0]->n_in, wt = W[0]->wt;
    bool same = true;
    for (int s = 1; s < nseg; s++) same = same && W[s]->wt == wt && (wt != WT_Q || W[s]->qt == W[0]->qt) && W[s]->n_in == n_in;
    if (!same) { /* as tlc_linear: e.g. q4_K q/k with a q6_K v, one product each */
        for (int s = 0; s < nseg; s++)
            if (one_row_products(b, nr, 1, &W[s], x, &y[s], bias ? &bias[s] : NULL, add ? &add[s] : NULL, err)) return -1;
        return 0;
    }
    const tlc_mv a = tlc_mv_of(nseg, W, x, y, bias, add);
    return tlc_matvec_rows(&ws->cx, &a, nr, n_in, err);
}

/* y_s (+)= W_s x (+ b_s) over the step's rows: the decode rows together, each prefill
 * sequence's rows by themselves (see the top of the file). */
static int products(tl_cuda_batch *b, int nseg, const dmat *const *W, const float *x, float *const *y, const float *const *bias,
                    const int *add, tl_error *err) {
    if (b->n_dec && one_row_products(b, b->n_dec, nseg, W, x, y, bias, add, err)) return -1;
    for (int i = b->n_dec; i < b->n_seq; i++) {
        const size_t r0 = (size_t)b->row0[i];
        float *ys[3];
        for (int s = 0; s < nseg; s++) ys[s] = y[s] + r0 * W[s]->n_out;
        if (tlc_linear(b->ws, nseg, W, x + r0 * W[0]->n_in, b->seq[i].n, ys, bias, add, err)) return -1;
    }
    return 0;
}

/* gate = act(W_gate xn) * (W_up xn) over the step's rows (up: scratch); the decode rows fused
 * into the products where a session fuses them (forward.cu's norm_linear). */
static int gate_up(tl_cuda_batch *b, const dlayer *L, int glu, tl_error *err) {
    tl_cuda_session *ws = b->ws;
    const dmat *W[2] = {&L->gate, &L->up};
    float *y[2] = {ws->gate, ws->up};
    const int F = L->gate.n_out, E = L->gate.n_in;
    if (b->n_dec) {
        int rc = 1;
        if (!ws->cx.no_fuse && W[0]->wt == W[1]->wt && (W[0]->wt != WT_Q || W[0]->qt == W[1]->qt) && W[0]->n_in == W[1]->n_in) {
            tlc_mv a = tlc_mv_of(2, W, ws->xn, y, NULL, NULL);
            a.glu = glu;
            rc = tlc_matvec_rows(&ws->cx, &a, b->n_dec, E, err); /* 1 (before any launch): not a shape the fusion takes */
            if (rc < 0) return -1;
        }
        if (rc == 1 && (one_row_products(b, b->n_dec, 2, W, ws->xn, y, NULL, NULL, err) ||
                        tlc_act(ws, y[0], y[1], (size_t)b->n_dec * F, glu, err)))
            return -1;
    }
    for (int i = b->n_dec; i < b->n_seq; i++) {
        const size_t r0 = (size_t)b->row0[i];
        const int n = b->seq[i].n;
        float *ys[2] = {y[0] + r0 * F, y[1] + r0 * F};
        if (tlc_linear(ws, 2, W, ws->xn + r0 * E, n, ys, NULL, NULL, err) || tlc_act(ws, ys[0], ys[1], (size_t)n * F, glu, err))
            return -1;
    }
    return 0;
}

/* x += W in (wo, down), or with a post-norm x += rmsnorm(W in) (gemma). */
static int residual(tl_cuda_batch *b, const dmat *W, const float *in, const float *post_norm, tl_error *err) {
    tl_cuda_session *ws = b->ws;
    const dmat *Ws[1] = {W};
    if (post_norm) {
        float *y[1] = {ws->tmp};
        return products(b, 1, Ws, in, y, NULL, NULL, err) ||
               tlc_rmsnorm(ws, ws->tmp, post_norm, ws->x, b->row0[b->n_seq], b->m->cfg.n_embd, 1, err);
    }
    float *y[1] = {ws->x};
    const int add[1] = {1};
    return products(b, 1, Ws, in, y, NULL, add, err);
}

/* ---------------- the step ---------------- */

/* The predicted queries made for layer il (halves alternate by layer parity). */
static float *qpred_of(tl_cuda_batch *b, int il) {
    return b->qpred + (size_t)(il & 1) * b->max_seqs * b->m->cfg.n_head * b->m->cfg.head_dim_k;
}

/* Final norm and the output matrix: every row of the sequences that want them all (each one
 * as a session computes its chunk), then the last rows of the others together. */
static int output(tl_cuda_batch *b, tl_error *err) {
    tl_cuda_session *ws = b->ws;
    const tl_config *c = &b->m->cfg;
    const tlc_weights *w = ws->w;
    const dmat *Wo[1] = {&w->output};
    const int E = c->n_embd, V = c->n_vocab;
    cudaStream_t st = ws->cx.stream;
    int nl = 0;
    for (int i = 0; i < b->n_seq; i++) {
        const tl_cuda_seq *q = &b->seq[i];
        if (!q->logits) continue;
        if (!q->all_logits || q->n == 1) {
            b->src[nl++] = b->row0[i] + q->n - 1;
            continue;
        }
        if (tlc_rmsnorm(ws, ws->x + (size_t)b->row0[i] * E, w->output_norm, ws->xn, q->n, E, 0, err)) return -1;
        if (ws->all_logits_rows < (size_t)q->n) {
            cudaStreamSynchronize(st);
            cudaFree(ws->all_logits);
            ws->all_logits = NULL;
            ws->all_logits_rows = 0;
            CK(cudaMalloc((void **)&ws->all_logits, sizeof(float) * (size_t)q->n * V));
            ws->all_logits_rows = q->n;
        }
        float *y[1] = {ws->all_logits};
        if (tlc_linear(ws, 1, Wo, ws->xn, q->n, y, NULL, NULL, err)) return -1;
        CK(cudaMemcpyAsync(q->logits, ws->all_logits, sizeof(float) * (size_t)q->n * V, cudaMemcpyDeviceToHost, st));
    }
    if (!nl) return 0;
    for (int j0 = 0, j1; j0 < nl; j0 = j1) { /* runs of consecutive rows (the decode rows are one) */
        for (j1 = j0 + 1; j1 < nl && b->src[j1] == b->src[j1 - 1] + 1; j1++) {
        }
        if (tlc_rmsnorm(ws, ws->x + (size_t)b->src[j0] * E, w->output_norm, ws->xn + (size_t)j0 * E, j1 - j0, E, 0, err))
            return -1;
    }
    float *y[1] = {b->logits};
    if (one_row_products(b, nl, 1, Wo, ws->xn, y, NULL, NULL, err)) return -1;
    CK(cudaMemcpyAsync(b->logits_h, b->logits, sizeof(float) * (size_t)nl * V, cudaMemcpyDeviceToHost, st));
    return 0;
}

extern "C" int tl_cuda_batch_eval(tl_cuda_batch *b, const tl_cuda_seq *seqs, int n_seq, tl_error *err) {
    tl_cuda_session *ws = b->ws;
    const tl_config *c = &b->m->cfg;
    const tlc_weights *w = ws->w;
    cudaStream_t st = ws->cx.stream;
    const int E = c->n_embd, V = c->n_vocab, Hq = c->n_head, Hkv = c->n_head_kv, hd = c->head_dim_k;
    const size_t qd = (size_t)Hq * c->head_dim_k, kd = (size_t)Hkv * c->head_dim_k, vd = (size_t)Hkv * c->head_dim_v,
                 od = (size_t)Hq * c->head_dim_v;
    if (n_seq < 1 || n_seq > b->max_seqs) return tl_fail(err, "batch: %d sequences in a step (1..%d)", n_seq, b->max_seqs);
    int R = 0, n_dec = 0;
    bool off = false;
    for (int i = 0; i < n_seq; i++) {
        const tl_cuda_seq *q = &seqs[i];
        const tl_cuda_session *g = q->g;
        if (!g || g->m != b->m || !(g->parts & TLC_PART_KV)) return tl_fail(err, "batch: sequence %d is not a GPU session of the batch's model", i);
        if (q->n < 1) return tl_fail(err, "batch: sequence %d has %d tokens (at least 1)", i, q->n);
        if (i && q->n < seqs[i - 1].n) return tl_fail(err, "batch: the sequences must come by ascending row count (sequence %d)", i);
        if (g->n_past + q->n > g->n_ctx)
            return tl_fail(err, "batch: sequence %d: context overflow: %d tokens held + %d new exceed the context size %d", i,
                           g->n_past, q->n, g->n_ctx);
        for (int t = 0; t < q->n; t++)
            if (q->tokens[t] < 0 || q->tokens[t] >= V)
                return tl_fail(err, "batch: sequence %d: token id %d is outside the vocabulary (0..%d)", i, q->tokens[t], V - 1);
        for (int j = 0; j < i; j++)
            if (seqs[j].g == g) return tl_fail(err, "batch: sequences %d and %d are the same session", j, i);
        n_dec += q->n == 1;
        b->row0[i] = R;
        R += q->n;
        if (R > b->max_rows) return tl_fail(err, "batch: more than %d rows in a step", b->max_rows);
    }
    b->row0[n_seq] = R;
    b->seq = seqs;
    b->n_seq = n_seq;
    b->n_dec = n_dec;
    /* TailorKV staging for every sparse layer here: grows only for sequences unlike the batch's
     * own, and before anything of the step is queued */
    for (int i = 0; i < n_seq; i++)
        for (int il = 0; il < c->n_layer; il++) {
            if (!seqs[i].g->kv[il].off) continue;
            uint64_t grown;
            if (tlc_off_reserve(&ws->cx, seqs[i].g->kv[il].off, &grown, err) || alloc_qpred(b, err))
                return tl_fail_prefix(err, "batch: sequence %d, layer %d", i, il);
            b->bytes += grown;
            off = true;
        }

    /* the tokens, embeddings, and each sequence's cos/sin at its positions */
    for (int i = 0; i < n_seq; i++) memcpy(b->tok_h + b->row0[i], seqs[i].tokens, sizeof(int32_t) * (size_t)seqs[i].n);
    CK(cudaMemcpyAsync(ws->tok, b->tok_h, sizeof(int32_t) * (size_t)R, cudaMemcpyHostToDevice, st));
    if (tlc_embed(ws, R, err)) return -1;
    const int half = c->n_rot / 2;
    for (int i = 0; i < n_seq; i++)
        if (tlc_rope_table(ws, seqs[i].g->inv_freq, seqs[i].g->n_past, seqs[i].n, ws->rope + (size_t)b->row0[i] * 2 * half * 2, err))
            return -1;

    for (int il = 0; il < c->n_layer; il++) {
        const dlayer *L = &w->L[il];
        const int base = c->layer_swa[il] ? 1 : 0;
        if (tlc_rmsnorm(ws, ws->x, L->attn_norm, ws->xn, R, E, 0, err)) return -1;
        {
            const dmat *Ws[3] = {&L->wq, &L->wk, &L->wv};
            float *ys[3] = {ws->q, ws->k, ws->v};
            const float *bs[3] = {L->bq, L->bk, L->bv};
            if (products(b, 3, Ws, ws->xn, ys, bs, NULL, err)) return -1;
        }
        if (L->q_norm && tlc_rmsnorm(ws, ws->q, L->q_norm, ws->q, R * Hq, hd, 0, err)) return -1;
        if (L->k_norm && tlc_rmsnorm(ws, ws->k, L->k_norm, ws->k, R * Hkv, hd, 0, err)) return -1;
        if (tlc_rope(ws, ws->q, Hq, ws->k, Hkv, R, base, ws->rope, err)) return -1;
        /* TailorKV: the next layer's queries predicted for the decode rows, from this layer's
         * normed input (xn rows 0 .. n_dec - 1), as a session predicts them */
        bool predict = false;
        for (int i = 0; off && il + 1 < c->n_layer && i < n_dec; i++) predict |= seqs[i].g->kv[il + 1].off != NULL;
        if (predict) {
            const dlayer *L1 = &w->L[il + 1];
            float *qp = qpred_of(b, il + 1);
            const dmat *Wq[1] = {&L1->wq};
            float *yq[1] = {qp};
            const float *bq[1] = {L1->bq};
            if (one_row_products(b, n_dec, 1, Wq, ws->xn, yq, bq, NULL, err)) return -1;
            if (L1->q_norm && tlc_rmsnorm(ws, qp, L1->q_norm, qp, n_dec * Hq, hd, 0, err)) return -1;
            if (tlc_rope(ws, qp, Hq, NULL, 0, n_dec, c->layer_swa[il + 1] ? 1 : 0, ws->rope, err)) return -1;
        }
        /* the one-token rows of dense and quantized stores together (a launch per layer for
         * up to 12 of one format, the same bits as alone), unless no-batch-attn: state[i] 1 =
         * sequence i attended here, 2 = attended and appended here, 0 = all below */
        memset(b->dstate, 0, (size_t)n_seq);
        if (!ws->cx.no_batch_attn && n_dec > 1) {
            int nd = 0;
            for (int i = 0; i < n_seq; i++) {
                const tl_cuda_session *g = seqs[i].g;
                if (seqs[i].n != 1 || g->kv[il].off) continue;
                const size_t r = (size_t)b->row0[i];
                b->drow[nd] = tlc_dec_row{&g->kv[il], g->n_past, ws->q + r * qd, ws->k + r * kd, ws->v + r * vd, ws->attn + r * od};
                b->dseq[nd++] = i;
            }
            if (nd > 1) {
                if (tlc_attn_decode_many(&ws->cx, nd, b->drow, b->ddone, err)) return tl_fail_prefix(err, "batch: layer %d", il);
                /* the appends of the rows attended together (after their attention, as alone) */
                int na = 0;
                for (int j = 0; j < nd; j++) {
                    if (!b->ddone[j]) continue;
                    const int i = b->dseq[j];
                    b->dstate[i] = 1;
                    b->dkv[na] = &seqs[i].g->kv[il];
                    b->dpast[na] = seqs[i].g->n_past;
                    b->dk[na] = b->drow[j].knew;
                    b->dv[na] = b->drow[j].vnew;
                    b->dseq[na++] = i; /* (entry j >= na is not read again) */
                }
                if (tlc_kv_append_many(&ws->cx, na, b->dkv, b->dpast, b->dk, b->dv, b->ddone, err))
                    return tl_fail_prefix(err, "batch: layer %d", il);
                for (int j = 0; j < na; j++)
                    if (b->ddone[j]) b->dstate[b->dseq[j]] = 2;
            }
        }
        for (int i = 0; i < n_seq; i++) {
            tl_cuda_session *g = seqs[i].g;
            tlc_layer_kv *KV = &g->kv[il];
            const int n = seqs[i].n;
            const size_t r = (size_t)b->row0[i];
            float *q = ws->q + r * qd, *k = ws->k + r * kd, *v = ws->v + r * vd, *o = ws->attn + r * od;
            int rc;
            if (KV->off && n > 1) {
                rc = tlc_off_prefill(&ws->cx, KV->off, n, q, k, v, o, err);
            } else if (KV->off) { /* a decode row: predicted at layer il - 1 (none for layer 0) */
                const bool predicted = il > 0;
                rc = tlc_off_decode(&ws->cx, KV->off, q, predicted ? qpred_of(b, il) + (size_t)i * qd : q, predicted, k, v, o, err);
            } else if (b->dstate[i] == 2) {
                continue;
            } else {
                rc = (b->dstate[i] == 0 && tlc_attention(&ws->cx, KV, g->n_past, n, q, k, v, o, err)) ||
                     tlc_kv_append(&ws->cx, KV, g->n_past, n, k, v, err);
            }
            if (rc) return tl_fail_prefix(err, "batch: sequence %d, layer %d", i, il);
        }
        if (residual(b, &L->wo, ws->attn, L->attn_post_norm, err)) return -1;
        if (tlc_rmsnorm(ws, ws->x, L->ffn_norm, ws->xn, R, E, 0, err)) return -1;
        if (gate_up(b, L, c->gelu_ffn ? 2 : 1, err)) return -1;
        if (residual(b, &L->down, ws->gate, L->ffn_post_norm, err)) return -1;
    }
    for (int i = 0; i < n_seq; i++) seqs[i].g->n_past += seqs[i].n;
    if (output(b, err)) return -1;
    /* the tokens and every-row logits go through pageable memory, the last rows' logits
     * through the pinned copy: all in place once the stream is done */
    CK(cudaStreamSynchronize(st));
    int j = 0;
    for (int i = 0; i < n_seq; i++) {
        const tl_cuda_seq *q = &seqs[i];
        if (q->logits && (!q->all_logits || q->n == 1)) memcpy(q->logits, b->logits_h + (size_t)j++ * V, sizeof(float) * (size_t)V);
    }
    return 0;
}

/* ---------------- memory plan ---------------- */

extern "C" int tl_cuda_plan_batch(const tl_model *m, int n_ctx, const tl_kv_layer_policy *policies, const tl_cuda_opts *o,
                                  int n_seq, int max_rows, int max_seqs, tl_device_plan *out, tl_error *err) {
    o = tlc_opts(o);
    memset(out, 0, sizeof *out);
    const tl_config *c = &m->cfg;
    n_ctx = tl_plan_n_ctx(c, n_ctx);
    uint64_t dev, host, crow, pstage;
    bool any_off;
    if (tlc_plan_kv(m, n_ctx, policies, o->gen_cap, &dev, &host, &crow, &pstage, &any_off, err)) return -1;
    const uint64_t qdim = (uint64_t)c->n_head * c->head_dim_k, S = (uint64_t)max_seqs;
    out->weights = tlc_plan_weights(m, o->widen);
    out->workspace = tlc_plan_ws(m, o->widen);
    out->kv_device = (uint64_t)n_seq * dev;
    out->kv_host = (uint64_t)n_seq * host;
    /* the step's rows, the sequences' logits and predicted queries, TailorKV's staging (shared
     * by every sequence), the attention partials' allowance; each sequence's RoPE frequencies */
    out->activations = tlc_plan_rows(c, max_rows) + 4 * S * (uint64_t)c->n_vocab + (any_off ? 2 * 4 * qdim * S : 0) + 2 * crow +
                       pstage + TLC_PLAN_PARTIALS + (uint64_t)n_seq * 8 * c->n_rot;
    out->reserve = TLC_PLAN_RESERVE;
    out->total = out->weights + out->workspace + out->kv_device + out->activations + out->reserve;
    return 0;
}

extern "C" int tl_cuda_check_batch(const tl_model *m, int n_ctx, const tl_kv_layer_policy *policies, const tl_cuda_opts *o,
                                   int n_seq, int max_rows, int max_seqs, uint64_t budget, tl_error *err) {
    tl_device_plan p;
    if (tl_cuda_plan_batch(m, n_ctx, policies, o, n_seq, max_rows, max_seqs, &p, err)) return tl_fail_prefix(err, "GPU memory plan");
    char what[96];
    snprintf(what, sizeof what, "%d sequences of %d tokens", n_seq, tl_plan_n_ctx(&m->cfg, n_ctx));
    if (budget) return tlc_check_plan(&p, budget, "--gpu-mem-budget", what, max_rows, err);
    /* no budget: what is still to be allocated against the device's free memory now (the CUDA
     * context exists by then, so the reserve is left out; the weights too once uploaded) */
    char why[256];
    if (!tl_cuda_available(why, sizeof why)) return tl_fail(err, "--device cuda: %s", why);
    size_t fr = 0, tot = 0;
    if (cudaSetDevice(0) != cudaSuccess || cudaMemGetInfo(&fr, &tot) != cudaSuccess)
        return tl_fail(err, "--device cuda: cudaMemGetInfo: %s", cudaGetErrorString(cudaGetLastError()));
    p.total -= p.reserve;
    p.reserve = 0;
    if (m->dev_weights) { /* uploaded already (by this backend: the only one with a device copy) */
        p.total -= p.weights;
        p.weights = 0;
    }
    if (tlc_check_plan(&p, fr, "the GPU's free memory", what, max_rows, err))
        return tl_fail_prefix(err, "--device cuda (no --gpu-mem-budget)");
    return 0;
}
