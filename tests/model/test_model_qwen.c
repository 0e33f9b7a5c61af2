/* Qwen2.5-Coder-1.5B-Instruct Q4_K_M (scripts/setup-models.sh fetches it; CI skips it) against
 * transformers in float32 over the dequantized GGUF (tests/fixtures/ref_qwen25.json, made by
 * scripts/ref/ref_real.py qwen25):
 *  - an 8704-token essay case (past 8k): the reference's top-20 logits within 2e-3 at positions
 *    255, 1023, 4095, 8191, 8703 (prefill keeps activations in f32; measured <= 1.9e-4, the
 *    bound leaves room for summation order over 28 layers and 8.7k keys), top-1 equal;
 *  - a 4-token prompt on the 8-bit activation path: logits within 1.0 except position 0 (the
 *    attention sink's massive activations, refcheck.h), and the greedy continuation up to the
 *    first near tie of the reference (its 11th step has a 0.027-logit margin). */
/* TL_TEST_LABEL_SLOW */
#include "../refcheck.h"
#include "../testutil.h"

int main(void) {
    tl_ref_check_model("ref_qwen25.json", tl_test_models("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"), 2e-3f, 1.0f, 16,
                       true, true);
    return tl_test_done();
}
