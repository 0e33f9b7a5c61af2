/* lm-evaluation-harness against tailor serve (scripts/lm-eval-check.py): lm-eval's
 * local-completions model computes the log-likelihoods of a small local task through
 * /v1/completions (echo + logprobs), compared with transformers over the same GGUF (within
 * 1e-3 per continuation token). Needs a Python with lm-eval[api], transformers and torch, named
 * by TL_LMEVAL_PYTHON (a venv: pip install -r scripts/ref/requirements.txt 'lm-eval[api]');
 * skipped (77) without it or without SmolLM2. */
/* TL_TEST_LABEL_SLOW */
#include "../testutil.h"

#include <stdlib.h>
#include <string.h>

int main(void) {
    const char *py = getenv("TL_LMEVAL_PYTHON"), *bin = getenv("TL_BIN"), *src = getenv("TL_SRC");
    if (!py || !*py || !bin || !src) {
        tl_test_skip("TL_LMEVAL_PYTHON (a Python with lm-eval[api], transformers, torch) not set");
        return tl_test_done();
    }
    const char *model = tl_test_models("SmolLM2-135M-Instruct.Q4_1.gguf");
    if (!tl_test_have(model)) return tl_test_done();
    char cmd[4096], *out = NULL;
    snprintf(cmd, sizeof cmd, "'%s' '%s/scripts/lm-eval-check.py' -m '%s' --tailor '%s' --essays '%s' --docs 16", py, src,
             model, bin, tl_test_shared("data/pg_essays"));
    const int rc = tl_test_run(cmd, &out);
    const char *last = strstr(out, "largest |lm-eval");
    printf("%s\n", last ? last : out);
    if (rc == 77) tl_test_skip("lm-eval-check.py: %s", out);
    else CHECKF(rc == 0, "lm-eval-check.py exit %d:\n%s", rc, out);
    free(out);
    return tl_test_done();
}
