/* gguf.h: GGUF v2/v3 reader (mmap, bounds-checked) and writer (temp file + rename).
 *
 * Reader: tl_gguf_open maps the file, parses header, metadata and tensor infos, checks
 * every count, length, offset and alignment against the file size, and returns a handle
 * whose strings and tensor data point into the mapping. Any inconsistency is an error
 * naming the file and the field ("m.gguf: tensor 'x': data offset 123 + 4096 bytes past
 * end of file (2000 bytes)"). */
#ifndef TL_GGUF_H
#define TL_GGUF_H

#include "../base/common.h"
#include "../cpu/quants.h"

typedef enum {
    TL_GGUF_UINT8 = 0,
    TL_GGUF_INT8 = 1,
    TL_GGUF_UINT16 = 2,
    TL_GGUF_INT16 = 3,
    TL_GGUF_UINT32 = 4,
    TL_GGUF_INT32 = 5,
    TL_GGUF_FLOAT32 = 6,
    TL_GGUF_BOOL = 7,
    TL_GGUF_STRING = 8,
    TL_GGUF_ARRAY = 9,
    TL_GGUF_UINT64 = 10,
    TL_GGUF_INT64 = 11,
    TL_GGUF_FLOAT64 = 12,
    TL_GGUF_NTYPES
} tl_gguf_vtype;

/* A string inside the mapping: NOT NUL-terminated. */
typedef struct {
    const char *ptr;
    uint64_t len;
} tl_gguf_str;

/* A metadata value. For arrays: elem_type and n; elements are read with the
 * tl_gguf_arr_* accessors (nested arrays are supported: an element of an array of
 * arrays is itself a tl_gguf_value). */
typedef struct tl_gguf_value {
    tl_gguf_vtype type;
    union {
        uint64_t u64; /* all unsigned ints, bool */
        int64_t i64;  /* all signed ints */
        double f64;   /* float32/float64 */
        tl_gguf_str str;
        struct {
            tl_gguf_vtype elem_type;
            uint64_t n;
            const struct tl_gguf_value *elems; /* decoded elements (owned by the handle) for arrays of
                                                  strings/arrays; NULL for arrays of numbers/bools */
            const uint8_t *raw;                /* arrays of numbers/bools: packed little-endian data
                                                  in the mapping (n * size of elem_type bytes) */
        } arr;
    } v;
} tl_gguf_value;

typedef struct {
    char *name;                 /* NUL-terminated copy */
    uint32_t n_dims;            /* 1..4 */
    int64_t ne[4];              /* ne[0] = innermost (row length); unused dims are 1 */
    tl_type type;
    uint64_t offset;            /* relative to the data section */
    const void *data;           /* pointer into the mapping */
    uint64_t nbytes;
} tl_gguf_tensor;

typedef struct tl_gguf tl_gguf;

/* Open and validate. On error returns NULL and fills err. */
tl_gguf *tl_gguf_open(const char *path, tl_error *err);
/* Same checks over a memory buffer (no copy; buffer must outlive the handle). Used by the fuzzer. */
tl_gguf *tl_gguf_open_memory(const void *data, size_t size, const char *name, tl_error *err);
/* Whether the data is a read-only mapping of the file (tl_gguf_open), whose pages may be
 * released (tl_release_mapped_pages), rather than the caller's buffer. */
bool tl_gguf_mapped(const tl_gguf *g);
void tl_gguf_close(tl_gguf *g);

const char *tl_gguf_path(const tl_gguf *g);
uint32_t tl_gguf_version(const tl_gguf *g);
uint64_t tl_gguf_file_size(const tl_gguf *g);
uint32_t tl_gguf_alignment(const tl_gguf *g);

/* Metadata. Keys are looked up by exact name. */
int64_t tl_gguf_n_kv(const tl_gguf *g);
const char *tl_gguf_key_name(const tl_gguf *g, int64_t i, size_t *len); /* not NUL-terminated: use len */
const tl_gguf_value *tl_gguf_kv_value(const tl_gguf *g, int64_t i);
const tl_gguf_value *tl_gguf_find(const tl_gguf *g, const char *key); /* NULL if missing */

/* Typed getters. Each returns 0 on success; -1 if the key is missing or has an incompatible
 * type (integers of any width convert to each other when the value fits; float32/64 convert;
 * err names file, key, expected and found type). */
int tl_gguf_get_u32(const tl_gguf *g, const char *key, uint32_t *out, tl_error *err);
int tl_gguf_get_i64(const tl_gguf *g, const char *key, int64_t *out, tl_error *err);
int tl_gguf_get_f32(const tl_gguf *g, const char *key, float *out, tl_error *err);
int tl_gguf_get_bool(const tl_gguf *g, const char *key, bool *out, tl_error *err);
/* String into a fresh NUL-terminated malloc'd copy (caller frees). */
int tl_gguf_get_str(const tl_gguf *g, const char *key, char **out, tl_error *err);
/* Optional variants: return 0 and leave *out untouched if the key is missing; -1 on wrong type. */
int tl_gguf_opt_u32(const tl_gguf *g, const char *key, uint32_t *out, tl_error *err);
int tl_gguf_opt_f32(const tl_gguf *g, const char *key, float *out, tl_error *err);
int tl_gguf_opt_bool(const tl_gguf *g, const char *key, bool *out, tl_error *err);
int tl_gguf_opt_str(const tl_gguf *g, const char *key, char **out, tl_error *err);

/* Array element accessors (index must be < n; type must match or convert as above). */
int64_t tl_gguf_arr_i64(const tl_gguf_value *arr, uint64_t i);
double tl_gguf_arr_f64(const tl_gguf_value *arr, uint64_t i);
tl_gguf_str tl_gguf_arr_str(const tl_gguf_value *arr, uint64_t i);
const char *tl_gguf_vtype_name(tl_gguf_vtype t);

/* Tensors. */
int64_t tl_gguf_n_tensors(const tl_gguf *g);
const tl_gguf_tensor *tl_gguf_tensor_at(const tl_gguf *g, int64_t i);
const tl_gguf_tensor *tl_gguf_find_tensor(const tl_gguf *g, const char *name); /* NULL if missing */

/* ---- Writer ----
 * Collects metadata and tensors in memory order, then writes them through a tl_outfile
 * (base/common.h: "<path>.tmp.<pid>" renamed onto path when complete, never a half-written
 * output). Tensor data is copied at write time from the pointers given (they must stay valid
 * until tl_gguf_write). */
typedef struct tl_gguf_writer tl_gguf_writer;
tl_gguf_writer *tl_gguf_writer_new(void);
void tl_gguf_writer_free(tl_gguf_writer *w);
void tl_gguf_w_u32(tl_gguf_writer *w, const char *key, uint32_t v);
void tl_gguf_w_i32(tl_gguf_writer *w, const char *key, int32_t v);
void tl_gguf_w_u64(tl_gguf_writer *w, const char *key, uint64_t v);
void tl_gguf_w_f32(tl_gguf_writer *w, const char *key, float v);
void tl_gguf_w_bool(tl_gguf_writer *w, const char *key, bool v);
void tl_gguf_w_str(tl_gguf_writer *w, const char *key, const char *v);
/* Arrays of numbers: data is n packed elements of elem_type (copied now). */
void tl_gguf_w_arr(tl_gguf_writer *w, const char *key, tl_gguf_vtype elem_type, const void *data, uint64_t n);
/* Array of strings (copied now); lens may be NULL for NUL-terminated strings. */
void tl_gguf_w_arr_str(tl_gguf_writer *w, const char *key, const char *const *strs, const uint64_t *lens, uint64_t n);
/* Copy a key/value verbatim from a reader (any type incl. nested arrays). */
void tl_gguf_w_copy_kv(tl_gguf_writer *w, const tl_gguf *src, int64_t i);
/* Any value (every scalar width, strings, nested arrays), laid out as the reader returns it:
 * arrays of numbers/bools from v.arr.raw, arrays of strings/arrays from v.arr.elems. */
void tl_gguf_w_value(tl_gguf_writer *w, const char *key, const tl_gguf_value *v);
/* Tensor: ne[0] innermost; data must hold tl_row_size(type, ne[0]) * ne[1]*ne[2]*ne[3] bytes. */
void tl_gguf_w_tensor(tl_gguf_writer *w, const char *name, tl_type type, uint32_t n_dims, const int64_t *ne, const void *data);
/* Write everything (GGUF v3, alignment 32 unless general.alignment was set). */
int tl_gguf_write(tl_gguf_writer *w, const char *path, tl_error *err);
/* The same into an output the caller opened (tl_outfile_open) and commits or aborts: for a
 * writer that checks its output, and holds it, before its work (tailor quantize). */
int tl_gguf_write_to(tl_gguf_writer *w, tl_outfile *out, tl_error *err);

#endif
