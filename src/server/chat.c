/* chat.c: chat templates. A GGUF carries its template as Jinja text
 * (tokenizer.chat_template); rather than run Jinja we recognise the common families by
 * their marker tokens and render them in C:
 *   ChatML  (SmolLM2, Qwen2)  <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n
 *   Gemma   (Gemma 2/3)       <start_of_turn>user\ncontent<end_of_turn>\n ... <start_of_turn>model\n
 *                             (no system role: the system text opens the first user turn)
 *   Llama-3                   <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> ...
 * BOS is not written: the tokenizer adds it when the vocabulary asks for it (as for
 * /v1/completions and tailor generate).
 *
 * The renderer records where it wrote the template's markers. Only those are tokenized as
 * control tokens: the same characters inside a message are plain text, so a user cannot
 * close their turn and open a forged system turn (unless the server was started with
 * --chat-parse-special, for clients that are trusted to write control tokens). */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    char *p;
    size_t n, cap;
    tl_span *marks; /* where the template's own control tokens were written */
    size_t n_marks, cap_marks;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = tl_xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* A marker of the template (a control token), recorded so that it alone is tokenized as one. */
static void sb_mark(sbuf *b, const char *s) {
    if (b->n_marks == b->cap_marks) {
        b->cap_marks = b->cap_marks ? b->cap_marks * 2 : 16;
        b->marks = tl_xrealloc(b->marks, b->cap_marks * sizeof *b->marks);
    }
    b->marks[b->n_marks++] = (tl_span){b->n, strlen(s)};
    sb_str(b, s);
}

/* Gemma's and Llama-3's templates trim message content; ChatML's does not. */
static void sb_trimmed(sbuf *b, const char *s) {
    size_t n = strlen(s);
    while (n && strchr(" \t\r\n", s[n - 1])) n--;
    while (n && strchr(" \t\r\n", *s)) s++, n--;
    sb_put(b, s, n);
}

tl_chat_kind tl_chat_by_name(const char *name) {
    if (!name) return TL_CHAT_NONE;
    if (!strcmp(name, "chatml")) return TL_CHAT_CHATML;
    if (!strcmp(name, "gemma")) return TL_CHAT_GEMMA;
    if (!strcmp(name, "llama3")) return TL_CHAT_LLAMA3;
    return TL_CHAT_NONE;
}

tl_chat_kind tl_chat_detect(const char *jinja) {
    if (!jinja || !*jinja) return TL_CHAT_NONE;
    if (strstr(jinja, "<|im_start|>")) return TL_CHAT_CHATML;
    if (strstr(jinja, "<start_of_turn>")) return TL_CHAT_GEMMA;
    if (strstr(jinja, "<|start_header_id|>") && strstr(jinja, "<|eot_id|>")) return TL_CHAT_LLAMA3;
    return TL_CHAT_UNSUPPORTED;
}

const char *tl_chat_name(tl_chat_kind k) {
    switch (k) {
    case TL_CHAT_CHATML: return "chatml";
    case TL_CHAT_GEMMA: return "gemma";
    case TL_CHAT_LLAMA3: return "llama3";
    case TL_CHAT_UNSUPPORTED: return "unsupported";
    default: return "none";
    }
}

char *tl_chat_render(tl_chat_kind k, const tl_chat_msg *msgs, int n, tl_span **markers, size_t *n_markers,
                     tl_error *err) {
    *markers = NULL;
    *n_markers = 0;
    if (k != TL_CHAT_CHATML && k != TL_CHAT_GEMMA && k != TL_CHAT_LLAMA3) {
        tl_fail(err, "no supported chat template");
        return NULL;
    }
    if (n <= 0) {
        tl_fail(err, "messages: at least one message is needed");
        return NULL;
    }
    sbuf b = {0};
    sb_str(&b, "");
    const char *pending_system = NULL; /* Gemma: held until the first user turn */
    for (int i = 0; i < n; i++) {
        const char *role = msgs[i].role, *c = msgs[i].content;
        switch (k) {
        case TL_CHAT_CHATML:
            sb_mark(&b, "<|im_start|>");
            sb_str(&b, role);
            sb_str(&b, "\n");
            sb_str(&b, c);
            sb_mark(&b, "<|im_end|>");
            sb_str(&b, "\n");
            break;
        case TL_CHAT_GEMMA:
            if (!strcmp(role, "system")) {
                if (i != 0) {
                    free(b.p);
                    free(b.marks);
                    tl_fail(err, "messages[%d]: the Gemma template takes a system message only first", i);
                    return NULL;
                }
                pending_system = c;
                break;
            }
            sb_mark(&b, "<start_of_turn>");
            sb_str(&b, !strcmp(role, "assistant") ? "model" : role);
            sb_str(&b, "\n");
            if (pending_system) {
                sb_trimmed(&b, pending_system);
                sb_str(&b, "\n\n");
                pending_system = NULL;
            }
            sb_trimmed(&b, c);
            sb_mark(&b, "<end_of_turn>");
            sb_str(&b, "\n");
            break;
        default: /* Llama-3 */
            sb_mark(&b, "<|start_header_id|>");
            sb_str(&b, role);
            sb_mark(&b, "<|end_header_id|>");
            sb_str(&b, "\n\n");
            sb_trimmed(&b, c);
            sb_mark(&b, "<|eot_id|>");
            break;
        }
    }
    if (k == TL_CHAT_GEMMA && pending_system) { /* only a system message: it becomes the user turn */
        sb_mark(&b, "<start_of_turn>");
        sb_str(&b, "user\n");
        sb_trimmed(&b, pending_system);
        sb_mark(&b, "<end_of_turn>");
        sb_str(&b, "\n");
    }
    if (k == TL_CHAT_CHATML) {
        sb_mark(&b, "<|im_start|>");
        sb_str(&b, "assistant\n");
    } else if (k == TL_CHAT_GEMMA) {
        sb_mark(&b, "<start_of_turn>");
        sb_str(&b, "model\n");
    } else {
        sb_mark(&b, "<|start_header_id|>");
        sb_str(&b, "assistant");
        sb_mark(&b, "<|end_header_id|>");
        sb_str(&b, "\n\n");
    }
    *markers = b.marks;
    *n_markers = b.n_marks;
    return b.p;
}
