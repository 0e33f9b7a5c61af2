/* test_gguf.c: GGUF reader/writer.
 *  - real files (stories260K, tailor-test-31m): metadata, shapes, offsets and bytes against
 *    values taken with the Python `gguf` package (an independent reader);
 *  - write -> read round trip of every value type, nested arrays and several tensor types;
 *  - a real file's metadata and tensors copied through the writer and reread identically;
 *  - hand-built bad files (independent byte builder): each gives its specific error;
 *  - truncation at every byte of the first 16 KiB of stories260K, then strides;
 *  - a few thousand random byte flips over a small synthetic file: no crash, sane results. */
#define _GNU_SOURCE
#include "../../src/model/gguf.h"
#include "../testutil.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- helpers */

static bool str_is(tl_gguf_str s, const char *want) {
    return s.len == strlen(want) && memcmp(s.ptr, want, s.len) == 0;
}

static bool starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

/* Open a copy of buf[0..n) in an exact-size allocation (so sanitizers/valgrind catch any
 * read past the end). Returns the handle or NULL; *copy must be freed after close. */
static tl_gguf *open_copy(const void *buf, size_t n, const char *name, tl_error *err, void **copy) {
    *copy = malloc(n ? n : 1);
    if (n) memcpy(*copy, buf, n);
    return tl_gguf_open_memory(*copy, n, name, err);
}

/* Touch every key, value and tensor through the accessors (like the fuzzer); returns a
 * checksum so the compiler cannot drop the reads. Checks tensor data lies in the buffer. */
/* Bits of a double (a plain cast of a negative or huge value to uint64_t is undefined). */
static uint64_t dbits(double d) {
    uint64_t u;
    memcpy(&u, &d, 8);
    return u;
}

static uint64_t walk_value(const tl_gguf_value *v, int depth) {
    uint64_t h = (uint64_t)v->type;
    if (v->type == TL_GGUF_STRING) return h + v->v.str.len + (v->v.str.len ? (unsigned char)v->v.str.ptr[v->v.str.len - 1] : 0);
    if (v->type != TL_GGUF_ARRAY) return h + v->v.u64;
    for (uint64_t i = 0; i < v->v.arr.n && i < 64; i++) {
        if (v->v.arr.elem_type == TL_GGUF_ARRAY) h += walk_value(&v->v.arr.elems[i], depth + 1);
        else if (v->v.arr.elem_type == TL_GGUF_STRING) h += tl_gguf_arr_str(v, i).len;
        else h += (uint64_t)tl_gguf_arr_i64(v, i) + dbits(tl_gguf_arr_f64(v, i));
    }
    if (v->v.arr.n) h += (uint64_t)tl_gguf_arr_i64(v, v->v.arr.n - 1) + tl_gguf_arr_str(v, v->v.arr.n - 1).len;
    h += (uint64_t)tl_gguf_arr_i64(v, v->v.arr.n); /* out of range: must be harmless */
    return h;
}

static bool walk_all(const tl_gguf *g, const void *base, size_t size, uint64_t *sum) {
    bool ok = true;
    for (int64_t i = 0; i < tl_gguf_n_kv(g); i++) {
        size_t len;
        const char *k = tl_gguf_key_name(g, i, &len);
        *sum += len + walk_value(tl_gguf_kv_value(g, i), 0) + (len ? (unsigned char)k[0] : 0);
    }
    for (int64_t i = 0; i < tl_gguf_n_tensors(g); i++) {
        const tl_gguf_tensor *t = tl_gguf_tensor_at(g, i);
        const uint8_t *d = t->data, *b = base;
        if (d < b || d + t->nbytes > b + size || t->n_dims < 1 || t->n_dims > 4) ok = false;
        if (t->nbytes) *sum += d[0] + d[t->nbytes - 1];
        if (tl_gguf_find_tensor(g, t->name) != t) ok = false;
    }
    uint32_t u = 0; /* opt_* leave it untouched when the key is missing */
    float f = 0;
    char *s = NULL;
    tl_error err;
    if (tl_gguf_opt_u32(g, "general.alignment", &u, &err) == 0) *sum += u;
    if (tl_gguf_opt_f32(g, "f32", &f, &err) == 0) *sum += dbits(f);
    if (tl_gguf_opt_str(g, "general.name", &s, &err) == 0 && s) *sum += strlen(s);
    free(s);
    return ok;
}

static char tmp_dir[256];
static const char *tmp_path(const char *name) {
    static char buf[4][512];
    static int next;
    char *b = buf[next++ % 4];
    snprintf(b, 512, "%s/%s", tmp_dir, name);
    return b;
}

static bool files_equal(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    bool eq = fa && fb;
    static char ba[1 << 16], bf[1 << 16];
    while (eq) {
        size_t na = fread(ba, 1, sizeof ba, fa), nb = fread(bf, 1, sizeof bf, fb);
        if (na != nb || memcmp(ba, bf, na) != 0) eq = false;
        if (na < sizeof ba) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return eq;
}

static bool file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* Deep equality of two values (floats compared bitwise through their encoding). */
static bool value_eq(const tl_gguf_value *a, const tl_gguf_value *b) {
    if (a->type != b->type) return false;
    switch (a->type) {
    case TL_GGUF_STRING:
        return a->v.str.len == b->v.str.len && memcmp(a->v.str.ptr, b->v.str.ptr, a->v.str.len) == 0;
    case TL_GGUF_FLOAT32: case TL_GGUF_FLOAT64:
        return memcmp(&a->v.f64, &b->v.f64, 8) == 0;
    case TL_GGUF_ARRAY: {
        if (a->v.arr.elem_type != b->v.arr.elem_type || a->v.arr.n != b->v.arr.n) return false;
        tl_gguf_vtype et = a->v.arr.elem_type;
        if (et == TL_GGUF_STRING || et == TL_GGUF_ARRAY) {
            for (uint64_t i = 0; i < a->v.arr.n; i++)
                if (!value_eq(&a->v.arr.elems[i], &b->v.arr.elems[i])) return false;
            return true;
        }
        static const size_t sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
        return a->v.arr.n == 0 || memcmp(a->v.arr.raw, b->v.arr.raw, a->v.arr.n * sz[et]) == 0;
    }
    default:
        return a->v.u64 == b->v.u64;
    }
}

/* ---------------------------------------------------------------- real files */

static void test_stories260k(void) {
    const char *path = tl_test_shared("models/stories260K.gguf");
    if (!tl_test_have(path)) return;
    tl_error err = {0};
    tl_gguf *g = tl_gguf_open(path, &err);
    CHECKF(g != NULL, "%s", err.msg);
    if (!g) return;
    CHECK(tl_gguf_mapped(g)); /* a file's pages may be released (a packed matrix's) */
    CHECK(tl_gguf_version(g) == 3);
    CHECK(tl_gguf_alignment(g) == 32);
    CHECK(tl_gguf_file_size(g) == 1054272);
    CHECK(tl_gguf_n_kv(g) == 21);
    CHECK(tl_gguf_n_tensors(g) == 47);
    CHECK(strcmp(tl_gguf_path(g), path) == 0);

    char *s = NULL;
    CHECK(tl_gguf_get_str(g, "general.architecture", &s, &err) == 0 && s && strcmp(s, "llama") == 0);
    free(s);
    s = NULL;
    CHECK(tl_gguf_get_str(g, "general.name", &s, &err) == 0 && s && strcmp(s, "stories260K") == 0);
    free(s);
    s = NULL;
    CHECK(tl_gguf_get_str(g, "tokenizer.ggml.model", &s, &err) == 0 && s && strcmp(s, "llama") == 0);
    free(s);

    uint32_t u = 0;
    CHECK(tl_gguf_get_u32(g, "llama.block_count", &u, &err) == 0 && u == 5);
    CHECK(tl_gguf_get_u32(g, "llama.embedding_length", &u, &err) == 0 && u == 64);
    CHECK(tl_gguf_get_u32(g, "llama.feed_forward_length", &u, &err) == 0 && u == 172);
    CHECK(tl_gguf_get_u32(g, "llama.attention.head_count", &u, &err) == 0 && u == 8);
    CHECK(tl_gguf_get_u32(g, "llama.attention.head_count_kv", &u, &err) == 0 && u == 4);
    CHECK(tl_gguf_get_u32(g, "llama.context_length", &u, &err) == 0 && u == 512);
    CHECK(tl_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &u, &err) == 0 && u == 1);
    CHECK(tl_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &u, &err) == 0 && u == 2);
    int64_t i64 = 0;
    CHECK(tl_gguf_get_i64(g, "llama.vocab_size", &i64, &err) == 0 && i64 == 512); /* u32 -> i64 */
    float f = 0;
    CHECK(tl_gguf_get_f32(g, "llama.rope.freq_base", &f, &err) == 0 && f == 10000.0f);
    CHECK(tl_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f, &err) == 0 && f == 9.999999747378752e-06f);
    CHECK(tl_gguf_get_f32(g, "llama.block_count", &f, &err) == 0 && f == 5.0f); /* int -> float */

    /* wrong types and missing keys: messages name file, key, expected and found */
    bool b;
    CHECK(tl_gguf_get_bool(g, "llama.block_count", &b, &err) == -1);
    CHECKF(strstr(err.msg, path) && strstr(err.msg, "'llama.block_count'") && strstr(err.msg, "expected bool, found uint32"),
           "%s", err.msg);
    CHECK(tl_gguf_get_u32(g, "general.architecture", &u, &err) == -1);
    CHECKF(strstr(err.msg, "expected uint32, found string"), "%s", err.msg);
    CHECK(tl_gguf_get_str(g, "llama.rope.freq_base", &s, &err) == -1);
    CHECKF(strstr(err.msg, "expected string, found float32"), "%s", err.msg);
    CHECK(tl_gguf_get_u32(g, "no.such.key", &u, &err) == -1);
    CHECKF(strstr(err.msg, "'no.such.key' not found"), "%s", err.msg);
    u = 77;
    CHECK(tl_gguf_opt_u32(g, "no.such.key", &u, &err) == 0 && u == 77);
    CHECK(tl_gguf_opt_u32(g, "general.name", &u, &err) == -1 && u == 77);
    b = true;
    CHECK(tl_gguf_opt_bool(g, "tokenizer.ggml.add_bos_token", &b, &err) == 0 && b);
    CHECK(tl_gguf_find(g, "no.such.key") == NULL);

    const tl_gguf_value *tok = tl_gguf_find(g, "tokenizer.ggml.tokens");
    CHECK(tok && tok->type == TL_GGUF_ARRAY && tok->v.arr.elem_type == TL_GGUF_STRING && tok->v.arr.n == 512);
    if (tok && tok->type == TL_GGUF_ARRAY && tok->v.arr.n == 512) {
        CHECK(str_is(tl_gguf_arr_str(tok, 0), "<unk>"));
        CHECK(str_is(tl_gguf_arr_str(tok, 1), "<s>"));
        CHECK(str_is(tl_gguf_arr_str(tok, 2), "</s>"));
        CHECK(tl_gguf_arr_str(tok, 512).len == 0); /* out of range */
    }
    const tl_gguf_value *tt = tl_gguf_find(g, "tokenizer.ggml.token_type");
    CHECK(tt && tt->type == TL_GGUF_ARRAY && tt->v.arr.elem_type == TL_GGUF_INT32 && tt->v.arr.n == 512);
    if (tt) CHECK(tl_gguf_arr_i64(tt, 0) == 2 && tl_gguf_arr_i64(tt, 1) == 3 && tl_gguf_arr_f64(tt, 2) == 3.0);
    const tl_gguf_value *sc = tl_gguf_find(g, "tokenizer.ggml.scores");
    CHECK(sc && sc->type == TL_GGUF_ARRAY && sc->v.arr.elem_type == TL_GGUF_FLOAT32 && sc->v.arr.n == 512);
    CHECK(tl_gguf_key_name(g, 0, NULL) && memcmp(tl_gguf_key_name(g, 0, NULL), "general.architecture", 20) == 0);
    CHECK(tl_gguf_key_name(g, 21, NULL) == NULL && tl_gguf_kv_value(g, -1) == NULL);

    /* tensors: shapes and data placement, data bytes compared with a plain read of the file */
    size_t flen = 0;
    uint8_t *file = (uint8_t *)tl_test_read_file(path, &flen);
    const tl_gguf_tensor *t = tl_gguf_find_tensor(g, "token_embd.weight");
    CHECK(t && t->n_dims == 2 && t->ne[0] == 64 && t->ne[1] == 512 && t->ne[2] == 1 && t->ne[3] == 1);
    CHECK(t && t->type == TL_TYPE_F32 && t->nbytes == 131072 && t->offset == 0);
    if (t && file) {
        CHECK(memcmp(t->data, file + 14144, t->nbytes) == 0);
        CHECK(((const float *)t->data)[0] == -0.29474878311157227f && ((const float *)t->data)[1] == 0.5618956089019775f);
    }
    t = tl_gguf_find_tensor(g, "blk.0.attn_k.weight");
    CHECK(t && t->ne[0] == 64 && t->ne[1] == 32 && t->nbytes == 8192 && t->offset == 161856 - 14144);
    if (t && file) CHECK(memcmp(t->data, file + 161856, 8192) == 0);
    t = tl_gguf_find_tensor(g, "blk.0.attn_norm.weight");
    CHECK(t && t->n_dims == 1 && t->ne[0] == 64 && t->ne[1] == 1 && ((const float *)t->data)[0] == 0.9722429513931274f);
    t = tl_gguf_tensor_at(g, 46);
    CHECK(t && strcmp(t->name, "output_norm.weight") == 0 && 14144 + t->offset + t->nbytes == 1054272);
    CHECK(tl_gguf_tensor_at(g, 47) == NULL && tl_gguf_find_tensor(g, "output.weight") == NULL);
    for (int64_t i = 0; i < tl_gguf_n_tensors(g); i++)
        CHECK(tl_gguf_tensor_at(g, i)->offset % 32 == 0);
    free(file);
    tl_gguf_close(g);
}

static void test_tailor31m(void) {
    const char *path = tl_test_shared("models/tailor-test-31m.gguf");
    if (!tl_test_have(path)) return;
    tl_error err = {0};
    tl_gguf *g = tl_gguf_open(path, &err);
    CHECKF(g != NULL, "%s", err.msg);
    if (!g) return;
    CHECK(tl_gguf_n_kv(g) == 23 && tl_gguf_n_tensors(g) == 75);
    uint32_t u = 0;
    CHECK(tl_gguf_get_u32(g, "llama.block_count", &u, &err) == 0 && u == 8);
    CHECK(tl_gguf_get_u32(g, "llama.embedding_length", &u, &err) == 0 && u == 512);
    CHECK(tl_gguf_get_u32(g, "llama.attention.head_count_kv", &u, &err) == 0 && u == 2);
    CHECK(tl_gguf_get_u32(g, "llama.feed_forward_length", &u, &err) == 0 && u == 1408);
    CHECK(tl_gguf_get_u32(g, "llama.context_length", &u, &err) == 0 && u == 8192);
    float f = 0;
    CHECK(tl_gguf_get_f32(g, "llama.rope.freq_base", &f, &err) == 0 && f == 500000.0f);
    bool b = false;
    CHECK(tl_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b, &err) == 0 && b);
    CHECK(tl_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &b, &err) == 0 && !b);
    char *s = NULL;
    CHECK(tl_gguf_get_str(g, "tokenizer.ggml.pre", &s, &err) == 0 && s && strcmp(s, "gpt-2") == 0);
    free(s);
    const tl_gguf_value *tok = tl_gguf_find(g, "tokenizer.ggml.tokens");
    CHECK(tok && tok->type == TL_GGUF_ARRAY && tok->v.arr.n == 8192 && str_is(tl_gguf_arr_str(tok, 0), "<|bos|>"));
    const tl_gguf_value *mg = tl_gguf_find(g, "tokenizer.ggml.merges");
    CHECK(mg && mg->type == TL_GGUF_ARRAY && mg->v.arr.n == 7934 && str_is(tl_gguf_arr_str(mg, 2), "\xc4\xa0 t"));
    const tl_gguf_tensor *t = tl_gguf_find_tensor(g, "token_embd.weight");
    CHECK(t && t->type == TL_TYPE_F16 && t->ne[0] == 512 && t->ne[1] == 8192 && t->nbytes == 8388608);
    if (t) CHECK(tl_fp16_to_fp32(((const uint16_t *)t->data)[0]) == 0.002742767333984375f);
    t = tl_gguf_find_tensor(g, "blk.0.attn_q.weight");
    CHECK(t && t->offset == 8654048 - 263392 && tl_fp16_to_fp32(((const uint16_t *)t->data)[1]) == 0.02886962890625f);
    t = tl_gguf_find_tensor(g, "output.weight");
    CHECK(t && 263392 + t->offset + t->nbytes == 62164192);
    tl_gguf_close(g);
}

/* ---------------------------------------------------------------- round trip */

static tl_gguf_value vu(tl_gguf_vtype t, uint64_t x) { tl_gguf_value v = {.type = t}; v.v.u64 = x; return v; }
static tl_gguf_value vi(tl_gguf_vtype t, int64_t x) { tl_gguf_value v = {.type = t}; v.v.i64 = x; return v; }
static tl_gguf_value vf(tl_gguf_vtype t, double x) { tl_gguf_value v = {.type = t}; v.v.f64 = x; return v; }
static tl_gguf_value vs(const char *s, uint64_t len) { tl_gguf_value v = {.type = TL_GGUF_STRING}; v.v.str = (tl_gguf_str){s, len}; return v; }
static tl_gguf_value varr(tl_gguf_vtype et, uint64_t n, const tl_gguf_value *elems, const void *raw) {
    tl_gguf_value v = {.type = TL_GGUF_ARRAY};
    v.v.arr.elem_type = et;
    v.v.arr.n = n;
    v.v.arr.elems = elems;
    v.v.arr.raw = raw;
    return v;
}

/* Tensor payloads for the round trip (patterned bytes; type doesn't matter to the container). */
static uint8_t tdata[5][4096];

static void add_test_tensors(tl_gguf_writer *w) {
    for (int k = 0; k < 5; k++)
        for (int i = 0; i < 4096; i++) tdata[k][i] = (uint8_t)(i * 7 + k * 31 + (i >> 8));
    tl_gguf_w_tensor(w, "a.f32", TL_TYPE_F32, 1, (int64_t[]){7}, tdata[0]);               /* 28 B: forces padding */
    tl_gguf_w_tensor(w, "b.f16", TL_TYPE_F16, 2, (int64_t[]){5, 3}, tdata[1]);            /* 30 B */
    tl_gguf_w_tensor(w, "c.q8_0", TL_TYPE_Q8_0, 2, (int64_t[]){64, 2}, tdata[2]);         /* 136 B */
    tl_gguf_w_tensor(w, "d.q4_K", TL_TYPE_Q4_K, 3, (int64_t[]){256, 1, 2}, tdata[3]);     /* 288 B */
    tl_gguf_w_tensor(w, "e.bf16", TL_TYPE_BF16, 4, (int64_t[]){2, 3, 1, 2}, tdata[4]);    /* 24 B */
}

static const struct { const char *name; tl_type type; uint32_t n_dims; int64_t ne[4]; uint64_t nbytes; } expect_t[5] = {
    {"a.f32", TL_TYPE_F32, 1, {7, 1, 1, 1}, 28},     {"b.f16", TL_TYPE_F16, 2, {5, 3, 1, 1}, 30},
    {"c.q8_0", TL_TYPE_Q8_0, 2, {64, 2, 1, 1}, 136}, {"d.q4_K", TL_TYPE_Q4_K, 3, {256, 1, 2, 1}, 288},
    {"e.bf16", TL_TYPE_BF16, 4, {2, 3, 1, 2}, 24},
};

static void check_test_tensors(const tl_gguf *g, uint32_t align) {
    CHECK(tl_gguf_n_tensors(g) == 5);
    for (int k = 0; k < 5 && k < tl_gguf_n_tensors(g); k++) {
        const tl_gguf_tensor *t = tl_gguf_tensor_at(g, k);
        CHECKF(strcmp(t->name, expect_t[k].name) == 0 && t->type == expect_t[k].type && t->n_dims == expect_t[k].n_dims &&
               memcmp(t->ne, expect_t[k].ne, sizeof t->ne) == 0 && t->nbytes == expect_t[k].nbytes,
               "tensor %d (%s)", k, t->name);
        CHECK(t->offset % align == 0);
        CHECK(((uintptr_t)t->data) % align == 0); /* mmap is page aligned, so data must be too */
        CHECK(memcmp(t->data, tdata[k], t->nbytes) == 0);
        CHECK(tl_gguf_find_tensor(g, expect_t[k].name) == t);
    }
}

static void test_round_trip(void) {
    tl_gguf_writer *w = tl_gguf_writer_new();
    /* every scalar type, at its edges, through tl_gguf_w_value */
    tl_gguf_value sc[] = {
        vu(TL_GGUF_UINT8, 255),          vi(TL_GGUF_INT8, -128),           vu(TL_GGUF_UINT16, 65535),
        vi(TL_GGUF_INT16, -32768),       vu(TL_GGUF_UINT32, 4294967295u),  vi(TL_GGUF_INT32, INT32_MIN),
        vf(TL_GGUF_FLOAT32, -1.5),       vu(TL_GGUF_BOOL, 1),              vs("h\0i \xc3\xa9", 6),
        vu(TL_GGUF_UINT64, UINT64_MAX),  vi(TL_GGUF_INT64, INT64_MIN),     vf(TL_GGUF_FLOAT64, M_PI),
        vs("", 0),                       vu(TL_GGUF_BOOL, 0),              vf(TL_GGUF_FLOAT32, INFINITY),
    };
    int n_sc = (int)(sizeof sc / sizeof sc[0]);
    char key[64];
    for (int i = 0; i < n_sc; i++) {
        snprintf(key, sizeof key, "scalar.%d.%s", i, tl_gguf_vtype_name(sc[i].type));
        tl_gguf_w_value(w, key, &sc[i]);
    }
    /* the typed setters */
    tl_gguf_w_u32(w, "w.u32", 123456789);
    tl_gguf_w_i32(w, "w.i32", -42);
    tl_gguf_w_u64(w, "w.u64", 1ull << 40);
    tl_gguf_w_f32(w, "w.f32", 0.1f);
    tl_gguf_w_bool(w, "w.bool", true);
    tl_gguf_w_str(w, "general.name", "round trip");
    /* arrays of every numeric type */
    uint8_t a_u8[] = {0, 1, 255};
    int8_t a_i8[] = {-1, 127, -128};
    uint16_t a_u16[] = {1, 65535};
    int16_t a_i16[] = {-300, 300};
    uint32_t a_u32[] = {7, 0xdeadbeef, 0};
    int32_t a_i32[] = {-5, 5, INT32_MAX};
    float a_f32[] = {1.25f, -0.0f, 3e38f};
    uint8_t a_bool[] = {1, 0, 1, 1};
    uint64_t a_u64[] = {UINT64_MAX, 0};
    int64_t a_i64[] = {INT64_MIN, -1, 99};
    double a_f64[] = {1e300, -2.5};
    tl_gguf_w_arr(w, "arr.u8", TL_GGUF_UINT8, a_u8, 3);
    tl_gguf_w_arr(w, "arr.i8", TL_GGUF_INT8, a_i8, 3);
    tl_gguf_w_arr(w, "arr.u16", TL_GGUF_UINT16, a_u16, 2);
    tl_gguf_w_arr(w, "arr.i16", TL_GGUF_INT16, a_i16, 2);
    tl_gguf_w_arr(w, "arr.u32", TL_GGUF_UINT32, a_u32, 3);
    tl_gguf_w_arr(w, "arr.i32", TL_GGUF_INT32, a_i32, 3);
    tl_gguf_w_arr(w, "arr.f32", TL_GGUF_FLOAT32, a_f32, 3);
    tl_gguf_w_arr(w, "arr.bool", TL_GGUF_BOOL, a_bool, 4);
    tl_gguf_w_arr(w, "arr.u64", TL_GGUF_UINT64, a_u64, 2);
    tl_gguf_w_arr(w, "arr.i64", TL_GGUF_INT64, a_i64, 3);
    tl_gguf_w_arr(w, "arr.f64", TL_GGUF_FLOAT64, a_f64, 2);
    tl_gguf_w_arr(w, "arr.empty", TL_GGUF_INT32, NULL, 0);
    const char *strs[] = {"alpha", "", "g\xc3\xa4mma", "with\0nul"};
    uint64_t lens[] = {5, 0, 6, 8};
    tl_gguf_w_arr_str(w, "arr.str", strs, lens, 4);
    tl_gguf_w_arr_str(w, "arr.str0", strs, NULL, 3);
    /* nested: [[1,2,3],[],[65535]] of u16; [["x","yz"],[]]; [[[ -7 ]], []]; an empty array of arrays */
    uint16_t n1[] = {1, 2, 3}, n3[] = {65535};
    tl_gguf_value inner_u16[] = {varr(TL_GGUF_UINT16, 3, NULL, n1), varr(TL_GGUF_UINT16, 0, NULL, NULL),
                                 varr(TL_GGUF_UINT16, 1, NULL, n3)};
    tl_gguf_value nested_u16 = varr(TL_GGUF_ARRAY, 3, inner_u16, NULL);
    tl_gguf_w_value(w, "nest.u16", &nested_u16);
    tl_gguf_value s_elems[] = {vs("x", 1), vs("yz", 2)};
    tl_gguf_value inner_str[] = {varr(TL_GGUF_STRING, 2, s_elems, NULL), varr(TL_GGUF_STRING, 0, NULL, NULL)};
    tl_gguf_value nested_str = varr(TL_GGUF_ARRAY, 2, inner_str, NULL);
    tl_gguf_w_value(w, "nest.str", &nested_str);
    int64_t m7[] = {-7};
    tl_gguf_value lvl3[] = {varr(TL_GGUF_INT64, 1, NULL, m7)};
    tl_gguf_value lvl2[] = {varr(TL_GGUF_ARRAY, 1, lvl3, NULL), varr(TL_GGUF_ARRAY, 0, NULL, NULL)};
    tl_gguf_value nested3 = varr(TL_GGUF_ARRAY, 2, lvl2, NULL);
    tl_gguf_w_value(w, "nest.3deep", &nested3);
    tl_gguf_value nested_empty = varr(TL_GGUF_ARRAY, 0, NULL, NULL);
    tl_gguf_w_value(w, "nest.empty", &nested_empty);
    add_test_tensors(w);

    const char *path = tmp_path("rt.gguf");
    tl_error err = {0};
    int rc = tl_gguf_write(w, path, &err);
    CHECKF(rc == 0, "%s", err.msg);
    char tmpname[600];
    snprintf(tmpname, sizeof tmpname, "%s.tmp.%ld", path, (long)getpid());
    CHECK(!file_exists(tmpname));
    tl_gguf_writer_free(w);

    /* independent look at the header bytes */
    size_t flen = 0;
    uint8_t *raw = (uint8_t *)tl_test_read_file(path, &flen);
    CHECK(raw && flen > 24 && memcmp(raw, "GGUF\3\0\0\0", 8) == 0);
    if (raw) {
        uint64_t nt, nkv;
        memcpy(&nt, raw + 8, 8);
        memcpy(&nkv, raw + 16, 8);
        CHECK(nt == 5 && nkv == (uint64_t)n_sc + 6 + 14 + 4);
    }

    tl_gguf *g = tl_gguf_open(path, &err);
    CHECKF(g != NULL, "%s", err.msg);
    if (!g) {
        free(raw);
        return;
    }
    CHECK(tl_gguf_version(g) == 3 && tl_gguf_alignment(g) == 32);
    for (int i = 0; i < n_sc; i++) {
        snprintf(key, sizeof key, "scalar.%d.%s", i, tl_gguf_vtype_name(sc[i].type));
        const tl_gguf_value *v = tl_gguf_find(g, key);
        CHECKF(v && value_eq(v, &sc[i]), "%s", key);
        size_t klen;
        CHECK(tl_gguf_key_name(g, i, &klen) && klen == strlen(key) && memcmp(tl_gguf_key_name(g, i, NULL), key, klen) == 0);
    }
    uint32_t u;
    int64_t i64;
    float f;
    bool b;
    char *s = NULL;
    CHECK(tl_gguf_get_u32(g, "w.u32", &u, &err) == 0 && u == 123456789);
    CHECK(tl_gguf_get_i64(g, "w.i32", &i64, &err) == 0 && i64 == -42);
    CHECK(tl_gguf_get_i64(g, "w.u64", &i64, &err) == 0 && i64 == (1ll << 40));
    CHECK(tl_gguf_get_f32(g, "w.f32", &f, &err) == 0 && f == 0.1f);
    CHECK(tl_gguf_get_bool(g, "w.bool", &b, &err) == 0 && b);
    CHECK(tl_gguf_get_str(g, "general.name", &s, &err) == 0 && s && strcmp(s, "round trip") == 0);
    free(s);
    /* conversions and range errors */
    CHECK(tl_gguf_get_u32(g, "scalar.0.uint8", &u, &err) == 0 && u == 255);
    CHECK(tl_gguf_get_u32(g, "scalar.3.int16", &u, &err) == -1);
    CHECKF(strstr(err.msg, "value -32768 (int16) does not fit in uint32") && strstr(err.msg, "'scalar.3.int16'"), "%s", err.msg);
    CHECK(tl_gguf_get_u32(g, "w.u64", &u, &err) == -1);
    CHECKF(strstr(err.msg, "does not fit in uint32"), "%s", err.msg);
    CHECK(tl_gguf_get_i64(g, "scalar.9.uint64", &i64, &err) == -1);
    CHECKF(strstr(err.msg, "does not fit in int64"), "%s", err.msg);
    CHECK(tl_gguf_get_i64(g, "scalar.10.int64", &i64, &err) == 0 && i64 == INT64_MIN);
    CHECK(tl_gguf_get_f32(g, "scalar.11.float64", &f, &err) == 0 && f == (float)M_PI);
    CHECK(tl_gguf_get_f32(g, "scalar.14.float32", &f, &err) == 0 && isinf(f));
    CHECK(tl_gguf_get_bool(g, "scalar.13.bool", &b, &err) == 0 && !b);
    CHECK(tl_gguf_get_i64(g, "w.f32", &i64, &err) == -1); /* floats don't become ints */
    CHECKF(strstr(err.msg, "expected int64, found float32"), "%s", err.msg);
    CHECK(tl_gguf_get_str(g, "scalar.8.string", &s, &err) == 0 && s && s[0] == 'h' && s[1] == 0);
    free(s);
    /* arrays */
    const tl_gguf_value *a = tl_gguf_find(g, "arr.i8");
    CHECK(a && a->v.arr.elem_type == TL_GGUF_INT8 && tl_gguf_arr_i64(a, 0) == -1 && tl_gguf_arr_i64(a, 2) == -128);
    a = tl_gguf_find(g, "arr.u8");
    CHECK(a && tl_gguf_arr_i64(a, 2) == 255);
    a = tl_gguf_find(g, "arr.i16");
    CHECK(a && tl_gguf_arr_i64(a, 0) == -300 && tl_gguf_arr_f64(a, 1) == 300.0);
    a = tl_gguf_find(g, "arr.u32");
    CHECK(a && tl_gguf_arr_i64(a, 1) == 0xdeadbeef);
    a = tl_gguf_find(g, "arr.i32");
    CHECK(a && tl_gguf_arr_i64(a, 2) == INT32_MAX);
    a = tl_gguf_find(g, "arr.f32");
    CHECK(a && tl_gguf_arr_f64(a, 0) == 1.25 && signbit(tl_gguf_arr_f64(a, 1)) && tl_gguf_arr_f64(a, 2) == (double)3e38f);
    a = tl_gguf_find(g, "arr.bool");
    CHECK(a && a->v.arr.n == 4 && tl_gguf_arr_i64(a, 0) == 1 && tl_gguf_arr_i64(a, 1) == 0);
    a = tl_gguf_find(g, "arr.u64");
    CHECK(a && (uint64_t)tl_gguf_arr_i64(a, 0) == UINT64_MAX);
    a = tl_gguf_find(g, "arr.i64");
    CHECK(a && tl_gguf_arr_i64(a, 0) == INT64_MIN && tl_gguf_arr_i64(a, 2) == 99);
    a = tl_gguf_find(g, "arr.f64");
    CHECK(a && tl_gguf_arr_f64(a, 0) == 1e300 && tl_gguf_arr_f64(a, 1) == -2.5 && tl_gguf_arr_i64(a, 0) == 0);
    a = tl_gguf_find(g, "arr.empty");
    CHECK(a && a->type == TL_GGUF_ARRAY && a->v.arr.n == 0 && tl_gguf_arr_i64(a, 0) == 0);
    a = tl_gguf_find(g, "arr.str");
    CHECK(a && a->v.arr.n == 4 && str_is(tl_gguf_arr_str(a, 0), "alpha") && tl_gguf_arr_str(a, 1).len == 0 &&
          str_is(tl_gguf_arr_str(a, 2), "g\xc3\xa4mma") && tl_gguf_arr_str(a, 3).len == 8 &&
          memcmp(tl_gguf_arr_str(a, 3).ptr, "with\0nul", 8) == 0);
    a = tl_gguf_find(g, "arr.str0");
    CHECK(a && a->v.arr.n == 3 && str_is(tl_gguf_arr_str(a, 2), "g\xc3\xa4mma"));
    a = tl_gguf_find(g, "nest.u16");
    CHECK(a && value_eq(a, &nested_u16));
    if (a && a->v.arr.n == 3) {
        CHECK(tl_gguf_arr_i64(&a->v.arr.elems[0], 2) == 3 && tl_gguf_arr_i64(&a->v.arr.elems[2], 0) == 65535);
        CHECK(a->v.arr.elems[1].v.arr.n == 0);
    }
    a = tl_gguf_find(g, "nest.str");
    CHECK(a && value_eq(a, &nested_str));
    if (a && a->v.arr.n == 2) CHECK(str_is(tl_gguf_arr_str(&a->v.arr.elems[0], 1), "yz"));
    a = tl_gguf_find(g, "nest.3deep");
    CHECK(a && value_eq(a, &nested3));
    if (a && a->v.arr.n == 2 && a->v.arr.elems[0].v.arr.n == 1)
        CHECK(tl_gguf_arr_i64(&a->v.arr.elems[0].v.arr.elems[0], 0) == -7);
    a = tl_gguf_find(g, "nest.empty");
    CHECK(a && value_eq(a, &nested_empty));
    check_test_tensors(g, 32);

    /* copy everything through copy_kv + w_tensor and compare the files byte for byte */
    tl_gguf_writer *w2 = tl_gguf_writer_new();
    for (int64_t i = 0; i < tl_gguf_n_kv(g); i++) tl_gguf_w_copy_kv(w2, g, i);
    for (int64_t i = 0; i < tl_gguf_n_tensors(g); i++) {
        const tl_gguf_tensor *t = tl_gguf_tensor_at(g, i);
        tl_gguf_w_tensor(w2, t->name, t->type, t->n_dims, t->ne, t->data);
    }
    const char *path2 = tmp_path("rt2.gguf");
    CHECKF(tl_gguf_write(w2, path2, &err) == 0, "%s", err.msg);
    tl_gguf_writer_free(w2);
    size_t flen2 = 0;
    char *raw2 = tl_test_read_file(path2, &flen2);
    CHECK(raw && raw2 && flen == flen2 && memcmp(raw, raw2, flen) == 0);
    free(raw2);
    free(raw);
    tl_gguf_close(g);
    unlink(path2);

    /* alignment 64 requested through general.alignment */
    w = tl_gguf_writer_new();
    tl_gguf_w_u32(w, "general.alignment", 64);
    add_test_tensors(w);
    CHECKF(tl_gguf_write(w, path, &err) == 0, "%s", err.msg);
    tl_gguf_writer_free(w);
    g = tl_gguf_open(path, &err);
    CHECKF(g && tl_gguf_alignment(g) == 64, "%s", err.msg);
    if (g) check_test_tensors(g, 64);
    tl_gguf_close(g);
    unlink(path);
}

/* A real file's metadata through copy_kv, tensors through w_tensor; reread identically. */
static void test_copy_real(const char *rel) {
    const char *path = tl_test_shared(rel);
    if (!tl_test_have(path)) return;
    tl_error err = {0};
    tl_gguf *g = tl_gguf_open(path, &err);
    CHECKF(g, "%s", err.msg);
    if (!g) return;
    tl_gguf_writer *w = tl_gguf_writer_new();
    for (int64_t i = 0; i < tl_gguf_n_kv(g); i++) tl_gguf_w_copy_kv(w, g, i);
    for (int64_t i = 0; i < tl_gguf_n_tensors(g); i++) {
        const tl_gguf_tensor *t = tl_gguf_tensor_at(g, i);
        tl_gguf_w_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data);
    }
    const char *out = tmp_path("copy.gguf");
    CHECKF(tl_gguf_write(w, out, &err) == 0, "%s", err.msg);
    tl_gguf_writer_free(w);
    tl_gguf *h = tl_gguf_open(out, &err);
    CHECKF(h, "%s", err.msg);
    if (h) {
        CHECK(tl_gguf_n_kv(h) == tl_gguf_n_kv(g) && tl_gguf_n_tensors(h) == tl_gguf_n_tensors(g));
        int bad_kv = 0, bad_t = 0;
        for (int64_t i = 0; i < tl_gguf_n_kv(g) && i < tl_gguf_n_kv(h); i++) {
            size_t la, lb;
            const char *ka = tl_gguf_key_name(g, i, &la), *kb = tl_gguf_key_name(h, i, &lb);
            if (la != lb || memcmp(ka, kb, la) != 0 || !value_eq(tl_gguf_kv_value(g, i), tl_gguf_kv_value(h, i))) bad_kv++;
        }
        for (int64_t i = 0; i < tl_gguf_n_tensors(g) && i < tl_gguf_n_tensors(h); i++) {
            const tl_gguf_tensor *a = tl_gguf_tensor_at(g, i), *b = tl_gguf_tensor_at(h, i);
            if (strcmp(a->name, b->name) || a->type != b->type || a->n_dims != b->n_dims ||
                memcmp(a->ne, b->ne, sizeof a->ne) || a->nbytes != b->nbytes || memcmp(a->data, b->data, a->nbytes))
                bad_t++;
        }
        CHECKF(bad_kv == 0 && bad_t == 0, "%s: %d keys and %d tensors differ after copy", rel, bad_kv, bad_t);
        /* These files were written by other converters with the same layout rules (alignment
         * 32, tensors packed in order, each padded), so the copy must be byte-identical. */
        CHECKF(files_equal(out, path), "%s: copy differs from the original", rel);
        tl_gguf_close(h);
    }
    tl_gguf_close(g);
    unlink(out);
}

/* ---------------------------------------------------------------- bad inputs */

/* Independent byte builder for hand-made files. */
typedef struct {
    uint8_t *p;
    size_t n, cap;
} bb;
static void bb_put(bb *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void bb_u32(bb *b, uint32_t v) { bb_put(b, &v, 4); }
static void bb_u64(bb *b, uint64_t v) { bb_put(b, &v, 8); }
static void bb_str(bb *b, const char *s) { bb_u64(b, strlen(s)); bb_put(b, s, strlen(s)); }
static void bb_pad(bb *b, size_t a) { while (b->n % a) bb_put(b, "", 1); }

/* Knobs for a small file: 3 keys (general.alignment, a string, an array of strings) and
 * 2 f32 tensors. Each test changes one thing. */
typedef struct {
    const char *magic;
    uint32_t version;
    int64_t n_kv_override, n_tensors_override;  /* -1: real count */
    uint32_t align_type, align_value;
    uint64_t arr_n_override;    /* 0: real count */
    uint64_t strlen_override;   /* 0: real length */
    uint32_t value_type;        /* of key 2 (the string) */
    const char *key2;           /* name of key 2 */
    uint32_t arr_elem_type;
    int nest;                   /* >0: key 3 becomes arrays nested this deep */
    uint32_t n_dims;
    uint64_t ne0, ne1;
    uint32_t type;
    uint64_t off1;              /* offset of tensor 1 (tensor 0 at 0) */
    const char *name1;
} spec;

static spec base_spec(void) {
    return (spec){.magic = "GGUF", .version = 3, .n_kv_override = -1, .n_tensors_override = -1,
                  .align_type = TL_GGUF_UINT32, .align_value = 32, .value_type = TL_GGUF_STRING,
                  .key2 = "general.name", .arr_elem_type = TL_GGUF_STRING, .n_dims = 2, .ne0 = 4,
                  .ne1 = 2, .type = TL_TYPE_F32, .off1 = 32, .name1 = "t1"};
}

static bb build(const spec *s) {
    bb b = {0};
    bb_put(&b, s->magic, 4);
    bb_u32(&b, s->version);
    bb_u64(&b, s->n_tensors_override >= 0 ? (uint64_t)s->n_tensors_override : 2);
    bb_u64(&b, s->n_kv_override >= 0 ? (uint64_t)s->n_kv_override : 3);
    bb_str(&b, "general.alignment");
    bb_u32(&b, s->align_type);
    bb_u32(&b, s->align_value);
    bb_str(&b, s->key2);
    bb_u32(&b, s->value_type);
    bb_u64(&b, s->strlen_override ? s->strlen_override : 5);
    bb_put(&b, "hello", 5);
    bb_str(&b, "tokenizer.ggml.tokens");
    bb_u32(&b, TL_GGUF_ARRAY);
    for (int d = 0; d < s->nest; d++) {
        bb_u32(&b, TL_GGUF_ARRAY);
        bb_u64(&b, 1);
    }
    bb_u32(&b, s->arr_elem_type);
    bb_u64(&b, s->arr_n_override ? s->arr_n_override : 2);
    bb_str(&b, "ab");
    bb_str(&b, "c");
    /* tensor 0: f32 [8] at 0 (32 bytes); tensor 1 per spec */
    bb_str(&b, "t0");
    bb_u32(&b, 1);
    bb_u64(&b, 8);
    bb_u32(&b, TL_TYPE_F32);
    bb_u64(&b, 0);
    bb_str(&b, s->name1);
    bb_u32(&b, s->n_dims);
    for (uint32_t d = 0; d < s->n_dims && d < 6; d++) bb_u64(&b, d == 0 ? s->ne0 : d == 1 ? s->ne1 : 1);
    bb_u32(&b, s->type);
    bb_u64(&b, s->off1);
    bb_pad(&b, 32);
    for (int i = 0; i < 64; i++) bb_put(&b, "\x01", 1); /* 64 bytes: t0 (32) + t1 f32 4x2 (32) */
    return b;
}

/* Build, open, and expect success (want == NULL) or an error containing want. */
static void expect_spec(const spec *s, const char *want, int line) {
    bb b = build(s);
    tl_error err = {{0}};
    void *copy;
    tl_gguf *g = open_copy(b.p, b.n, "bad.gguf", &err, &copy);
    if (!want) {
        CHECKF(g != NULL, "line %d: %s", line, err.msg);
    } else {
        CHECKF(g == NULL && starts_with(err.msg, "bad.gguf: ") && strstr(err.msg, want),
               "line %d: want '%s', got '%s'", line, want, g ? "(opened)" : err.msg);
    }
    tl_gguf_close(g);
    free(copy);
    free(b.p);
}
#define EXPECT(s, want) expect_spec(&(s), want, __LINE__)

static void test_bad_inputs(void) {
    spec s = base_spec();
    EXPECT(s, NULL);
    {   /* sanity of the base file */
        bb b = build(&s);
        tl_error err;
        tl_gguf *g = tl_gguf_open_memory(b.p, b.n, "ok.gguf", &err);
        const tl_gguf_tensor *t1 = g ? tl_gguf_find_tensor(g, "t1") : NULL;
        CHECK(t1 && t1->ne[0] == 4 && t1->ne[1] == 2 && t1->nbytes == 32 && (const uint8_t *)t1->data == b.p + b.n - 32);
        CHECK(g && !tl_gguf_mapped(g)); /* the caller's buffer: never released */
        tl_gguf_close(g);
        free(b.p);
    }
    s = base_spec(); s.magic = "GGUX"; EXPECT(s, "bad magic 'GGUX' (not a GGUF file)");
    s = base_spec(); s.magic = "\x00\x01GG"; EXPECT(s, "bad magic '\\x00\\x01GG'");
    s = base_spec(); s.version = 2; EXPECT(s, NULL);
    s = base_spec(); s.version = 1; EXPECT(s, "GGUF version 1 is not supported");
    s = base_spec(); s.version = 4; EXPECT(s, "unsupported GGUF version 4");
    s = base_spec(); s.version = 0x03000000; EXPECT(s, "big-endian");
    s = base_spec(); s.n_kv_override = 1ll << 62; EXPECT(s, "4611686018427387904 keys need at least 13 bytes each");
    s = base_spec(); s.n_kv_override = 50; EXPECT(s, "50 keys need at least");
    s = base_spec(); s.n_tensors_override = 1ll << 40; EXPECT(s, "1099511627776 tensors need at least 32 bytes each");
    {   /* each count alone fits, together they cannot */
        bb b = build(&s);
        s = base_spec(); s.n_tensors_override = (int64_t)(b.n - 24) / 32;
        free(b.p);
        EXPECT(s, "3 keys and");
    }
    s = base_spec(); s.n_kv_override = 4; EXPECT(s, "bad.gguf: "); /* reads tensor info as a key: fails somewhere */
    s = base_spec(); s.arr_n_override = 1ull << 32;
    EXPECT(s, "key 'tokenizer.ggml.tokens': array of 4294967296 strings needs at least 34359738368 bytes, file has");
    s = base_spec(); s.arr_n_override = UINT64_MAX; EXPECT(s, "needs more than 2^64 bytes");
    s = base_spec(); s.arr_n_override = 3; s.arr_elem_type = TL_GGUF_UINT64; s.arr_n_override = 1ull << 61;
    EXPECT(s, "array of 2305843009213693952 uint64 values needs");
    s = base_spec(); s.arr_elem_type = 13; EXPECT(s, "unknown array element type 13");
    s = base_spec(); s.nest = 3; EXPECT(s, NULL);
    s = base_spec(); s.nest = 40; EXPECT(s, "nested more than");
    s = base_spec(); s.strlen_override = 1ull << 63;
    EXPECT(s, "reading key 'general.name' (string: 9223372036854775808 bytes at offset");
    s = base_spec(); s.value_type = 13; EXPECT(s, "key 'general.name': unknown value type 13 at byte");
    s = base_spec(); s.key2 = "general.alignment"; EXPECT(s, "duplicate key 'general.alignment' (entries 0 and 1)");
    s = base_spec(); s.align_value = 48; EXPECT(s, "key 'general.alignment': 48 is not a power of two");
    s = base_spec(); s.align_value = 0; EXPECT(s, "0 is not a power of two");
    s = base_spec(); s.align_type = TL_GGUF_INT32; EXPECT(s, "key 'general.alignment': expected uint32, found int32");
    s = base_spec(); s.align_value = 16; s.off1 = 16; EXPECT(s, NULL); /* 16-aligned offset OK under alignment 16 */
    s = base_spec(); s.off1 = 36; EXPECT(s, "tensor 't1': data offset 36 is not a multiple of the alignment 32");
    s = base_spec(); s.off1 = 64; EXPECT(s, "tensor 't1': data offset 64 + 32 bytes past end of file");
    s = base_spec(); s.off1 = UINT64_MAX - 31; EXPECT(s, "past end of file");
    s = base_spec(); s.off1 = 0; EXPECT(s, NULL); /* overlapping tensors are allowed */
    s = base_spec(); s.type = 99; EXPECT(s, "tensor 't1': unknown type 99");
    s = base_spec(); s.type = 4; EXPECT(s, "unknown type 4"); /* removed q4_2 */
    s = base_spec(); s.n_dims = 0; EXPECT(s, "tensor 't1': n_dims 0 (must be 1..4)");
    s = base_spec(); s.n_dims = 5; EXPECT(s, "tensor 't1': n_dims 5 (must be 1..4)");
    s = base_spec(); s.ne1 = 0; EXPECT(s, "tensor 't1': dimension 1 is 0");
    s = base_spec(); s.ne0 = 0; EXPECT(s, "dimension 0 is 0");
    s = base_spec(); s.ne0 = 1ull << 32; s.ne1 = 1ull << 32; EXPECT(s, "tensor 't1': element count overflows");
    s = base_spec(); s.ne0 = 1ull << 62; s.ne1 = 1; EXPECT(s, "byte size overflows");
    s = base_spec(); s.ne0 = 1ull << 63; EXPECT(s, "overflows");
    s = base_spec(); s.ne0 = 4; s.ne1 = 1ull << 40; EXPECT(s, "past end of file");
    s = base_spec(); s.type = TL_TYPE_Q4_0; s.ne0 = 33; s.ne1 = 1;
    EXPECT(s, "tensor 't1': ne[0] = 33 is not a multiple of the q4_0 block size 32");
    s = base_spec(); s.type = TL_TYPE_Q4_0; s.ne0 = 32; s.ne1 = 1; EXPECT(s, NULL); /* 18 bytes fit */
    s = base_spec(); s.name1 = "t0"; EXPECT(s, "duplicate tensor name 't0' (tensor infos 0 and 1)");

    /* direct: tiny and empty buffers, missing file, a directory */
    tl_error err = {{0}};
    void *copy;
    tl_gguf *g = open_copy("GGUF\3\0\0\0\0\0", 10, "bad.gguf", &err, &copy);
    CHECKF(!g && strstr(err.msg, "bad.gguf: truncated at byte 10 reading header (tensor count: 8 bytes at offset 8)"),
           "%s", err.msg);
    free(copy);
    g = open_copy("GG", 2, "bad.gguf", &err, &copy);
    CHECKF(!g && strstr(err.msg, "truncated at byte 2 reading header (magic"), "%s", err.msg);
    free(copy);
    g = tl_gguf_open_memory(NULL, 0, "empty.gguf", &err);
    CHECKF(!g && strstr(err.msg, "empty.gguf: empty file"), "%s", err.msg);
    g = tl_gguf_open(tmp_path("does-not-exist.gguf"), &err);
    CHECKF(!g && strstr(err.msg, "does-not-exist.gguf: cannot open"), "%s", err.msg);
    g = tl_gguf_open(tmp_dir, &err);
    CHECKF(!g && strstr(err.msg, "not a regular file"), "%s", err.msg);
    {   /* a key name cut short: the message says which key and which field */
        bb b = {0};
        bb_put(&b, "GGUF", 4);
        bb_u32(&b, 3);
        bb_u64(&b, 0);
        bb_u64(&b, 2);
        bb_str(&b, "a");
        bb_u32(&b, TL_GGUF_UINT8);
        bb_put(&b, "\x05", 1);
        bb_u64(&b, 1000); /* key 1's name claims 1000 bytes */
        bb_put(&b, "abcdefghijklmnopqrstuvwxyz", 26);
        g = open_copy(b.p, b.n, "x.gguf", &err, &copy);
        CHECKF(!g && strstr(err.msg, "x.gguf: truncated at byte 72 reading key 1 (name: 1000 bytes at offset 46)"), "%s", err.msg);
        free(copy);
        free(b.p);
    }

    /* writer errors are reported by tl_gguf_write, and leave no file behind */
    struct {
        int which;
        const char *want;
    } wcases[] = {
        {0, "duplicate key 'k'"},
        {1, "duplicate tensor name 't'"},
        {2, "tensor 'q': ne[0] = 31 is not a multiple of the q8_0 block size 32"},
        {3, "general.alignment': 24 is not a power of two"},
        {4, "tensor 'z': dimension 1 is 0"},
        {5, "tensor 'u': unknown type 99"},
        {6, "cannot write arrays of string"},
        {7, "key 'general.alignment' must be uint32"},
        {8, "does not fit in uint8"},
        {9, "key 'general.alignment' must be uint32, not uint64"},
    };
    for (size_t c = 0; c < sizeof wcases / sizeof wcases[0]; c++) {
        tl_gguf_writer *w = tl_gguf_writer_new();
        float data[64] = {0};
        switch (wcases[c].which) {
        case 0: tl_gguf_w_u32(w, "k", 1); tl_gguf_w_str(w, "k", "x"); break;
        case 1:
            tl_gguf_w_tensor(w, "t", TL_TYPE_F32, 1, (int64_t[]){4}, data);
            tl_gguf_w_tensor(w, "t", TL_TYPE_F32, 1, (int64_t[]){4}, data);
            break;
        case 2: tl_gguf_w_tensor(w, "q", TL_TYPE_Q8_0, 1, (int64_t[]){31}, data); break;
        case 3: tl_gguf_w_u32(w, "general.alignment", 24); break;
        case 4: tl_gguf_w_tensor(w, "z", TL_TYPE_F32, 2, (int64_t[]){4, 0}, data); break;
        case 5: tl_gguf_w_tensor(w, "u", (tl_type)99, 1, (int64_t[]){4}, data); break;
        case 6: tl_gguf_w_arr(w, "s", TL_GGUF_STRING, data, 1); break;
        case 7: tl_gguf_w_u64(w, "x", 1); { tl_gguf_value v = vu(TL_GGUF_UINT64, 64); tl_gguf_w_value(w, "general.alignment", &v); } break;
        case 8: { tl_gguf_value v = vu(TL_GGUF_UINT8, 256); tl_gguf_w_value(w, "b", &v); } break;
        case 9: tl_gguf_w_u64(w, "general.alignment", 64); break;
        }
        const char *out = tmp_path("werr.gguf");
        int rc = tl_gguf_write(w, out, &err);
        CHECKF(rc == -1 && starts_with(err.msg, out) && strstr(err.msg, wcases[c].want), "case %zu: %s", c, err.msg);
        CHECK(!file_exists(out));
        tl_gguf_writer_free(w);
    }
    {   /* unwritable destination: error, no temp file left */
        tl_gguf_writer *w = tl_gguf_writer_new();
        tl_gguf_w_u32(w, "a", 1);
        CHECK(tl_gguf_write(w, tmp_path("no/such/dir/x.gguf"), &err) == -1 && strstr(err.msg, "cannot write in"));
        /* onto a directory: refused before a temp file is made; none is left either way */
        const char *dirpath = tmp_path("adir");
        mkdir(dirpath, 0755);
        char sub[600];
        snprintf(sub, sizeof sub, "%s/f", dirpath);
        FILE *f = fopen(sub, "w");
        if (f) fclose(f);
        CHECK(tl_gguf_write(w, dirpath, &err) == -1);
        char tmpname[600];
        snprintf(tmpname, sizeof tmpname, "%s.tmp.%ld", dirpath, (long)getpid());
        CHECK(!file_exists(tmpname));
        unlink(sub);
        rmdir(dirpath);
        tl_gguf_writer_free(w);
    }
}

/* ---------------------------------------------------------------- truncation */

/* Cuts at every byte below every_byte_upto, then every `stride` bytes up to 300000, then
 * every big_stride bytes to the end. */
static void truncate_file(const char *rel, size_t every_byte_upto, size_t stride, size_t big_stride) {
    const char *path = tl_test_shared(rel);
    if (!tl_test_have(path)) return;
    size_t n = 0;
    uint8_t *file = (uint8_t *)tl_test_read_file(path, &n);
    CHECK(file != NULL);
    if (!file) return;
    int bad = 0, cuts = 0;
    char first_bad[600] = "";
    uint8_t *buf = malloc(n);
    for (size_t cut = 0; cut < n; cut += cut < every_byte_upto ? 1 : cut < 300000 ? stride : big_stride) {
        /* exact-size copy for small cuts (overreads are caught); large cuts share the file
         * buffer to keep the test fast */
        const uint8_t *p = file;
        if (cut <= 300000) {
            memcpy(buf + n - cut, file, cut);
            p = buf + n - cut;
        }
        tl_error err = {{0}};
        tl_gguf *g = tl_gguf_open_memory(p, cut, "cut.gguf", &err);
        cuts++;
        /* Every cut must fail: the last tensor ends exactly at the end of these files. */
        bool ok = !g && starts_with(err.msg, "cut.gguf: ") &&
                  (strstr(err.msg, "truncated at byte") || strstr(err.msg, "past end of file") ||
                   strstr(err.msg, "need at least") || strstr(err.msg, "needs at least") || strstr(err.msg, "empty file"));
        if (!ok && !bad++) snprintf(first_bad, sizeof first_bad, "cut %zu: %s", cut, g ? "(opened)" : err.msg);
        tl_gguf_close(g);
    }
    CHECKF(bad == 0, "%s: %d of %d cuts wrong; first: %s", rel, bad, cuts, first_bad);
    /* the whole file still opens */
    tl_error err;
    tl_gguf *g = tl_gguf_open_memory(file, n, "whole.gguf", &err);
    CHECKF(g, "%s", err.msg);
    tl_gguf_close(g);
    free(buf);
    free(file);
}

/* ---------------------------------------------------------------- byte flips */

static uint64_t rng_next(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static void test_byte_flips(void) {
    /* small synthetic file with every kind of value and a few tensors */
    tl_gguf_writer *w = tl_gguf_writer_new();
    tl_gguf_w_str(w, "general.name", "fuzz");
    tl_gguf_w_u32(w, "u32", 5);
    tl_gguf_w_f32(w, "f32", 2.0f);
    const char *strs[] = {"a", "bc", "def"};
    tl_gguf_w_arr_str(w, "strs", strs, NULL, 3);
    int16_t i16[] = {1, -2, 3};
    tl_gguf_w_arr(w, "i16", TL_GGUF_INT16, i16, 3);
    uint8_t n1[] = {9, 8};
    tl_gguf_value inner[] = {varr(TL_GGUF_UINT8, 2, NULL, n1), varr(TL_GGUF_UINT8, 0, NULL, NULL)};
    tl_gguf_value nest = varr(TL_GGUF_ARRAY, 2, inner, NULL);
    tl_gguf_w_value(w, "nest", &nest);
    float d[64];
    for (int i = 0; i < 64; i++) d[i] = (float)i;
    tl_gguf_w_tensor(w, "x", TL_TYPE_F32, 2, (int64_t[]){4, 2}, d);
    tl_gguf_w_tensor(w, "y", TL_TYPE_Q8_0, 1, (int64_t[]){32}, d);
    tl_gguf_w_tensor(w, "z", TL_TYPE_F16, 3, (int64_t[]){2, 2, 2}, d);
    const char *path = tmp_path("flip.gguf");
    tl_error err;
    CHECKF(tl_gguf_write(w, path, &err) == 0, "%s", err.msg);
    tl_gguf_writer_free(w);
    size_t n = 0;
    uint8_t *orig = (uint8_t *)tl_test_read_file(path, &n);
    unlink(path);
    CHECK(orig != NULL);
    if (!orig) return;
    uint64_t rng = 0x9e3779b97f4a7c15ull, sum = 0;
    int opened = 0, failed = 0, bad = 0, iters = 4000;
    for (int it = 0; it < iters; it++) {
        uint8_t *buf = malloc(n);
        memcpy(buf, orig, n);
        int flips = 1 + (int)(rng_next(&rng) % 4);
        for (int k = 0; k < flips; k++) {
            uint64_t r = rng_next(&rng);
            size_t at = (size_t)(r % n);
            /* mostly within the header region, where the structure lives */
            if (r & (1ull << 40)) at = (size_t)(r % TL_MIN(n, (size_t)400));
            switch ((r >> 50) % 4) {
            case 0: buf[at] ^= (uint8_t)(1u << ((r >> 45) % 8)); break;
            case 1: buf[at] = (uint8_t)(r >> 32); break;
            case 2: buf[at] = 0xff; break;
            default: buf[at] = 0; break;
            }
        }
        size_t len = (rng_next(&rng) % 8 == 0) ? (size_t)(rng_next(&rng) % n) : n;
        uint8_t *exact = malloc(len ? len : 1);
        memcpy(exact, buf, len);
        free(buf);
        tl_gguf *g = tl_gguf_open_memory(exact, len, "flip.gguf", &err);
        if (g) {
            opened++;
            if (!walk_all(g, exact, len, &sum)) bad++;
        } else {
            failed++;
            if (!starts_with(err.msg, "flip.gguf: ")) bad++;
        }
        tl_gguf_close(g);
        free(exact);
    }
    CHECKF(bad == 0, "%d of %d byte-flip runs gave bad results", bad, iters);
    CHECK(opened > 0 && failed > 0); /* both outcomes exercised */
    printf("byte flips: %d iterations, %d opened, %d refused (checksum %" PRIu64 ")\n", iters, opened, failed, sum);
    free(orig);
}

int main(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/tl_test_gguf.%ld", (long)getpid());
    mkdir(tmp_dir, 0755);
    test_stories260k();
    test_tailor31m();
    test_round_trip();
    test_copy_real("models/stories260K.gguf");
    test_copy_real("models/tailor-test-31m.gguf");
    test_bad_inputs();
    truncate_file("models/stories260K.gguf", 16384, 4099, 4099);
    truncate_file("models/tailor-test-31m.gguf", 0, 997, 1000003);
    test_byte_flips();
    rmdir(tmp_dir);
    return tl_test_done();
}
