/* stub.c: the CUDA interface (cuda.h, cuda_test.h) in builds without CUDA (TL_CUDA=OFF or no
 * nvcc), for the callers that use it directly (tests/cuda/test_cuda.c, bench/bench_cuda_attn.c):
 * every call fails saying so, and tl_cuda_available() is false. The engine reaches the backend
 * through its table only (engine/backend.c, which says the same). Built only where the real
 * backend (the .cu files beside it) is not. */
#include "cuda_test.h"

#include <stdio.h>
#include <string.h>

static const char *no_cuda = "this build of tailor has no CUDA support (configure with -DTL_CUDA=ON where nvcc is installed)";

bool tl_cuda_available(char *why, size_t n) {
    if (why && n) snprintf(why, n, "%s", no_cuda);
    return false;
}

bool tl_cuda_device_bandwidth(char *name, size_t n, double *peak_gbs) {
    if (name && n) snprintf(name, n, "%s", no_cuda);
    *peak_gbs = 0;
    return false;
}

tl_cuda_session *tl_cuda_session_new(struct tl_model *m, int n_ctx, int chunk, const tl_kv_layer_policy *policies,
                                     const tl_cuda_opts *o, tl_error *err) {
    (void)m, (void)n_ctx, (void)chunk, (void)policies, (void)o;
    tl_fail(err, "--device cuda: %s", no_cuda);
    return NULL;
}

tl_cuda_session *tl_cuda_session_new_kv(struct tl_model *m, int n_ctx, const tl_kv_layer_policy *policies,
                                        const tl_cuda_opts *o, tl_error *err) {
    (void)m, (void)n_ctx, (void)policies, (void)o;
    tl_fail(err, "--device cuda: %s", no_cuda);
    return NULL;
}

void tl_cuda_session_free(tl_cuda_session *g) { (void)g; }

int tl_cuda_eval(tl_cuda_session *g, const int32_t *tokens, int n, float *logits, bool all_logits, tl_error *err) {
    (void)g, (void)tokens, (void)n, (void)logits, (void)all_logits;
    return tl_fail(err, "%s", no_cuda);
}

void tl_cuda_reset(tl_cuda_session *g) { (void)g; }
const tl_cuda_opts *tl_cuda_session_opts(const tl_cuda_session *g) {
    static const tl_cuda_opts none;
    (void)g;
    return &none;
}

int tl_cuda_n_past(const tl_cuda_session *g) {
    (void)g;
    return 0;
}

int tl_cuda_truncate_max(const tl_cuda_session *g, int n) {
    (void)g, (void)n;
    return 0;
}

int tl_cuda_truncate(tl_cuda_session *g, int n, tl_error *err) {
    (void)g, (void)n;
    return tl_fail(err, "%s", no_cuda);
}

int tl_cuda_fill_random(tl_cuda_session *g, int n, uint64_t seed, tl_error *err) {
    (void)g, (void)n, (void)seed;
    return tl_fail(err, "%s", no_cuda);
}

void tl_cuda_memory(const tl_cuda_session *g, tl_device_mem *out) {
    (void)g;
    memset(out, 0, sizeof *out);
}

void tl_cuda_weights_free(void *w) { (void)w; }

int tl_cuda_layer_attend(const tl_kv_layer_policy *p, const tl_kv_shape *s, int n_hist, int chunk, const float *kh,
                         const float *vh, int m, const float *q, const float *k, const float *v, float *out, int mode,
                         tl_error *err) {
    (void)p, (void)s, (void)n_hist, (void)chunk, (void)kh, (void)vh, (void)m, (void)q, (void)k, (void)v, (void)out, (void)mode;
    return tl_fail(err, "%s", no_cuda);
}

int tl_cuda_attn_bench(const tl_kv_shape *s, int n_past, int m, int tc, int reps, double *ms, float *out, tl_error *err) {
    (void)s, (void)n_past, (void)m, (void)tc, (void)reps, (void)ms, (void)out;
    return tl_fail(err, "%s", no_cuda);
}

int tl_cuda_plan_memory(const struct tl_model *m, int n_ctx, int chunk, const tl_kv_layer_policy *policies,
                        const tl_cuda_opts *o, tl_device_plan *out, tl_error *err) {
    (void)m, (void)n_ctx, (void)chunk, (void)policies, (void)o;
    memset(out, 0, sizeof *out);
    return tl_fail(err, "%s", no_cuda);
}

int tl_cuda_qmatmul_test(int t, const void *W, int n_in, int n_out, const float *X, int m, int slab_rows, float *y_fast,
                         float *y_ref, float *y_pre, tl_error *err) {
    (void)t, (void)W, (void)n_in, (void)n_out, (void)X, (void)m, (void)slab_rows, (void)y_fast, (void)y_ref, (void)y_pre;
    return tl_fail(err, "%s", no_cuda);
}

int tl_cuda_check_budget(const struct tl_model *m, int n_ctx, int chunk, const tl_kv_layer_policy *policies,
                         const tl_cuda_opts *o, uint64_t budget, tl_error *err) {
    (void)m, (void)n_ctx, (void)chunk, (void)policies, (void)o, (void)budget;
    return tl_fail(err, "--gpu-mem-budget: %s", no_cuda);
}

int tl_cuda_offload_layer_test(const tl_kv_layer_policy *p, const tl_kv_shape *s, int n_hist, int chunk, const float *qh,
                               const float *kh, const float *vh, float *outh, int n_dec, const float *q,
                               const float *qpred, const float *k, const float *v, float *out, int *sel, int *nsel,
                               tl_error *err) {
    (void)p, (void)s, (void)n_hist, (void)chunk, (void)qh, (void)kh, (void)vh, (void)outh, (void)n_dec, (void)q;
    (void)qpred, (void)k, (void)v, (void)out, (void)sel, (void)nsel;
    return tl_fail(err, "%s", no_cuda);
}

tl_cuda_batch *tl_cuda_batch_new(struct tl_model *m, int max_rows, int max_seqs, int n_ctx, const tl_kv_layer_policy *policies,
                                 const tl_cuda_opts *o, tl_error *err) {
    (void)m, (void)max_rows, (void)max_seqs, (void)n_ctx, (void)policies, (void)o;
    tl_fail(err, "--device cuda: %s", no_cuda);
    return NULL;
}

void tl_cuda_batch_free(tl_cuda_batch *b) { (void)b; }

uint64_t tl_cuda_batch_bytes(const tl_cuda_batch *b) {
    (void)b;
    return 0;
}

int tl_cuda_batch_eval(tl_cuda_batch *b, const tl_cuda_seq *seqs, int n_seq, tl_error *err) {
    (void)b, (void)seqs, (void)n_seq;
    return tl_fail(err, "%s", no_cuda);
}

int tl_cuda_plan_batch(const struct tl_model *m, int n_ctx, const tl_kv_layer_policy *policies, const tl_cuda_opts *o,
                       int n_seq, int max_rows, int max_seqs, tl_device_plan *out, tl_error *err) {
    (void)m, (void)n_ctx, (void)policies, (void)o, (void)n_seq, (void)max_rows, (void)max_seqs;
    memset(out, 0, sizeof *out);
    return tl_fail(err, "%s", no_cuda);
}

int tl_cuda_check_batch(const struct tl_model *m, int n_ctx, const tl_kv_layer_policy *policies, const tl_cuda_opts *o,
                        int n_seq, int max_rows, int max_seqs, uint64_t budget, tl_error *err) {
    (void)m, (void)n_ctx, (void)policies, (void)o, (void)n_seq, (void)max_rows, (void)max_seqs, (void)budget;
    return tl_fail(err, "--device cuda: %s", no_cuda);
}

int tl_cuda_matvec_rows_test(int wt, const float *W, const float *W2, int n_in, int n_out, const float *bias,
                             const float *y0, int glu, const float *X, int m, float *y_rows, float *y_one, tl_error *err) {
    (void)wt, (void)W, (void)W2, (void)n_in, (void)n_out, (void)bias, (void)y0, (void)glu, (void)X, (void)m, (void)y_rows;
    (void)y_one;
    return tl_fail(err, "%s", no_cuda);
}

int tl_cuda_qmatvec_rows_test(int t, const void *W, const void *W2, int n_in, int n_out, const float *bias,
                              const float *y0, int glu, const float *X, int m, float *y_rows, float *y_one, tl_error *err) {
    (void)t, (void)W, (void)W2, (void)n_in, (void)n_out, (void)bias, (void)y0, (void)glu, (void)X, (void)m, (void)y_rows;
    (void)y_one;
    return tl_fail(err, "%s", no_cuda);
}
