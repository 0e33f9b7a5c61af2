/* chat.c: chat templates. A GGUF carries its template as Jinja text
 * (tokenizer.chat_template); rather than run Jinja we recognise the common families by
 * their marker tokens and render them in C:
 *   ChatML  (SmolLM2, Qwen2, Qwen3)  <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n
 *           (Qwen3's reasoning: the model writes its <think>...</think> itself, as with
 *           enable_thinking; earlier turns are kept as given)
 *   Phi-4                     <|im_start|>role<|im_sep|>content<|im_end|> ... <|im_start|>assistant<|im_sep|>
 *   Phi-3   (Phi-3, Phi-3.5)  <|role|>\ncontent<|end|>\n ... <|assistant|>\n
 *   Phi-4-mini                <|role|>content<|end|> ... <|assistant|>
 *   Gemma   (Gemma 2/3)       <start_of_turn>user\ncontent<end_of_turn>\n ... <start_of_turn>model\n
 *                             (no system role: the system text opens the first user turn)
 *   Llama-3                   <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> ...
 *   DeepSeek-R1 (the Qwen and Llama distills)  system text, then <｜User｜>content and
 *                             <｜Assistant｜>answer<｜end▁of▁sentence｜> ... <｜Assistant｜><think>\n
 *                             (the template's way: the last system message's text comes first,
 *                             unmarked; an earlier answer keeps only what follows its last
 *                             </think>; the reply opens with <think>\n, as DeepSeek advise)
 * BOS is not written: the tokenizer adds it when the vocabulary asks for it (as for
 * /v1/completions and tailor generate).
 *
 * The renderer records where it wrote the template's markers. Only those are tokenized as
 * control tokens: the same characters inside a message are plain text, so a user cannot
 * close their turn and open a forged system turn (unless the server was started with
 * --chat-parse-special, for clients that are trusted to write control tokens). */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    tl_strbuf s;
    tl_span *marks; /* where the template's own control tokens were written */
    size_t n_marks, cap_marks;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) { tl_strbuf_put(&b->s, s, n); }
static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* A marker of the template (a control token), recorded so that it alone is tokenized as one. */
static void sb_mark(sbuf *b, const char *s) {
    if (b->n_marks == b->cap_marks) {
        b->cap_marks = b->cap_marks ? b->cap_marks * 2 : 16;
        b->marks = tl_xrealloc(b->marks, b->cap_marks * sizeof *b->marks);
    }
    b->marks[b->n_marks++] = (tl_span){b->s.n, strlen(s)};
    sb_str(b, s);
}

/* Gemma's and Llama-3's templates trim message content; ChatML's does not. */
static void sb_trimmed(sbuf *b, const char *s) {
    size_t n = strlen(s);
    while (n && strchr(" \t\r\n", s[n - 1])) n--;
    while (n && strchr(" \t\r\n", *s)) s++, n--;
    sb_put(b, s, n);
}

/* Each template: its name (--chat-template), and the markers that recognise it in a GGUF's
 * Jinja text (all must occur), in the order they are tried: Phi-4's template also has
 * <|im_start|>, so it comes before ChatML. */
static const struct {
    tl_chat_kind kind;
    const char *name;
    const char *detect[2];
} templates[] = {
    {TL_CHAT_PHI4, "phi4", {"<|im_start|>", "<|im_sep|>"}},
    {TL_CHAT_CHATML, "chatml", {"<|im_start|>", NULL}},
    {TL_CHAT_GEMMA, "gemma", {"<start_of_turn>", NULL}},
    {TL_CHAT_LLAMA3, "llama3", {"<|start_header_id|>", "<|eot_id|>"}},
    {TL_CHAT_PHI3, "phi3", {"<|user|>", "<|end|>"}},
    {TL_CHAT_PHI4_MINI, "phi4-mini", {"'<|' + message['role'] + '|>'", "<|end|>"}},
    {TL_CHAT_DEEPSEEK_R1, "deepseek-r1", {"<｜User｜>", "<｜Assistant｜>"}},
};
#define N_TEMPLATES (sizeof templates / sizeof *templates)

tl_chat_kind tl_chat_by_name(const char *name) {
    for (size_t i = 0; name && i < N_TEMPLATES; i++)
        if (!strcmp(name, templates[i].name)) return templates[i].kind;
    return TL_CHAT_NONE;
}

tl_chat_kind tl_chat_detect(const char *jinja) {
    if (!jinja || !*jinja) return TL_CHAT_NONE;
    for (size_t i = 0; i < N_TEMPLATES; i++)
        if (strstr(jinja, templates[i].detect[0]) && (!templates[i].detect[1] || strstr(jinja, templates[i].detect[1])))
            return templates[i].kind;
    return TL_CHAT_UNSUPPORTED;
}

const char *tl_chat_name(tl_chat_kind k) {
    for (size_t i = 0; i < N_TEMPLATES; i++)
        if (templates[i].kind == k) return templates[i].name;
    return k == TL_CHAT_UNSUPPORTED ? "unsupported" : "none";
}

const char *tl_chat_names(void) {
    static char list[128];
    if (!list[0])
        for (size_t i = 0; i < N_TEMPLATES; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? "|" : "", templates[i].name);
    return list;
}

/* DeepSeek-R1's template drops an earlier answer's reasoning: the text after its last </think>. */
static const char *after_think(const char *c) {
    for (const char *p = strstr(c, "</think>"); p; p = strstr(p + 1, "</think>")) c = p + strlen("</think>");
    return c;
}

char *tl_chat_render(tl_chat_kind k, const tl_chat_msg *msgs, int n, tl_span **markers, size_t *n_markers,
                     tl_error *err) {
    *markers = NULL;
    *n_markers = 0;
    if (k == TL_CHAT_NONE || k == TL_CHAT_UNSUPPORTED) {
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
    if (k == TL_CHAT_DEEPSEEK_R1) /* the last system message's text, first and unmarked */
        for (int i = 0; i < n; i++)
            if (!strcmp(msgs[i].role, "system")) pending_system = msgs[i].content;
    if (k == TL_CHAT_DEEPSEEK_R1 && pending_system) sb_str(&b, pending_system);
    for (int i = 0; i < n; i++) {
        const char *role = msgs[i].role, *c = msgs[i].content;
        switch (k) {
        case TL_CHAT_CHATML:
        case TL_CHAT_PHI4:
            sb_mark(&b, "<|im_start|>");
            sb_str(&b, role);
            if (k == TL_CHAT_PHI4) sb_mark(&b, "<|im_sep|>");
            else sb_str(&b, "\n");
            sb_str(&b, c);
            sb_mark(&b, "<|im_end|>");
            if (k == TL_CHAT_CHATML) sb_str(&b, "\n");
            break;
        case TL_CHAT_PHI3:
        case TL_CHAT_PHI4_MINI:
            sb_mark(&b, !strcmp(role, "system") ? "<|system|>" : !strcmp(role, "user") ? "<|user|>" : "<|assistant|>");
            if (k == TL_CHAT_PHI3) sb_str(&b, "\n");
            sb_str(&b, c);
            sb_mark(&b, "<|end|>");
            if (k == TL_CHAT_PHI3) sb_str(&b, "\n");
            break;
        case TL_CHAT_DEEPSEEK_R1:
            if (!strcmp(role, "user")) {
                sb_mark(&b, "<｜User｜>");
                sb_str(&b, c);
            } else if (!strcmp(role, "assistant")) {
                sb_mark(&b, "<｜Assistant｜>");
                sb_str(&b, after_think(c));
                sb_mark(&b, "<｜end▁of▁sentence｜>");
            }
            break;
        case TL_CHAT_GEMMA:
            if (!strcmp(role, "system")) {
                if (i != 0) {
                    free(b.s.p);
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
    switch (k) { /* the assistant's turn opens */
    case TL_CHAT_CHATML:
        sb_mark(&b, "<|im_start|>");
        sb_str(&b, "assistant\n");
        break;
    case TL_CHAT_PHI4:
        sb_mark(&b, "<|im_start|>");
        sb_str(&b, "assistant");
        sb_mark(&b, "<|im_sep|>");
        break;
    case TL_CHAT_PHI3:
    case TL_CHAT_PHI4_MINI:
        sb_mark(&b, "<|assistant|>");
        if (k == TL_CHAT_PHI3) sb_str(&b, "\n");
        break;
    case TL_CHAT_DEEPSEEK_R1:
        sb_mark(&b, "<｜Assistant｜>");
        sb_mark(&b, "<think>");
        sb_str(&b, "\n");
        break;
    case TL_CHAT_GEMMA:
        sb_mark(&b, "<start_of_turn>");
        sb_str(&b, "model\n");
        break;
    default:
        sb_mark(&b, "<|start_header_id|>");
        sb_str(&b, "assistant");
        sb_mark(&b, "<|end_header_id|>");
        sb_str(&b, "\n\n");
        break;
    }
    *markers = b.marks;
    *n_markers = b.n_marks;
    return b.s.p;
}
