/* weights.cu: a model's weights on the device (forward.cuh: tlc_weights), uploaded once per
 * model by its first session (tl_model.dev_weights) and freed with the model
 * (tl_cuda_weights_free); the bytes they take as uploaded and the block-format workspace their
 * products need (the memory plan, plan.cu, counts the same). */
#include "forward.cuh"

#include <stdio.h>
#include <stdlib.h>

#define CK(call)                                                                                              \
    do {                                                                                                      \
        cudaError_t e_ = (call);                                                                              \
        if (e_ != cudaSuccess) return tl_fail(err, "%s: %s (%s:%d)", #call, cudaGetErrorString(e_), __FILE__, __LINE__); \
    } while (0)

/* Block formats with kernels (qmatvec.cu) stay as they are in the file; widen (--cuda-opt
 * widen) widens them to f16 at upload instead (the 16-bit deployment: 3.3x the memory of a
 * Q4_K_M file, and the way to compare the two paths). Verified on an H100 (docs/cuda.md,
 * "Weights in GGUF block formats"). */
static int wt_of(tl_type t, bool widen) {
    return t == TL_TYPE_F32 ? WT_F32 : t == TL_TYPE_BF16 ? WT_BF16 : tlc_qtype_has_kernels(t) && !widen ? WT_Q : WT_F16;
}
uint64_t tlc_mat_bytes(const tl_mat *t, bool widen) {
    const int wt = wt_of(t->type, widen);
    if (wt == WT_Q) return (uint64_t)tl_row_size(t->type, t->n_in) * t->n_out;
    return (uint64_t)t->n_in * t->n_out * (wt == WT_F32 ? 4 : 2);
}

/* The f16 slab holds at least this many rows of the output projection (which goes through in
 * slabs): tlc_ws_bytes. */
#define TLC_WDQ_MIN_ROWS 4096
uint64_t tlc_ws_bytes(const tl_model *m, bool widen, size_t *wdq_elems, int *xq_cap) {
    const tl_config *c = &m->cfg;
    size_t most = 0;
    for (int il = 0; il < c->n_layer; il++) {
        const tl_layer_weights *S = &m->w.layers[il];
        const tl_mat *mats[] = {&S->wq, &S->wk, &S->wv, &S->wo, &S->w_gate, &S->w_up, &S->w_down};
        for (size_t i = 0; i < sizeof mats / sizeof *mats; i++)
            if (wt_of(mats[i]->type, widen) == WT_Q) most = TL_MAX(most, (size_t)mats[i]->n_in * mats[i]->n_out);
    }
    const tl_mat *out = m->w.tied_output ? &m->w.tok_embd : &m->w.output;
    if (wt_of(out->type, widen) == WT_Q)
        most = TL_MAX(most, (size_t)out->n_in * TL_MIN((size_t)out->n_out, (size_t)TLC_WDQ_MIN_ROWS));
    const int max_in = TL_MAX(c->n_embd, TL_MAX(c->n_head * c->head_dim_v, c->n_ff));
    *wdq_elems = most;
    *xq_cap = most ? TLC_MV_ROWS * max_in : 0; /* the batched step quantizes up to TLC_MV_ROWS rows at once */
    return most ? 2 * (uint64_t)most + (uint64_t)*xq_cap + sizeof(float2) * (uint64_t)(*xq_cap / 32) : 0;
}

static int up_vec(tlc_weights *w, const float *src, int64_t n, float **dst, tl_error *err) {
    *dst = NULL;
    if (!src) return 0;
    CK(cudaMalloc((void **)dst, sizeof(float) * (size_t)n));
    CK(cudaMemcpy(*dst, src, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice));
    w->bytes += sizeof(float) * (size_t)n;
    w->read_bytes += sizeof(float) * (size_t)n;
    return 0;
}

static int up_mat(tlc_weights *w, const tl_mat *src, dmat *dst, bool read_all, tl_error *err) {
    dst->d = NULL;
    dst->n_in = (int)src->n_in;
    dst->n_out = (int)src->n_out;
    dst->wt = wt_of(src->type, w->widen);
    dst->qt = src->type;
    const size_t bytes = tlc_mat_bytes(src, w->widen);
    CK(cudaMalloc(&dst->d, bytes));
    if (dst->wt == WT_Q || src->type == TL_TYPE_F32 || src->type == TL_TYPE_F16 || src->type == TL_TYPE_BF16) {
        CK(cudaMemcpy(dst->d, src->data, bytes, cudaMemcpyHostToDevice));
    } else { /* other formats: dequantize to f16 once, in slabs of rows */
        static bool said;
        if (!said && !tlc_qtype_has_kernels(src->type)) {
            fprintf(stderr, "cuda: %s weights have no GPU kernels: widened to f16 at upload (the first: %s)\n",
                    tl_type_name(src->type), src->name);
            said = true;
        }
        const size_t rs = tl_row_size(src->type, src->n_in);
        const int64_t slab = TL_MAX(1, (int64_t)(16 << 20) / (src->n_in * 2));
        float *f = (float *)tl_xmalloc(sizeof(float) * (size_t)src->n_in);
        uint16_t *h = (uint16_t *)tl_xmalloc(sizeof(uint16_t) * (size_t)src->n_in * slab);
        for (int64_t r0 = 0; r0 < src->n_out; r0 += slab) {
            const int64_t nr = TL_MIN(slab, src->n_out - r0);
            for (int64_t r = 0; r < nr; r++) {
                tl_dequantize_row(src->type, (const uint8_t *)src->data + (size_t)(r0 + r) * rs, f, src->n_in);
                for (int64_t i = 0; i < src->n_in; i++) h[r * src->n_in + i] = tl_fp32_to_fp16(f[i]);
            }
            cudaError_t e = cudaMemcpy((uint16_t *)dst->d + (size_t)r0 * src->n_in, h, sizeof(uint16_t) * (size_t)nr * src->n_in,
                                       cudaMemcpyHostToDevice);
            if (e != cudaSuccess) {
                free(f);
                free(h);
                return tl_fail(err, "uploading %s: %s", src->name, cudaGetErrorString(e));
            }
        }
        free(f);
        free(h);
    }
    w->bytes += bytes;
    if (read_all) w->read_bytes += bytes;
    return 0;
}

static void free_weights(tlc_weights *w) {
    if (!w) return;
    cudaFree(w->tok_embd.d);
    if (w->output.d != w->tok_embd.d) cudaFree(w->output.d);
    cudaFree(w->output_norm);
    for (int i = 0; w->L && i < w->n_layer; i++) {
        dlayer *L = &w->L[i];
        void *p[] = {L->attn_norm, L->ffn_norm, L->attn_post_norm, L->ffn_post_norm, L->q_norm, L->k_norm, L->bq,
                     L->bk, L->bv, L->wq.d, L->wk.d, L->wv.d, L->wo.d, L->gate.d, L->up.d, L->down.d};
        for (size_t j = 0; j < sizeof p / sizeof *p; j++) cudaFree(p[j]);
    }
    free(w->L);
    free(w);
}

extern "C" void tl_cuda_weights_free(void *w) { free_weights((tlc_weights *)w); }

tlc_weights *tlc_upload_weights(tl_model *m, const tl_cuda_opts *o, tl_error *err) {
    const tl_config *c = &m->cfg;
    tlc_weights *w = (tlc_weights *)tl_xcalloc(1, sizeof *w);
    w->n_layer = c->n_layer;
    w->widen = o->widen;
    w->L = (dlayer *)tl_xcalloc((size_t)c->n_layer, sizeof(dlayer));
    const double t0 = tl_time_s();
    int rc = up_mat(w, &m->w.tok_embd, &w->tok_embd, m->w.tied_output, err);
    if (!rc) rc = up_vec(w, m->w.output_norm, c->n_embd, &w->output_norm, err);
    if (!rc) {
        if (m->w.tied_output) w->output = w->tok_embd;
        else rc = up_mat(w, &m->w.output, &w->output, true, err);
    }
    const int qdim = c->n_head * c->head_dim_k, kdim = c->n_head_kv * c->head_dim_k, vdim = c->n_head_kv * c->head_dim_v;
    for (int il = 0; il < c->n_layer && !rc; il++) {
        const tl_layer_weights *S = &m->w.layers[il];
        dlayer *L = &w->L[il];
        rc = up_vec(w, S->attn_norm, c->n_embd, &L->attn_norm, err) || up_vec(w, S->ffn_norm, c->n_embd, &L->ffn_norm, err) ||
             up_vec(w, S->attn_post_norm, c->n_embd, &L->attn_post_norm, err) ||
             up_vec(w, S->ffn_post_norm, c->n_embd, &L->ffn_post_norm, err) ||
             up_vec(w, S->q_norm, c->head_dim_k, &L->q_norm, err) || up_vec(w, S->k_norm, c->head_dim_k, &L->k_norm, err) ||
             up_vec(w, S->bq, qdim, &L->bq, err) || up_vec(w, S->bk, kdim, &L->bk, err) || up_vec(w, S->bv, vdim, &L->bv, err) ||
             up_mat(w, &S->wq, &L->wq, true, err) || up_mat(w, &S->wk, &L->wk, true, err) ||
             up_mat(w, &S->wv, &L->wv, true, err) || up_mat(w, &S->wo, &L->wo, true, err) ||
             up_mat(w, &S->w_gate, &L->gate, true, err) || up_mat(w, &S->w_up, &L->up, true, err) ||
             up_mat(w, &S->w_down, &L->down, true, err);
    }
    if (rc) {
        tl_fail_prefix(err, "uploading weights to the GPU");
        free_weights(w);
        return NULL;
    }
    if (o->verbose)
        fprintf(stderr, "cuda: uploaded %.2f GiB of weights in %.2f s\n", w->bytes / 1073741824.0, tl_time_s() - t0);
    return w;
}

