/* gguf.c: GGUF v2/v3 reader (mmap or caller's buffer, every field bounds-checked) and writer
 * (temp file, fsync, rename).
 *
 * Layout (little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv, n_kv x (string key,
 * u32 value type, value), n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 type,
 * u64 offset), zero padding up to general.alignment, then the data section; tensor offsets
 * are relative to it. A string is u64 length + bytes (no NUL); an array is u32 element type,
 * u64 count, elements. v1 used 32-bit counts and is refused; v2 and v3 encode identically. */
#define _GNU_SOURCE
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DEPTH 16 /* arrays of arrays nested deeper than this are refused (bounds recursion) */
#define GGUF_MAX_COUNT ((uint64_t)INT32_MAX) /* keys / tensors: index slots are 32-bit */

/* ======================================================================================
 * Shared helpers: value types, little-endian access, a name -> index hash table
 * ====================================================================================== */

static const char *const vtype_names[TL_GGUF_NTYPES] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
    "bool",  "string", "array", "uint64", "int64", "float64",
};

const char *tl_gguf_vtype_name(tl_gguf_vtype t) {
    return (unsigned)t < TL_GGUF_NTYPES ? vtype_names[t] : "unknown";
}

/* Bytes of one element of a fixed-size type; 0 for string/array/unknown. */
static size_t scalar_size(tl_gguf_vtype t) {
    switch (t) {
    case TL_GGUF_UINT8: case TL_GGUF_INT8: case TL_GGUF_BOOL: return 1;
    case TL_GGUF_UINT16: case TL_GGUF_INT16: return 2;
    case TL_GGUF_UINT32: case TL_GGUF_INT32: case TL_GGUF_FLOAT32: return 4;
    case TL_GGUF_UINT64: case TL_GGUF_INT64: case TL_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static bool is_uint(tl_gguf_vtype t) {
    return t == TL_GGUF_UINT8 || t == TL_GGUF_UINT16 || t == TL_GGUF_UINT32 || t == TL_GGUF_UINT64;
}
static bool is_sint(tl_gguf_vtype t) {
    return t == TL_GGUF_INT8 || t == TL_GGUF_INT16 || t == TL_GGUF_INT32 || t == TL_GGUF_INT64;
}
static bool is_float(tl_gguf_vtype t) { return t == TL_GGUF_FLOAT32 || t == TL_GGUF_FLOAT64; }

/* Explicit byte assembly: correct on any host, and never an unaligned load. */
static uint64_t rd_le(const uint8_t *p, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Decode one packed scalar of type t at p into a value. */
static void decode_scalar(tl_gguf_vtype t, const uint8_t *p, tl_gguf_value *out) {
    size_t n = scalar_size(t);
    uint64_t bits = rd_le(p, n);
    out->type = t;
    switch (t) {
    case TL_GGUF_INT8: out->v.i64 = (int8_t)bits; break;
    case TL_GGUF_INT16: out->v.i64 = (int16_t)bits; break;
    case TL_GGUF_INT32: out->v.i64 = (int32_t)bits; break;
    case TL_GGUF_INT64: out->v.i64 = (int64_t)bits; break;
    case TL_GGUF_FLOAT32: {
        uint32_t b32 = (uint32_t)bits;
        float f;
        memcpy(&f, &b32, 4);
        out->v.f64 = f;
        break;
    }
    case TL_GGUF_FLOAT64: memcpy(&out->v.f64, &bits, 8); break;
    case TL_GGUF_BOOL: out->v.u64 = bits != 0; break;
    default: out->v.u64 = bits; break; /* unsigned ints */
    }
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }
static bool is_pow2(uint64_t x) { return x && !(x & (x - 1)); }

/* A printable, bounded rendering of a name from the file for error messages (input may be
 * arbitrary bytes): tl_escape, "..." when cut. */
static const char *show(char *dst, size_t cap, const char *s, uint64_t len) {
    if (tl_escape(dst, cap - 3, s, (size_t)len, NULL) < len) strcat(dst, "...");
    return dst;
}

/* Open-addressing hash from (bytes, len) to an index, for key/tensor lookup and duplicate
 * detection in O(1) (a file may hold many tensors). Entries point at strings that must
 * outlive the table. */
typedef struct {
    const char *s;
    uint64_t len;
    uint32_t idx;
    bool used;
} ix_slot;

typedef struct {
    ix_slot *slots;
    uint64_t cap, n; /* cap is a power of two (or 0) */
} name_index;

static uint64_t hash_bytes(const char *s, uint64_t len) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (uint64_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static ix_slot *ix_probe(const name_index *ix, const char *s, uint64_t len) {
    uint64_t m = ix->cap - 1;
    for (uint64_t i = hash_bytes(s, len) & m;; i = (i + 1) & m) {
        ix_slot *e = &ix->slots[i];
        if (!e->used || (e->len == len && memcmp(e->s, s, len) == 0)) return e;
    }
}

/* Returns 0 if added, 1 if the name is already present (*dup = its index), -1 if out of memory. */
static int ix_add(name_index *ix, const char *s, uint64_t len, uint32_t idx, uint32_t *dup) {
    if ((ix->n + 1) * 2 > ix->cap) { /* keep load <= 1/2 */
        uint64_t ncap = ix->cap ? ix->cap * 2 : 16;
        ix_slot *ns = calloc(ncap, sizeof *ns);
        if (!ns) return -1;
        name_index bigger = {ns, ncap, ix->n};
        for (uint64_t i = 0; i < ix->cap; i++)
            if (ix->slots[i].used) *ix_probe(&bigger, ix->slots[i].s, ix->slots[i].len) = ix->slots[i];
        free(ix->slots);
        *ix = bigger;
    }
    ix_slot *e = ix_probe(ix, s, len);
    if (e->used) {
        if (dup) *dup = e->idx;
        return 1;
    }
    *e = (ix_slot){s, len, idx, true};
    ix->n++;
    return 0;
}

static int64_t ix_find(const name_index *ix, const char *s, uint64_t len) {
    if (!ix->cap) return -1;
    const ix_slot *e = ix_probe(ix, s, len);
    return e->used ? (int64_t)e->idx : -1;
}

static void ix_free(name_index *ix) {
    free(ix->slots);
    *ix = (name_index){0};
}

/* ======================================================================================
 * Reader
 * ====================================================================================== */

typedef struct {
    tl_gguf_str key;
    tl_gguf_value val;
    uint64_t raw_start, raw_end; /* key + type + value bytes in the file (verbatim copies) */
} gguf_kv;

struct tl_gguf {
    char *path;             /* name used in messages */
    const uint8_t *data;    /* the whole file */
    uint64_t size;
    void *map;              /* non-NULL when we own an mmap of data */
    uint32_t version, alignment;
    uint64_t data_offset;   /* start of the data section */
    int64_t n_kv, n_tensors;
    gguf_kv *kv;
    tl_gguf_tensor *tensors;
    name_index kv_ix, tensor_ix;
};

/* Parse state: position plus a description of what is being read, for error messages. */
typedef struct {
    const uint8_t *p;
    uint64_t size, pos;
    const char *file;
    char ctx[160];  /* "header", "key 3", "key 'general.name'", "tensor info 5", ... */
    int64_t elem;   /* index of the array element being read, or -1 */
    tl_error *err;
} cursor;

static int need(cursor *c, uint64_t n, const char *what) {
    if (n <= c->size - c->pos) return 0;
    char el[48] = "";
    if (c->elem >= 0) snprintf(el, sizeof el, " of element %" PRId64, c->elem);
    return tl_fail(c->err, "%s: truncated at byte %" PRIu64 " reading %s (%s%s: %" PRIu64
                   " bytes at offset %" PRIu64 ")", c->file, c->size, c->ctx, what, el, n, c->pos);
}

static int rd_u32(cursor *c, uint32_t *out, const char *what) {
    if (need(c, 4, what)) return -1;
    *out = (uint32_t)rd_le(c->p + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int rd_u64(cursor *c, uint64_t *out, const char *what) {
    if (need(c, 8, what)) return -1;
    *out = rd_le(c->p + c->pos, 8);
    c->pos += 8;
    return 0;
}

static int rd_str(cursor *c, tl_gguf_str *out, const char *what) {
    uint64_t len;
    if (rd_u64(c, &len, what)) return -1;
    if (need(c, len, what)) return -1;
    out->ptr = (const char *)c->p + c->pos;
    out->len = len;
    c->pos += len;
    return 0;
}

static void free_value(tl_gguf_value *v) {
    if (v->type != TL_GGUF_ARRAY || !v->v.arr.elems) return;
    tl_gguf_value *e = (tl_gguf_value *)v->v.arr.elems;
    for (uint64_t i = 0; i < v->v.arr.n; i++) free_value(&e[i]);
    free(e);
    v->v.arr.elems = NULL;
}

static int rd_value(cursor *c, tl_gguf_vtype type, int depth, tl_gguf_value *out);

static int rd_array(cursor *c, int depth, tl_gguf_value *out) {
    uint32_t et;
    uint64_t n;
    if (rd_u32(c, &et, "array element type")) return -1;
    if (et >= TL_GGUF_NTYPES)
        return tl_fail(c->err, "%s: %s: unknown array element type %" PRIu32 " at byte %" PRIu64,
                       c->file, c->ctx, et, c->pos - 4);
    if (rd_u64(c, &n, "array length")) return -1;
    out->type = TL_GGUF_ARRAY;
    out->v.arr.elem_type = (tl_gguf_vtype)et;
    out->v.arr.n = n;
    out->v.arr.elems = NULL;
    out->v.arr.raw = NULL;
    if (et == TL_GGUF_ARRAY && depth + 1 >= GGUF_MAX_DEPTH)
        return tl_fail(c->err, "%s: %s: arrays nested more than %d deep at byte %" PRIu64,
                       c->file, c->ctx, GGUF_MAX_DEPTH, c->pos);
    /* Refuse counts the rest of the file cannot hold BEFORE allocating anything. */
    size_t esz = scalar_size((tl_gguf_vtype)et);
    uint64_t min_elem = esz ? esz : (et == TL_GGUF_STRING ? 8 : 12); /* u64 len | u32 type + u64 n */
    uint64_t left = c->size - c->pos;
    if (n > left / min_elem) {
        unsigned __int128 need_b = (unsigned __int128)n * min_elem;
        char nb[48];
        if (need_b > UINT64_MAX) snprintf(nb, sizeof nb, "more than 2^64");
        else snprintf(nb, sizeof nb, "at least %" PRIu64, (uint64_t)need_b);
        return tl_fail(c->err, "%s: %s: array of %" PRIu64 " %s%s needs %s bytes, file has %" PRIu64
                       " (%" PRIu64 " left at byte %" PRIu64 ")", c->file, c->ctx, n,
                       vtype_names[et], et == TL_GGUF_STRING || et == TL_GGUF_ARRAY ? "s" : " values",
                       nb, c->size, left, c->pos);
    }
    if (esz) { /* numbers/bools: point at the packed data */
        out->v.arr.raw = c->p + c->pos;
        c->pos += n * esz;
        return 0;
    }
    if (n == 0) return 0;
    tl_gguf_value *elems = calloc(n, sizeof *elems); /* zeroed: free_value is safe on a partial array */
    if (!elems)
        return tl_fail(c->err, "%s: %s: out of memory for %" PRIu64 " array elements", c->file, c->ctx, n);
    out->v.arr.elems = elems;
    int64_t saved = c->elem;
    for (uint64_t i = 0; i < n; i++) {
        c->elem = (int64_t)i;
        if (rd_value(c, (tl_gguf_vtype)et, depth + 1, &elems[i])) return -1;
    }
    c->elem = saved;
    return 0;
}

static int rd_value(cursor *c, tl_gguf_vtype type, int depth, tl_gguf_value *out) {
    out->type = type;
    if (type == TL_GGUF_STRING) return rd_str(c, &out->v.str, "string");
    if (type == TL_GGUF_ARRAY) return rd_array(c, depth, out);
    size_t n = scalar_size(type);
    if (need(c, n, tl_gguf_vtype_name(type))) return -1;
    decode_scalar(type, c->p + c->pos, out);
    c->pos += n;
    return 0;
}

static int parse_kv(tl_gguf *g, cursor *c) {
    char nm[96];
    for (int64_t i = 0; i < g->n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        kv->raw_start = c->pos;
        snprintf(c->ctx, sizeof c->ctx, "key %" PRId64, i);
        if (rd_str(c, &kv->key, "name")) return -1;
        snprintf(c->ctx, sizeof c->ctx, "key '%s'", show(nm, sizeof nm, kv->key.ptr, kv->key.len));
        uint32_t type;
        if (rd_u32(c, &type, "value type")) return -1;
        if (type >= TL_GGUF_NTYPES)
            return tl_fail(c->err, "%s: %s: unknown value type %" PRIu32 " at byte %" PRIu64,
                           c->file, c->ctx, type, c->pos - 4);
        if (rd_value(c, (tl_gguf_vtype)type, 0, &kv->val)) return -1;
        kv->raw_end = c->pos;
        uint32_t dup;
        int r = ix_add(&g->kv_ix, kv->key.ptr, kv->key.len, (uint32_t)i, &dup);
        if (r < 0) return tl_fail(c->err, "%s: out of memory indexing keys", c->file);
        if (r > 0)
            return tl_fail(c->err, "%s: duplicate key '%s' (entries %" PRIu32 " and %" PRId64 ")",
                           c->file, nm, dup, i);
    }
    return 0;
}

/* general.alignment: optional, uint32, a power of two. */
static int parse_alignment(tl_gguf *g, tl_error *err) {
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const tl_gguf_value *v = tl_gguf_find(g, "general.alignment");
    if (!v) return 0;
    if (v->type != TL_GGUF_UINT32)
        return tl_fail(err, "%s: key 'general.alignment': expected uint32, found %s", g->path,
                       tl_gguf_vtype_name(v->type));
    if (!is_pow2(v->v.u64))
        return tl_fail(err, "%s: key 'general.alignment': %" PRIu64 " is not a power of two", g->path,
                       v->v.u64);
    g->alignment = (uint32_t)v->v.u64;
    return 0;
}

static int parse_tensor_infos(tl_gguf *g, cursor *c) {
    char nm[96];
    for (int64_t i = 0; i < g->n_tensors; i++) {
        tl_gguf_tensor *t = &g->tensors[i];
        snprintf(c->ctx, sizeof c->ctx, "tensor info %" PRId64, i);
        tl_gguf_str name;
        if (rd_str(c, &name, "name")) return -1;
        show(nm, sizeof nm, name.ptr, name.len);
        if (memchr(name.ptr, 0, name.len))
            return tl_fail(c->err, "%s: tensor info %" PRId64 ": name '%s' contains a NUL byte", c->file, i, nm);
        t->name = malloc(name.len + 1);
        if (!t->name) return tl_fail(c->err, "%s: tensor info %" PRId64 ": out of memory for name", c->file, i);
        memcpy(t->name, name.ptr, name.len);
        t->name[name.len] = 0;
        snprintf(c->ctx, sizeof c->ctx, "tensor info %" PRId64 " ('%s')", i, nm);

        if (rd_u32(c, &t->n_dims, "n_dims")) return -1;
        if (t->n_dims < 1 || t->n_dims > 4)
            return tl_fail(c->err, "%s: tensor '%s': n_dims %" PRIu32 " (must be 1..4)", c->file, nm, t->n_dims);
        uint64_t count = 1; /* product of dims, kept <= INT64_MAX */
        for (int d = 0; d < 4; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            uint64_t ne;
            if (rd_u64(c, &ne, "dimension")) return -1;
            if (ne == 0)
                return tl_fail(c->err, "%s: tensor '%s': dimension %" PRIu32 " is 0", c->file, nm, d);
            if (ne > (uint64_t)INT64_MAX / count)
                return tl_fail(c->err, "%s: tensor '%s': element count overflows (dimension %" PRIu32
                               " = %" PRIu64 ")", c->file, nm, d, ne);
            t->ne[d] = (int64_t)ne;
            count *= ne;
        }
        uint32_t type;
        uint64_t offset;
        if (rd_u32(c, &type, "type") || rd_u64(c, &offset, "offset")) return -1;
        const tl_type_traits *tr = tl_type_info((int)type);
        if (!tr || type >= TL_TYPE_COUNT)
            return tl_fail(c->err, "%s: tensor '%s': unknown type %" PRIu32, c->file, nm, type);
        t->type = (tl_type)type;
        t->offset = offset;
        if (t->ne[0] % tr->block_size)
            return tl_fail(c->err, "%s: tensor '%s': ne[0] = %" PRId64 " is not a multiple of the %s block size %d",
                           c->file, nm, t->ne[0], tr->name, tr->block_size);
        /* count <= INT64_MAX and row_size <= count * type_size, so only the byte total can overflow */
        uint64_t row = tl_row_size(t->type, t->ne[0]);
        uint64_t rows = count / (uint64_t)t->ne[0];
        if (row == 0 || rows > UINT64_MAX / row)
            return tl_fail(c->err, "%s: tensor '%s': byte size overflows (%" PRIu64 " rows of %" PRIu64 " bytes)",
                           c->file, nm, rows, row);
        t->nbytes = row * rows;

        uint32_t dup;
        int r = ix_add(&g->tensor_ix, t->name, name.len, (uint32_t)i, &dup);
        if (r < 0) return tl_fail(c->err, "%s: out of memory indexing tensors", c->file);
        if (r > 0)
            return tl_fail(c->err, "%s: duplicate tensor name '%s' (tensor infos %" PRIu32 " and %" PRId64 ")",
                           c->file, nm, dup, i);
    }
    return 0;
}

/* Data section placement: every tensor aligned and inside the file. */
static int place_tensors(tl_gguf *g, cursor *c) {
    char nm[96];
    g->data_offset = align_up(c->pos, g->alignment);
    uint64_t avail = g->data_offset <= g->size ? g->size - g->data_offset : 0;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        tl_gguf_tensor *t = &g->tensors[i];
        show(nm, sizeof nm, t->name, strlen(t->name));
        if (t->offset % g->alignment)
            return tl_fail(c->err, "%s: tensor '%s': data offset %" PRIu64 " is not a multiple of the alignment %" PRIu32,
                           g->path, nm, t->offset, g->alignment);
        if (t->offset > avail || t->nbytes > avail - t->offset)
            return tl_fail(c->err, "%s: tensor '%s': data offset %" PRIu64 " + %" PRIu64
                           " bytes past end of file (%" PRIu64 " bytes, data section starts at %" PRIu64 ")",
                           g->path, nm, t->offset, t->nbytes, g->size, g->data_offset);
        t->data = g->data + g->data_offset + t->offset;
    }
    return 0;
}

static int parse(tl_gguf *g, tl_error *err) {
    cursor c = {.p = g->data, .size = g->size, .pos = 0, .file = g->path, .elem = -1, .err = err};
    snprintf(c.ctx, sizeof c.ctx, "header");
    if (g->size == 0) return tl_fail(err, "%s: empty file (not a GGUF file)", g->path);
    if (need(&c, 4, "magic")) return -1;
    if (memcmp(g->data, "GGUF", 4) != 0) {
        char m[20];
        int o = 0;
        for (int i = 0; i < 4; i++) {
            unsigned char ch = g->data[i];
            o += snprintf(m + o, sizeof m - (size_t)o, ch >= 0x20 && ch < 0x7f && ch != '\\' ? "%c" : "\\x%02x", ch);
        }
        return tl_fail(err, "%s: bad magic '%s' (not a GGUF file)", g->path, m);
    }
    c.pos = 4;
    if (rd_u32(&c, &g->version, "version")) return -1;
    if (g->version == 1)
        return tl_fail(err, "%s: GGUF version 1 is not supported (32-bit counts; only versions 2 and 3 are read)", g->path);
    if (g->version == 0x02000000u || g->version == 0x03000000u)
        return tl_fail(err, "%s: big-endian GGUF (version %" PRIu32 " byte-swapped) is not supported", g->path,
                       g->version >> 24);
    if (g->version != 2 && g->version != 3)
        return tl_fail(err, "%s: unsupported GGUF version %" PRIu32 " (only versions 2 and 3 are read)", g->path, g->version);
    uint64_t n_tensors, n_kv;
    if (rd_u64(&c, &n_tensors, "tensor count") || rd_u64(&c, &n_kv, "key/value count")) return -1;
    /* Each key needs >= 13 bytes (u64 length, u32 type, 1-byte value) and each tensor info
     * >= 32 (u64 name length, u32 n_dims, one u64 dim, u32 type, u64 offset). */
    uint64_t left = g->size - c.pos;
    if (n_kv > left / 13 || n_kv > GGUF_MAX_COUNT)
        return tl_fail(err, "%s: header: %" PRIu64 " keys need at least 13 bytes each, file has %" PRIu64
                       " bytes (%" PRIu64 " after the header)", g->path, n_kv, g->size, left);
    if (n_tensors > left / 32 || n_tensors > GGUF_MAX_COUNT)
        return tl_fail(err, "%s: header: %" PRIu64 " tensors need at least 32 bytes each, file has %" PRIu64
                       " bytes (%" PRIu64 " after the header)", g->path, n_tensors, g->size, left);
    if (n_kv * 13 + n_tensors * 32 > left) /* no overflow: each term is <= left */
        return tl_fail(err, "%s: header: %" PRIu64 " keys and %" PRIu64 " tensors need at least %" PRIu64
                       " bytes, file has %" PRIu64 " (%" PRIu64 " after the header)", g->path, n_kv, n_tensors,
                       n_kv * 13 + n_tensors * 32, g->size, left);
    g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return tl_fail(err, "%s: out of memory for %" PRIu64 " keys and %" PRIu64 " tensors",
                                              g->path, n_kv, n_tensors);
    g->n_kv = (int64_t)n_kv;
    g->n_tensors = (int64_t)n_tensors;
    if (parse_kv(g, &c)) return -1;
    if (parse_alignment(g, err)) return -1;
    if (parse_tensor_infos(g, &c)) return -1;
    return place_tensors(g, &c);
}

static tl_gguf *open_common(const void *data, uint64_t size, void *map, const char *name, tl_error *err) {
    tl_gguf *g = calloc(1, sizeof *g);
    char *path = strdup(name ? name : "<memory>");
    if (!g || !path) {
        free(g);
        free(path);
        if (map) munmap(map, size);
        tl_fail(err, "%s: out of memory", name ? name : "<memory>");
        return NULL;
    }
    g->path = path;
    g->data = data;
    g->size = size;
    g->map = map;
    if (parse(g, err)) {
        tl_gguf_close(g);
        return NULL;
    }
    return g;
}

tl_gguf *tl_gguf_open(const char *path, tl_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        tl_fail(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        tl_fail(err, "%s: stat: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        tl_fail(err, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if (st.st_size == 0) {
        close(fd);
        tl_fail(err, "%s: empty file (not a GGUF file)", path);
        return NULL;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) {
        tl_fail(err, "%s: mmap of %lld bytes failed: %s", path, (long long)st.st_size, strerror(e));
        return NULL;
    }
    return open_common(map, (uint64_t)st.st_size, map, path, err);
}

tl_gguf *tl_gguf_open_memory(const void *data, size_t size, const char *name, tl_error *err) {
    if (!data && size) {
        tl_fail(err, "%s: NULL buffer", name ? name : "<memory>");
        return NULL;
    }
    static const uint8_t empty[1];
    return open_common(data ? data : empty, size, NULL, name, err);
}

void tl_gguf_close(tl_gguf *g) {
    if (!g) return;
    if (g->kv)
        for (int64_t i = 0; i < g->n_kv; i++) free_value(&g->kv[i].val);
    if (g->tensors)
        for (int64_t i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    ix_free(&g->kv_ix);
    ix_free(&g->tensor_ix);
    if (g->map) munmap(g->map, g->size);
    free(g->path);
    free(g);
}

const char *tl_gguf_path(const tl_gguf *g) { return g->path; }
bool tl_gguf_mapped(const tl_gguf *g) { return g->map != NULL; }
uint32_t tl_gguf_version(const tl_gguf *g) { return g->version; }
uint64_t tl_gguf_file_size(const tl_gguf *g) { return g->size; }
uint32_t tl_gguf_alignment(const tl_gguf *g) { return g->alignment; }
int64_t tl_gguf_n_kv(const tl_gguf *g) { return g->n_kv; }
int64_t tl_gguf_n_tensors(const tl_gguf *g) { return g->n_tensors; }

const char *tl_gguf_key_name(const tl_gguf *g, int64_t i, size_t *len) {
    if (i < 0 || i >= g->n_kv) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = (size_t)g->kv[i].key.len;
    return g->kv[i].key.ptr;
}

const tl_gguf_value *tl_gguf_kv_value(const tl_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_kv ? &g->kv[i].val : NULL;
}

const tl_gguf_value *tl_gguf_find(const tl_gguf *g, const char *key) {
    if (!g || !key) return NULL;
    int64_t i = ix_find(&g->kv_ix, key, strlen(key));
    return i < 0 ? NULL : &g->kv[i].val;
}

const tl_gguf_tensor *tl_gguf_tensor_at(const tl_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const tl_gguf_tensor *tl_gguf_find_tensor(const tl_gguf *g, const char *name) {
    if (!g || !name) return NULL;
    int64_t i = ix_find(&g->tensor_ix, name, strlen(name));
    return i < 0 ? NULL : &g->tensors[i];
}

/* ---- typed getters ----
 * Integers of any width convert to each other when the value fits; integers also convert
 * to float; float32 and float64 convert to each other. Bools and strings only match themselves. */

static int wrong_type(const tl_gguf *g, const char *key, const char *expected, const tl_gguf_value *v, tl_error *err) {
    return tl_fail(err, "%s: key '%s': expected %s, found %s", g->path, key, expected, tl_gguf_vtype_name(v->type));
}

static int no_fit(const tl_gguf *g, const char *key, const char *expected, const tl_gguf_value *v, tl_error *err) {
    if (is_sint(v->type))
        return tl_fail(err, "%s: key '%s': value %" PRId64 " (%s) does not fit in %s", g->path, key, v->v.i64,
                       tl_gguf_vtype_name(v->type), expected);
    if (is_uint(v->type))
        return tl_fail(err, "%s: key '%s': value %" PRIu64 " (%s) does not fit in %s", g->path, key, v->v.u64,
                       tl_gguf_vtype_name(v->type), expected);
    return tl_fail(err, "%s: key '%s': value %g (%s) does not fit in %s", g->path, key, v->v.f64,
                   tl_gguf_vtype_name(v->type), expected);
}

static const tl_gguf_value *must_find(const tl_gguf *g, const char *key, tl_error *err) {
    const tl_gguf_value *v = tl_gguf_find(g, key);
    if (!v) tl_fail(err, "%s: key '%s' not found", g->path, key);
    return v;
}

static int conv_u32(const tl_gguf *g, const char *key, const tl_gguf_value *v, uint32_t *out, tl_error *err) {
    if (is_uint(v->type)) {
        if (v->v.u64 > UINT32_MAX) return no_fit(g, key, "uint32", v, err);
        *out = (uint32_t)v->v.u64;
        return 0;
    }
    if (is_sint(v->type)) {
        if (v->v.i64 < 0 || v->v.i64 > (int64_t)UINT32_MAX) return no_fit(g, key, "uint32", v, err);
        *out = (uint32_t)v->v.i64;
        return 0;
    }
    return wrong_type(g, key, "uint32", v, err);
}

static int conv_f32(const tl_gguf *g, const char *key, const tl_gguf_value *v, float *out, tl_error *err) {
    if (is_float(v->type)) {
        if (isfinite(v->v.f64) && fabs(v->v.f64) > FLT_MAX) return no_fit(g, key, "float32", v, err);
        *out = (float)v->v.f64;
        return 0;
    }
    if (is_uint(v->type)) { *out = (float)v->v.u64; return 0; }
    if (is_sint(v->type)) { *out = (float)v->v.i64; return 0; }
    return wrong_type(g, key, "float32", v, err);
}

static int conv_bool(const tl_gguf *g, const char *key, const tl_gguf_value *v, bool *out, tl_error *err) {
    if (v->type != TL_GGUF_BOOL) return wrong_type(g, key, "bool", v, err);
    *out = v->v.u64 != 0;
    return 0;
}

static int conv_str(const tl_gguf *g, const char *key, const tl_gguf_value *v, char **out, tl_error *err) {
    if (v->type != TL_GGUF_STRING) return wrong_type(g, key, "string", v, err);
    char *s = malloc(v->v.str.len + 1);
    if (!s) return tl_fail(err, "%s: key '%s': out of memory for a %" PRIu64 "-byte string", g->path, key, v->v.str.len);
    memcpy(s, v->v.str.ptr, v->v.str.len);
    s[v->v.str.len] = 0;
    *out = s;
    return 0;
}

int tl_gguf_get_u32(const tl_gguf *g, const char *key, uint32_t *out, tl_error *err) {
    const tl_gguf_value *v = must_find(g, key, err);
    return v ? conv_u32(g, key, v, out, err) : -1;
}

int tl_gguf_get_i64(const tl_gguf *g, const char *key, int64_t *out, tl_error *err) {
    const tl_gguf_value *v = must_find(g, key, err);
    if (!v) return -1;
    if (is_sint(v->type)) { *out = v->v.i64; return 0; }
    if (is_uint(v->type)) {
        if (v->v.u64 > (uint64_t)INT64_MAX) return no_fit(g, key, "int64", v, err);
        *out = (int64_t)v->v.u64;
        return 0;
    }
    return wrong_type(g, key, "int64", v, err);
}

int tl_gguf_get_f32(const tl_gguf *g, const char *key, float *out, tl_error *err) {
    const tl_gguf_value *v = must_find(g, key, err);
    return v ? conv_f32(g, key, v, out, err) : -1;
}

int tl_gguf_get_bool(const tl_gguf *g, const char *key, bool *out, tl_error *err) {
    const tl_gguf_value *v = must_find(g, key, err);
    return v ? conv_bool(g, key, v, out, err) : -1;
}

int tl_gguf_get_str(const tl_gguf *g, const char *key, char **out, tl_error *err) {
    const tl_gguf_value *v = must_find(g, key, err);
    return v ? conv_str(g, key, v, out, err) : -1;
}

int tl_gguf_opt_u32(const tl_gguf *g, const char *key, uint32_t *out, tl_error *err) {
    const tl_gguf_value *v = tl_gguf_find(g, key);
    return v ? conv_u32(g, key, v, out, err) : 0;
}

int tl_gguf_opt_f32(const tl_gguf *g, const char *key, float *out, tl_error *err) {
    const tl_gguf_value *v = tl_gguf_find(g, key);
    return v ? conv_f32(g, key, v, out, err) : 0;
}

int tl_gguf_opt_bool(const tl_gguf *g, const char *key, bool *out, tl_error *err) {
    const tl_gguf_value *v = tl_gguf_find(g, key);
    return v ? conv_bool(g, key, v, out, err) : 0;
}

int tl_gguf_opt_str(const tl_gguf *g, const char *key, char **out, tl_error *err) {
    const tl_gguf_value *v = tl_gguf_find(g, key);
    return v ? conv_str(g, key, v, out, err) : 0;
}

/* ---- array elements ----
 * Out-of-range indexes, non-arrays and non-converting types give 0 / 0.0 / an empty string,
 * never a crash (callers check n and elem_type first). */

static bool arr_scalar(const tl_gguf_value *arr, uint64_t i, tl_gguf_value *out) {
    if (!arr || arr->type != TL_GGUF_ARRAY || i >= arr->v.arr.n || !arr->v.arr.raw) return false;
    size_t sz = scalar_size(arr->v.arr.elem_type);
    if (!sz) return false;
    decode_scalar(arr->v.arr.elem_type, arr->v.arr.raw + i * sz, out);
    return true;
}

int64_t tl_gguf_arr_i64(const tl_gguf_value *arr, uint64_t i) {
    tl_gguf_value e;
    if (!arr_scalar(arr, i, &e)) return 0;
    if (is_sint(e.type)) return e.v.i64;
    if (is_uint(e.type) || e.type == TL_GGUF_BOOL) return (int64_t)e.v.u64;
    return 0;
}

double tl_gguf_arr_f64(const tl_gguf_value *arr, uint64_t i) {
    tl_gguf_value e;
    if (!arr_scalar(arr, i, &e)) return 0.0;
    if (is_float(e.type)) return e.v.f64;
    if (is_sint(e.type)) return (double)e.v.i64;
    if (is_uint(e.type)) return (double)e.v.u64;
    return 0.0;
}

tl_gguf_str tl_gguf_arr_str(const tl_gguf_value *arr, uint64_t i) {
    tl_gguf_str none = {"", 0};
    if (!arr || arr->type != TL_GGUF_ARRAY || arr->v.arr.elem_type != TL_GGUF_STRING || i >= arr->v.arr.n ||
        !arr->v.arr.elems)
        return none;
    return arr->v.arr.elems[i].v.str;
}

/* ======================================================================================
 * Writer
 * Metadata is serialized as it is added (so copies need no ownership tracking); tensors are
 * kept as descriptors and their data copied from the caller's pointers at write time. The
 * setters return nothing, so the first error is remembered and reported by tl_gguf_write.
 * ====================================================================================== */

typedef struct {
    char *name;
    tl_type type;
    uint32_t n_dims;
    int64_t ne[4];
    const void *data;
    uint64_t nbytes;
} w_tensor;

struct tl_gguf_writer {
    uint8_t *kv;             /* serialized key/value pairs */
    size_t kv_len, kv_cap;
    int64_t n_kv;
    char **keys;             /* NUL-terminated copies, indexed by key_ix */
    name_index key_ix;
    uint32_t alignment;
    w_tensor *tensors;
    int64_t n_tensors, tensors_cap;
    name_index tensor_ix;
    bool failed;
    char errmsg[400];
};

static void w_error(tl_gguf_writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void w_error(tl_gguf_writer *w, const char *fmt, ...) {
    if (w->failed) return; /* keep the first: later ones are often consequences */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->errmsg, sizeof w->errmsg, fmt, ap);
    va_end(ap);
    w->failed = true;
}

/* Record an error and leave the (void) setter. */
#define W_FAIL(w, ...)             \
    do {                           \
        w_error((w), __VA_ARGS__); \
        return;                    \
    } while (0)

static void put(tl_gguf_writer *w, const void *p, size_t n) {
    if (w->kv_len + n > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap : 4096;
        while (cap < w->kv_len + n) cap *= 2;
        w->kv = tl_xrealloc(w->kv, cap);
        w->kv_cap = cap;
    }
    if (n) memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
}

static void put_le(tl_gguf_writer *w, uint64_t v, size_t n) {
    uint8_t b[8];
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)(v >> (8 * i));
    put(w, b, n);
}

static void put_str(tl_gguf_writer *w, const char *s, uint64_t len) {
    put_le(w, len, 8);
    put(w, s, len);
}

tl_gguf_writer *tl_gguf_writer_new(void) {
    tl_gguf_writer *w = tl_xcalloc(1, sizeof *w);
    w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void tl_gguf_writer_free(tl_gguf_writer *w) {
    if (!w) return;
    for (int64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    for (int64_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->keys);
    free(w->tensors);
    free(w->kv);
    ix_free(&w->key_ix);
    ix_free(&w->tensor_ix);
    free(w);
}

/* Register a new key (refusing duplicates); the caller then appends its serialized bytes. */
static bool w_new_key(tl_gguf_writer *w, const char *key, size_t len) {
    if (!key) {
        w_error(w, "NULL key");
        return false;
    }
    char *copy = tl_xmalloc(len + 1);
    memcpy(copy, key, len);
    copy[len] = 0;
    uint32_t dup;
    int r = ix_add(&w->key_ix, copy, len, (uint32_t)w->n_kv, &dup);
    if (r != 0) {
        char nm[96];
        w_error(w, r > 0 ? "duplicate key '%s'" : "out of memory adding key '%s'", show(nm, sizeof nm, key, len));
        free(copy);
        return false;
    }
    w->keys = tl_xrealloc(w->keys, (size_t)(w->n_kv + 1) * sizeof *w->keys);
    w->keys[w->n_kv++] = copy;
    return true;
}

/* Key, type and then the caller appends the value. */
static bool w_begin(tl_gguf_writer *w, const char *key, tl_gguf_vtype type) {
    if (!w || !w_new_key(w, key, key ? strlen(key) : 0)) return false;
    if (type != TL_GGUF_UINT32 && strcmp(key, "general.alignment") == 0) {
        w_error(w, "key 'general.alignment' must be uint32, not %s", tl_gguf_vtype_name(type));
        return false; /* readers (ours, llama.cpp) refuse any other type */
    }
    put_str(w, key, strlen(key));
    put_le(w, (uint64_t)type, 4);
    return true;
}

void tl_gguf_w_u32(tl_gguf_writer *w, const char *key, uint32_t v) {
    if (!w_begin(w, key, TL_GGUF_UINT32)) return;
    put_le(w, v, 4);
    if (strcmp(key, "general.alignment") == 0) {
        if (!is_pow2(v)) w_error(w, "key 'general.alignment': %" PRIu32 " is not a power of two", v);
        else w->alignment = v;
    }
}

void tl_gguf_w_i32(tl_gguf_writer *w, const char *key, int32_t v) {
    if (!w_begin(w, key, TL_GGUF_INT32)) return;
    put_le(w, (uint32_t)v, 4);
}

void tl_gguf_w_u64(tl_gguf_writer *w, const char *key, uint64_t v) {
    if (!w_begin(w, key, TL_GGUF_UINT64)) return;
    put_le(w, v, 8);
}

void tl_gguf_w_f32(tl_gguf_writer *w, const char *key, float v) {
    if (!w_begin(w, key, TL_GGUF_FLOAT32)) return;
    uint32_t b;
    memcpy(&b, &v, 4);
    put_le(w, b, 4);
}

void tl_gguf_w_bool(tl_gguf_writer *w, const char *key, bool v) {
    if (!w_begin(w, key, TL_GGUF_BOOL)) return;
    put_le(w, v ? 1 : 0, 1);
}

void tl_gguf_w_str(tl_gguf_writer *w, const char *key, const char *v) {
    if (!v) {
        if (w) w_error(w, "key '%s': NULL string", key ? key : "(null)");
        return;
    }
    if (!w_begin(w, key, TL_GGUF_STRING)) return;
    put_str(w, v, strlen(v));
}

void tl_gguf_w_arr(tl_gguf_writer *w, const char *key, tl_gguf_vtype elem_type, const void *data, uint64_t n) {
    if (!w) return;
    size_t esz = scalar_size(elem_type);
    if (!esz)
        W_FAIL(w, "key '%s': tl_gguf_w_arr cannot write arrays of %s (use tl_gguf_w_arr_str or tl_gguf_w_value)",
                       key ? key : "(null)", tl_gguf_vtype_name(elem_type));
    if (n && !data) W_FAIL(w, "key '%s': NULL array data", key ? key : "(null)");
    if (n > SIZE_MAX / esz) W_FAIL(w, "key '%s': array of %" PRIu64 " elements is too large", key ? key : "(null)", n);
    if (!w_begin(w, key, TL_GGUF_ARRAY)) return;
    put_le(w, (uint64_t)elem_type, 4);
    put_le(w, n, 8);
    put(w, data, (size_t)(n * esz)); /* caller's data is host order = little-endian on our targets */
}

void tl_gguf_w_arr_str(tl_gguf_writer *w, const char *key, const char *const *strs, const uint64_t *lens, uint64_t n) {
    if (!w) return;
    if (n && !strs) W_FAIL(w, "key '%s': NULL string array", key ? key : "(null)");
    for (uint64_t i = 0; i < n; i++)
        if (!strs[i]) W_FAIL(w, "key '%s': string %" PRIu64 " is NULL", key ? key : "(null)", i);
    if (!w_begin(w, key, TL_GGUF_ARRAY)) return;
    put_le(w, TL_GGUF_STRING, 4);
    put_le(w, n, 8);
    for (uint64_t i = 0; i < n; i++) put_str(w, strs[i], lens ? lens[i] : strlen(strs[i]));
}

/* Serialize v's payload (after its type tag). Returns false (with the error recorded) on a
 * malformed value. */
static bool put_value(tl_gguf_writer *w, const char *key, const tl_gguf_value *v, int depth) {
    tl_gguf_vtype t = v->type;
    size_t esz = scalar_size(t);
    if (esz) {
        uint64_t bits;
        if (t == TL_GGUF_FLOAT32) {
            float f = (float)v->v.f64;
            uint32_t b;
            memcpy(&b, &f, 4);
            bits = b;
        } else if (t == TL_GGUF_FLOAT64) {
            memcpy(&bits, &v->v.f64, 8);
        } else if (t == TL_GGUF_BOOL) {
            bits = v->v.u64 != 0;
        } else if (is_sint(t)) {
            int64_t lim = (int64_t)((1ull << (8 * esz - 1)) - 1);
            if (esz < 8 && (v->v.i64 > lim || v->v.i64 < -lim - 1)) {
                w_error(w, "key '%s': value %" PRId64 " does not fit in %s", key, v->v.i64, vtype_names[t]);
                return false;
            }
            bits = (uint64_t)v->v.i64;
        } else {
            if (esz < 8 && v->v.u64 >> (8 * esz)) {
                w_error(w, "key '%s': value %" PRIu64 " does not fit in %s", key, v->v.u64, vtype_names[t]);
                return false;
            }
            bits = v->v.u64;
        }
        put_le(w, bits, esz);
        return true;
    }
    if (t == TL_GGUF_STRING) {
        if (v->v.str.len && !v->v.str.ptr) {
            w_error(w, "key '%s': NULL string data", key);
            return false;
        }
        put_str(w, v->v.str.ptr, v->v.str.len);
        return true;
    }
    if (t != TL_GGUF_ARRAY) {
        w_error(w, "key '%s': unknown value type %d", key, (int)t);
        return false;
    }
    tl_gguf_vtype et = v->v.arr.elem_type;
    uint64_t n = v->v.arr.n;
    if ((unsigned)et >= TL_GGUF_NTYPES || (et == TL_GGUF_ARRAY && depth + 1 >= GGUF_MAX_DEPTH)) {
        w_error(w, "key '%s': bad array element type %d or arrays nested more than %d deep", key, (int)et, GGUF_MAX_DEPTH);
        return false;
    }
    put_le(w, (uint64_t)et, 4);
    put_le(w, n, 8);
    size_t ez = scalar_size(et);
    if (ez) {
        if (n && !v->v.arr.raw) {
            w_error(w, "key '%s': array of %s without raw data", key, vtype_names[et]);
            return false;
        }
        if (n > SIZE_MAX / ez) {
            w_error(w, "key '%s': array of %" PRIu64 " elements is too large", key, n);
            return false;
        }
        put(w, v->v.arr.raw, (size_t)(n * ez));
        return true;
    }
    if (n && !v->v.arr.elems) {
        w_error(w, "key '%s': array of %s without elements", key, vtype_names[et]);
        return false;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (v->v.arr.elems[i].type != et) {
            w_error(w, "key '%s': array element %" PRIu64 " is %s, array says %s", key, i,
                    tl_gguf_vtype_name(v->v.arr.elems[i].type), vtype_names[et]);
            return false;
        }
        if (!put_value(w, key, &v->v.arr.elems[i], depth + 1)) return false;
    }
    return true;
}

void tl_gguf_w_value(tl_gguf_writer *w, const char *key, const tl_gguf_value *v) {
    if (!w) return;
    if (!v) W_FAIL(w, "key '%s': NULL value", key ? key : "(null)");
    if ((unsigned)v->type >= TL_GGUF_NTYPES)
        W_FAIL(w, "key '%s': unknown value type %d", key ? key : "(null)", (int)v->type);
    size_t mark = w->kv_len;
    if (!w_begin(w, key, v->type)) return;
    if (!put_value(w, key, v, 0)) {
        w->kv_len = mark; /* drop the half-written pair (the error is already recorded) */
        return;
    }
    if (strcmp(key, "general.alignment") == 0) { /* w_begin made sure it is a uint32 */
        if (!is_pow2(v->v.u64)) w_error(w, "key 'general.alignment': %" PRIu64 " is not a power of two", v->v.u64);
        else w->alignment = (uint32_t)v->v.u64;
    }
}

void tl_gguf_w_copy_kv(tl_gguf_writer *w, const tl_gguf *src, int64_t i) {
    if (!w) return;
    if (!src || i < 0 || i >= src->n_kv)
        W_FAIL(w, "copy of key %" PRId64 ": no such key in %s", i, src ? src->path : "(null reader)");
    const gguf_kv *kv = &src->kv[i];
    if (!w_new_key(w, kv->key.ptr, kv->key.len)) return;
    /* v2 and v3 encode identically, so the file's bytes are the verbatim value (nested arrays
     * and float bit patterns included). */
    put(w, src->data + kv->raw_start, kv->raw_end - kv->raw_start);
    if (kv->key.len == 17 && memcmp(kv->key.ptr, "general.alignment", 17) == 0)
        w->alignment = src->alignment; /* the reader validated it (uint32, power of two) */
}

void tl_gguf_w_tensor(tl_gguf_writer *w, const char *name, tl_type type, uint32_t n_dims, const int64_t *ne, const void *data) {
    if (!w) return;
    if (!name) W_FAIL(w, "tensor with NULL name");
    const tl_type_traits *tr = tl_type_info((int)type);
    if (!tr) W_FAIL(w, "tensor '%s': unknown type %d", name, (int)type);
    if (n_dims < 1 || n_dims > 4 || !ne) W_FAIL(w, "tensor '%s': n_dims %" PRIu32 " (must be 1..4)", name, n_dims);
    w_tensor t = {.type = type, .n_dims = n_dims, .ne = {1, 1, 1, 1}, .data = data};
    uint64_t count = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] < 1) W_FAIL(w, "tensor '%s': dimension %" PRIu32 " is %" PRId64, name, d, ne[d]);
        if ((uint64_t)ne[d] > (uint64_t)INT64_MAX / count)
            W_FAIL(w, "tensor '%s': element count overflows", name);
        count *= (uint64_t)ne[d];
        t.ne[d] = ne[d];
    }
    if (t.ne[0] % tr->block_size)
        W_FAIL(w, "tensor '%s': ne[0] = %" PRId64 " is not a multiple of the %s block size %d", name, t.ne[0],
                       tr->name, tr->block_size);
    uint64_t row = tl_row_size(type, t.ne[0]), rows = count / (uint64_t)t.ne[0];
    if (row == 0 || rows > UINT64_MAX / row) W_FAIL(w, "tensor '%s': byte size overflows", name);
    t.nbytes = row * rows;
    if (!data) W_FAIL(w, "tensor '%s': NULL data", name);
    t.name = tl_xstrdup(name);
    uint32_t dup;
    int r = ix_add(&w->tensor_ix, t.name, strlen(t.name), (uint32_t)w->n_tensors, &dup);
    if (r != 0) {
        w_error(w, r > 0 ? "duplicate tensor name '%s'" : "out of memory adding tensor '%s'", name);
        free(t.name);
        return;
    }
    if (w->n_tensors == w->tensors_cap) {
        w->tensors_cap = w->tensors_cap ? w->tensors_cap * 2 : 64;
        w->tensors = tl_xrealloc(w->tensors, (size_t)w->tensors_cap * sizeof *w->tensors);
    }
    w->tensors[w->n_tensors++] = t;
}

/* fwrite with position tracking so padding can be computed. */
typedef struct {
    FILE *f;
    uint64_t pos;
    int err; /* errno of the first failed write */
} w_out;

static void out_bytes(w_out *o, const void *p, size_t n) {
    if (n && !o->err && fwrite(p, 1, n, o->f) != n) o->err = errno ? errno : EIO;
    o->pos += n;
}

static void out_le(w_out *o, uint64_t v, size_t n) {
    uint8_t b[8];
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)(v >> (8 * i));
    out_bytes(o, b, n);
}

static void out_pad(w_out *o, uint64_t align) {
    static const uint8_t zeros[256];
    uint64_t n = align_up(o->pos, align) - o->pos;
    while (n) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        out_bytes(o, zeros, k);
        n -= k;
    }
}

int tl_gguf_write_to(tl_gguf_writer *w, tl_outfile *out, tl_error *err) {
    if (!w || !out || !out->f) return tl_fail(err, "tl_gguf_write_to: NULL writer or output");
    if (w->failed) return tl_fail(err, "%s: %s", out->path, w->errmsg);
    uint64_t align = w->alignment;
    w_out o = {out->f, 0, 0};
    out_bytes(&o, "GGUF", 4);
    out_le(&o, 3, 4);
    out_le(&o, (uint64_t)w->n_tensors, 8);
    out_le(&o, (uint64_t)w->n_kv, 8);
    out_bytes(&o, w->kv, w->kv_len);
    uint64_t off = 0; /* tensors packed in order, each aligned */
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const w_tensor *t = &w->tensors[i];
        out_le(&o, strlen(t->name), 8);
        out_bytes(&o, t->name, strlen(t->name));
        out_le(&o, t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++) out_le(&o, (uint64_t)t->ne[d], 8);
        out_le(&o, (uint64_t)t->type, 4);
        out_le(&o, off, 8);
        off = align_up(off + t->nbytes, align);
    }
    out_pad(&o, align);
    for (int64_t i = 0; i < w->n_tensors && !o.err; i++) {
        out_bytes(&o, w->tensors[i].data, (size_t)w->tensors[i].nbytes);
        out_pad(&o, align);
    }
    return o.err ? tl_fail(err, "%s: writing %s failed: %s", out->path, out->tmp, strerror(o.err)) : 0;
}

int tl_gguf_write(tl_gguf_writer *w, const char *path, tl_error *err) {
    if (!w || !path) return tl_fail(err, "tl_gguf_write: NULL writer or path");
    if (w->failed) return tl_fail(err, "%s: %s", path, w->errmsg);
    tl_outfile o;
    if (tl_outfile_open(&o, path, NULL, err)) return -1;
    if (tl_gguf_write_to(w, &o, err)) {
        tl_outfile_abort(&o);
        return -1;
    }
    return tl_outfile_commit(&o, err);
}
