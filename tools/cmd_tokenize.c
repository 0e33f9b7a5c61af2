/* tailor tokenize: token ids of a text, one line, space separated (--pieces shows them).
 * Only the file's tokenizer is loaded (tl_tokenizer_open): any GGUF that carries one works,
 * whatever its architecture, tensors or not (llama.cpp's ggml-vocab-*.gguf files). */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

int tl_cmd_tokenize(int argc, char **argv) {
    tl_cli_common c;
    tl_cli_common_init(&c);
    bool pieces = false, no_bos = false;
    for (int i = 1; i < argc; i++) {
        int r = tl_cli_common_arg(&c, argc, argv, &i);
        if (r < 0) return 2;
        if (r) continue;
        if (!strcmp(argv[i], "--pieces")) pieces = true;
        else if (!strcmp(argv[i], "--ids")) pieces = false;
        else if (!strcmp(argv[i], "--no-bos")) no_bos = true;
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: tailor tokenize -m MODEL (-p TEXT | -f FILE) [--ids | --pieces] [--no-bos]\n"
                   "  MODEL: any GGUF with a tokenizer (a vocabulary-only file too); ids are llama.cpp's\n"
                   "  --ids     ids only (the default)      --pieces  id:'piece' pairs\n"
                   "  --no-bos  no BOS/EOS (or [CLS]/[SEP]) around the text\n");
            return 0;
        } else {
            fprintf(stderr, "tailor tokenize: unknown flag '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!c.model) {
        fprintf(stderr, "tailor tokenize: -m MODEL is required\n");
        return 2;
    }
    tl_error err = {{0}};
    int rc = 1;
    size_t len = 0, n = 0;
    char *text = NULL;
    int32_t *ids = NULL;
    tl_tokenizer *t = tl_tokenizer_open(c.model, &err);
    if (!t) goto done;
    if (!(text = tl_cli_prompt_text(&c, t, 0, &len, &err))) goto done;
    if (!(ids = tl_tokenize_all(t, text, len, !no_bos, &n, &err))) {
        tl_fail_prefix(&err, "%s", c.file ? c.file : "prompt");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (pieces) {
            char buf[256], shown[1024]; /* the piece as the vocab has it, escaped (tl_escape) */
            size_t np = tl_token_to_piece(t, ids[i], true, buf, sizeof buf);
            tl_escape(shown, sizeof shown, buf, np < sizeof buf ? np : sizeof buf, "'");
            printf("%s%d:'%s'", i ? " " : "", ids[i], shown);
        } else {
            printf("%s%d", i ? " " : "", ids[i]);
        }
    }
    printf("\n");
    rc = 0;
done:
    if (rc) fprintf(stderr, "tailor tokenize: %s\n", err.msg);
    free(ids);
    free(text);
    tl_tokenizer_free(t);
    return rc;
}
