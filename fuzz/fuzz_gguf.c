/* fuzz_gguf.c: libFuzzer target for the GGUF reader. Opens the input with
 * tl_gguf_open_memory and, when it is accepted, walks every key, value (nested arrays
 * included), getter and tensor, checking that tensor data lies inside the input.
 * Build: cmake -DTL_FUZZ=ON (clang), or by hand:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined fuzz/fuzz_gguf.c src/model/gguf.c src/base/common.c src/cpu/quants.c -lm */
#include "../src/model/gguf.h"

#include <stdio.h>
#include <stdlib.h>

/* Bits of a double (a plain cast of a negative or huge value to uint64_t is undefined). */
static uint64_t dbits(double d) {
    uint64_t u;
    memcpy(&u, &d, 8);
    return u;
}

static uint64_t walk_value(const tl_gguf_value *v, int depth) {
    uint64_t h = (uint64_t)v->type;
    switch (v->type) {
    case TL_GGUF_STRING:
        for (uint64_t i = 0; i < v->v.str.len; i++) h = h * 31 + (unsigned char)v->v.str.ptr[i];
        return h;
    case TL_GGUF_ARRAY:
        for (uint64_t i = 0; i <= v->v.arr.n && i < 256; i++) { /* i == n: out of range, must be harmless */
            h += (uint64_t)tl_gguf_arr_i64(v, i) + dbits(tl_gguf_arr_f64(v, i)) + tl_gguf_arr_str(v, i).len;
            if (i < v->v.arr.n && v->v.arr.elems) h += walk_value(&v->v.arr.elems[i], depth + 1);
        }
        if (v->v.arr.n) h += (uint64_t)tl_gguf_arr_i64(v, v->v.arr.n - 1) + tl_gguf_arr_str(v, v->v.arr.n - 1).len;
        return h;
    default:
        return h + v->v.u64;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tl_error err;
    tl_gguf *g = tl_gguf_open_memory(data, size, "fuzz.gguf", &err);
    if (!g) {
        if (strncmp(err.msg, "fuzz.gguf: ", 11) != 0) abort(); /* every error names the file */
        return 0;
    }
    volatile uint64_t sink = 0;
    uint32_t u;
    int64_t i64;
    float f;
    bool b;
    char *s;
    char key[256];
    for (int64_t i = 0; i < tl_gguf_n_kv(g); i++) {
        size_t len;
        const char *k = tl_gguf_key_name(g, i, &len);
        const tl_gguf_value *v = tl_gguf_kv_value(g, i);
        sink += walk_value(v, 0);
        if (len >= sizeof key || memchr(k, 0, len)) continue;
        memcpy(key, k, len);
        key[len] = 0;
        if (tl_gguf_find(g, key) != v) abort(); /* keys are unique, so lookup must find this one */
        if (tl_gguf_get_u32(g, key, &u, &err) == 0) sink += u;
        if (tl_gguf_get_i64(g, key, &i64, &err) == 0) sink += (uint64_t)i64;
        if (tl_gguf_get_f32(g, key, &f, &err) == 0) sink += (uint64_t)(f != f);
        if (tl_gguf_get_bool(g, key, &b, &err) == 0) sink += b;
        s = NULL;
        if (tl_gguf_opt_str(g, key, &s, &err) == 0 && s) {
            sink += strlen(s);
            free(s);
        }
    }
    for (int64_t i = 0; i < tl_gguf_n_tensors(g); i++) {
        const tl_gguf_tensor *t = tl_gguf_tensor_at(g, i);
        const uint8_t *p = t->data;
        if (t->n_dims < 1 || t->n_dims > 4 || p < data || t->nbytes > size || p + t->nbytes > data + size) abort();
        if (tl_gguf_find_tensor(g, t->name) != t) abort();
        if (t->nbytes) sink += p[0] + p[t->nbytes - 1];
        for (int d = 0; d < 4; d++)
            if (t->ne[d] < 1) abort();
    }
    sink += tl_gguf_alignment(g) + tl_gguf_version(g);
    (void)sink;
    tl_gguf_close(g);
    return 0;
}
