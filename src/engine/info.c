/* info.c: the report of `tailor info` (tailor.h, tl_info): what is in a GGUF file (metadata,
 * tensors), the model tailor reads from it, and the memory a session would need at any
 * context and KV policy, computed without allocating (the planner's projection,
 * engine/plan.h, which the session allocates by); or the same for a synth shape, no file
 * needed (e.g. Llama-3.1-8B at 128k). Everything is gathered before printing, so markdown
 * and JSON show the same facts. */
#include "../model/gguf.h"
#include "../model/model.h"
#include "../model/synth.h"
#include "plan.h"
#include "backend.h"
#include "session.h"
#include "../kv/policy.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#define MD_STR_MAX 80    /* metadata strings longer than this are cut in the table */
#define JSON_STR_MAX 1024
#define ARR_FIRST 5      /* array elements shown */

/* "12,345,678" */
static const char *commas(uint64_t v, char *buf) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v), o = 0;
    for (int i = 0; i < n; i++) {
        if (i && (n - i) % 3 == 0) buf[o++] = ',';
        buf[o++] = tmp[i];
    }
    buf[o] = 0;
    return buf;
}

/* "1,234,567 (1.18 MiB)" */
static const char *human(uint64_t v, char *buf) {
    char c[40];
    const double d = (double)v;
    if (v >= (1ull << 30)) snprintf(buf, 80, "%s (%.2f GiB)", commas(v, c), d / (1 << 30));
    else if (v >= (1u << 20)) snprintf(buf, 80, "%s (%.2f MiB)", commas(v, c), d / (1 << 20));
    else if (v >= 1024) snprintf(buf, 80, "%s (%.2f KiB)", commas(v, c), d / 1024);
    else snprintf(buf, 80, "%s", commas(v, c));
    return buf;
}

/* Append text from the file, escaped (tl_escape: control bytes, invalid UTF-8, and '|' which
 * would break a markdown table cell); cut at max bytes. */
static void md_text(char *out, size_t cap, const char *s, uint64_t len, size_t max) {
    size_t o = strlen(out);
    if (o + 32 > cap) return;
    const size_t n = len > max ? max : (size_t)len;
    if (tl_escape(out + o, cap - o - 24, s, n, "|") < len) {
        o = strlen(out);
        snprintf(out + o, cap - o, "... (%llu bytes)", (unsigned long long)len);
    }
}

static bool is_int_type(tl_gguf_vtype t) {
    return t == TL_GGUF_UINT8 || t == TL_GGUF_INT8 || t == TL_GGUF_UINT16 || t == TL_GGUF_INT16 ||
           t == TL_GGUF_UINT32 || t == TL_GGUF_INT32 || t == TL_GGUF_UINT64 || t == TL_GGUF_INT64;
}
static bool is_signed(tl_gguf_vtype t) {
    return t == TL_GGUF_INT8 || t == TL_GGUF_INT16 || t == TL_GGUF_INT32 || t == TL_GGUF_INT64;
}

/* One metadata value as a table cell; arrays as "[type x N] first, values, ...". */
static void md_value(const tl_gguf_value *v, char *out, size_t cap) {
    out[0] = 0;
    char num[64];
    switch (v->type) {
    case TL_GGUF_STRING: md_text(out, cap, v->v.str.ptr, v->v.str.len, MD_STR_MAX); return;
    case TL_GGUF_BOOL: snprintf(out, cap, "%s", v->v.u64 ? "true" : "false"); return;
    case TL_GGUF_FLOAT32:
    case TL_GGUF_FLOAT64: snprintf(out, cap, "%.9g", v->v.f64); return;
    case TL_GGUF_ARRAY: break;
    default:
        if (is_signed(v->type)) snprintf(out, cap, "%lld", (long long)v->v.i64);
        else snprintf(out, cap, "%llu", (unsigned long long)v->v.u64);
        return;
    }
    const tl_gguf_vtype et = v->v.arr.elem_type;
    const uint64_t n = v->v.arr.n;
    snprintf(out, cap, "[%s x %llu]", tl_gguf_vtype_name(et), (unsigned long long)n);
    for (uint64_t i = 0; i < n && i < ARR_FIRST; i++) {
        size_t o = strlen(out);
        if (o + 40 >= cap) break;
        snprintf(out + o, cap - o, "%s", i ? ", " : " ");
        if (et == TL_GGUF_STRING) {
            tl_gguf_str s = tl_gguf_arr_str(v, i);
            strcat(out, "\"");
            md_text(out, cap - 8, s.ptr, s.len, 24);
            strcat(out, "\"");
        } else if (et == TL_GGUF_ARRAY) {
            const tl_gguf_value *e = &v->v.arr.elems[i];
            snprintf(num, sizeof num, "[%s x %llu]", tl_gguf_vtype_name(e->v.arr.elem_type),
                     (unsigned long long)e->v.arr.n);
            strcat(out, num);
        } else if (et == TL_GGUF_FLOAT32 || et == TL_GGUF_FLOAT64) {
            snprintf(num, sizeof num, "%.6g", tl_gguf_arr_f64(v, i));
            strcat(out, num);
        } else if (et == TL_GGUF_BOOL) {
            strcat(out, tl_gguf_arr_i64(v, i) ? "true" : "false");
        } else if (et == TL_GGUF_UINT64) {
            snprintf(num, sizeof num, "%llu", (unsigned long long)(uint64_t)tl_gguf_arr_i64(v, i));
            strcat(out, num);
        } else {
            snprintf(num, sizeof num, "%lld", (long long)tl_gguf_arr_i64(v, i));
            strcat(out, num);
        }
    }
    if (n > ARR_FIRST && strlen(out) + 6 < cap) strcat(out, ", ...");
}

/* A string from the file, escaped as in the table (tl_escape), cut at max bytes. */
static cJSON *json_str(const char *s, uint64_t len, size_t max) {
    size_t n = len > max ? max : (size_t)len;
    char *b = tl_xmalloc(4 * n + 1); /* \xHH is the longest escape of a byte */
    tl_escape(b, 4 * n + 1, s, n, NULL);
    cJSON *j = cJSON_CreateString(b);
    free(b);
    return j;
}

static cJSON *json_value(const tl_gguf_value *v) {
    switch (v->type) {
    case TL_GGUF_STRING: return json_str(v->v.str.ptr, v->v.str.len, JSON_STR_MAX);
    case TL_GGUF_BOOL: return cJSON_CreateBool(v->v.u64 != 0);
    case TL_GGUF_FLOAT32:
    case TL_GGUF_FLOAT64: return cJSON_CreateNumber(v->v.f64);
    case TL_GGUF_ARRAY: break;
    default: return cJSON_CreateNumber(is_signed(v->type) ? (double)v->v.i64 : (double)v->v.u64);
    }
    cJSON *o = cJSON_CreateObject();
    const tl_gguf_vtype et = v->v.arr.elem_type;
    cJSON_AddStringToObject(o, "array_of", tl_gguf_vtype_name(et));
    cJSON_AddNumberToObject(o, "n", (double)v->v.arr.n);
    cJSON *first = cJSON_AddArrayToObject(o, "first");
    for (uint64_t i = 0; i < v->v.arr.n && i < ARR_FIRST; i++) {
        if (et == TL_GGUF_STRING) {
            tl_gguf_str s = tl_gguf_arr_str(v, i);
            cJSON_AddItemToArray(first, json_str(s.ptr, s.len, 64));
        } else if (et == TL_GGUF_ARRAY) {
            cJSON_AddItemToArray(first, json_value(&v->v.arr.elems[i]));
        } else if (et == TL_GGUF_BOOL) {
            cJSON_AddItemToArray(first, cJSON_CreateBool(tl_gguf_arr_i64(v, i) != 0));
        } else if (is_int_type(et)) {
            cJSON_AddItemToArray(first, cJSON_CreateNumber((double)tl_gguf_arr_i64(v, i)));
        } else {
            cJSON_AddItemToArray(first, cJSON_CreateNumber(tl_gguf_arr_f64(v, i)));
        }
    }
    return o;
}

/* "0-4, 6-10, 12" for the layers where flag[il] is set. */
static void layer_ranges(const bool *flag, int n, char *out, size_t cap) {
    size_t o = 0;
    out[0] = 0;
    for (int i = 0; i < n; i++) {
        if (!flag[i]) continue;
        int j = i;
        while (j + 1 < n && flag[j + 1]) j++;
        if (o + 24 >= cap) {
            snprintf(out + o, cap - o, ", ...");
            return;
        }
        o += (size_t)snprintf(out + o, cap - o, i == j ? "%s%d" : "%s%d-%d", o ? ", " : "", i, j);
        i = j;
    }
}

/* Everything info prints, gathered before printing (so md and json show the same facts). */
struct tl_info {
    const char *path;          /* NULL in --shape mode */
    const tl_synth_shape *shape;
    tl_type shape_type;
    tl_gguf *g;
    tl_model *m;
    char model_skip[600];      /* why the model part is skipped ("" = not skipped) */
    tl_config cfg;
    bool tied, rope_freqs, longrope;
    uint64_t weights;          /* bytes the model reads */
    uint64_t tensor_bytes;     /* all tensors of the file */
    uint64_t type_count[TL_TYPE_COUNT], type_bytes[TL_TYPE_COUNT];
    /* memory */
    bool have_mem;
    char *plan_text;
    tl_mem_plan mp;
    bool per_layer;            /* layers differ: print the per-layer table */
    /* the device's plan (tl_info_params.device) */
    const char *device;
    tl_cuda_opts cuda;
    bool have_gp;
    tl_device_plan gp;
};

static void print_md_model(FILE *f, const tl_info *I) {
    const tl_config *c = &I->cfg;
    char b[80], sw[512];
    fprintf(f, "\n## Model (as tailor reads it)\n\n| field | value |\n|---|---|\n");
    fprintf(f, "| architecture | %s |\n", c->arch_name);
    fprintf(f, "| layers | %d |\n| embedding | %d |\n| feed-forward | %d |\n", c->n_layer, c->n_embd, c->n_ff);
    fprintf(f, "| heads (query / KV) | %d / %d (GQA %d:1) |\n", c->n_head, c->n_head_kv, c->n_head / c->n_head_kv);
    fprintf(f, "| head dim (K / V) | %d / %d |\n| vocabulary | %d |\n| training context | %d |\n", c->head_dim_k,
           c->head_dim_v, c->n_vocab, c->n_ctx_train);
    fprintf(f, "| RoPE | %s pairs, base %g, %d dims rotated, freq scale %g%s", c->rope_style == TL_ROPE_NORM ? "adjacent" : "NEOX (halves)",
           c->rope_base, c->n_rot, c->rope_freq_scale, I->rope_freqs ? ", llama3 rope_freqs factors" : "");
    if (I->longrope) fprintf(f, ", LongRoPE factors (long ones for contexts over %d)", c->n_ctx_orig);
    if (c->rope_attn_factor != 1.0f) fprintf(f, ", cos/sin x %.4f", c->rope_attn_factor);
    fprintf(f, " |\n| query scale | %.6g |\n", c->attn_scale);
    if (c->attn_softcap > 0 || c->final_softcap > 0)
        fprintf(f, "| soft-capping | attention scores %g, final logits %g (0: none) |\n", c->attn_softcap, c->final_softcap);
    fprintf(f, "| RMSNorm eps | %g |\n", c->norm_eps);
    if (c->sliding_window > 0) {
        layer_ranges(c->layer_swa, c->n_layer, sw, sizeof sw);
        fprintf(f, "| sliding window | %d tokens on layers %s (RoPE base %g there) |\n", c->sliding_window, sw,
               c->rope_base_swa);
    } else {
        fprintf(f, "| sliding window | none |\n");
    }
    fprintf(f, "| output | %s |\n", I->tied ? "tied to token_embd" : "output.weight");
    fprintf(f, "| weights read | %s |\n", human(I->weights, b));
}

static void print_md_memory(FILE *f, const tl_info *I) {
    const tl_mem_plan *p = &I->mp;
    char b[80], t[40];
    fprintf(f, "\n## Memory at %s tokens (KV %s, chunk %d)\n\n| part | bytes |\n|---|---|\n", commas((uint64_t)p->n_ctx, t),
           I->plan_text, p->chunk);
    fprintf(f, "| weights | %s |\n", human(p->weights, b));
    fprintf(f, "| - weights (file) | %s |\n", human(p->weights_file, b));
    fprintf(f, "| - weights repacked for the CPU GEMM | %s |\n", human(p->weights_packed, b));
    fprintf(f, "| KV cache | %s |\n", human(p->kv, b));
    fprintf(f, "| - codes | %s |\n", human(p->kv_parts.codes, b));
    fprintf(f, "| - scales | %s |\n", human(p->kv_parts.scales, b));
    fprintf(f, "| - residual | %s |\n", human(p->kv_parts.residual, b));
    fprintf(f, "| - other | %s |\n", human(p->kv_parts.other, b));
    if (p->kv_parts.host) fprintf(f, "| - host | %s |\n", human(p->kv_parts.host, b));
    fprintf(f, "| activations | %s |\n", human(p->activations, b));
    fprintf(f, "| total | %s |\n", human(p->weights + p->kv + p->activations, b));
    fprintf(f, "\nKV: %s bytes/token at this context\n", commas(p->n_ctx ? p->kv / (uint64_t)p->n_ctx : 0, t));
    if (!I->per_layer) return;
    fprintf(f, "\n### KV per layer\n\n| layers | policy | window | bytes per layer |\n|---|---|---|---|\n");
    for (int i = 0; i < I->cfg.n_layer; i++) {
        int j = i;
        while (j + 1 < I->cfg.n_layer && tl_kv_policy_equal(&p->eff[j + 1], &p->eff[i]) &&
               p->window[j + 1] == p->window[i] && p->kv_layer[j + 1] == p->kv_layer[i])
            j++;
        char pol[128];
        tl_kv_policy_format(&p->eff[i], pol, sizeof pol);
        if (i == j) fprintf(f, "| %d ", i);
        else fprintf(f, "| %d-%d ", i, j);
        fprintf(f, "| %s | %d | %s |\n", pol, p->window[i], human(p->kv_layer[i], b));
        i = j;
    }
}

/* The device plan: what --gpu-mem-budget checks, and what a session there allocates. */
static void print_md_device(FILE *f, const tl_info *I) {
    const tl_device_plan *g = &I->gp;
    char b[80];
    fprintf(f, "\n## Device memory (%s) at these settings: the plan --gpu-mem-budget checks\n\n| part | bytes |\n|---|---|\n",
            I->device);
    fprintf(f, "| weights (as uploaded) | %s |\n", human(g->weights, b));
    fprintf(f, "| workspace (block-format weights) | %s |\n", human(g->workspace, b));
    fprintf(f, "| KV cache, device tier | %s |\n", human(g->kv_device, b));
    fprintf(f, "| activations (chunk rows, attention partials) | %s |\n", human(g->activations, b));
    fprintf(f, "| runtime reserve (CUDA context, cuBLAS) | %s |\n", human(g->reserve, b));
    fprintf(f, "| total on the device | %s |\n", human(g->total, b));
    if (g->kv_host) fprintf(f, "| KV cache, host tier (pinned host memory) | %s |\n", human(g->kv_host, b));
}

static void print_md(FILE *f, const tl_info *I, bool tensors) {
    char b[80], cell[1024];
    if (I->g) {
        const tl_gguf *g = I->g;
        fprintf(f, "# %s\n\nGGUF v%u, %s, alignment %u, %lld metadata keys, %lld tensors\n", I->path, tl_gguf_version(g),
               human(tl_gguf_file_size(g), b), tl_gguf_alignment(g), (long long)tl_gguf_n_kv(g),
               (long long)tl_gguf_n_tensors(g));
        fprintf(f, "\n## Metadata\n\n| key | type | value |\n|---|---|---|\n");
        for (int64_t i = 0; i < tl_gguf_n_kv(g); i++) {
            size_t len;
            const char *k = tl_gguf_key_name(g, i, &len);
            const tl_gguf_value *v = tl_gguf_kv_value(g, i);
            char kname[300] = "";
            md_text(kname, sizeof kname, k, len, 200);
            md_value(v, cell, sizeof cell);
            fprintf(f, "| %s | %s | %s |\n", kname, tl_gguf_vtype_name(v->type), cell);
        }
    } else {
        fprintf(f, "# shape %s (%s), %s weights, no file\n", I->shape->name, I->shape->source, tl_type_name(I->shape_type));
    }
    if (I->model_skip[0]) fprintf(f, "\n## Model\n\nskipped: %s\n", I->model_skip);
    else print_md_model(f, I);
    if (I->g) {
        const tl_gguf *g = I->g;
        fprintf(f, "\n## Tensors: %lld, %s\n\n| type | count | bytes |\n|---|---|---|\n", (long long)tl_gguf_n_tensors(g),
               human(I->tensor_bytes, b));
        for (int t = 0; t < TL_TYPE_COUNT; t++)
            if (I->type_count[t]) fprintf(f, "| %s | %llu | %s |\n", tl_type_name(t), (unsigned long long)I->type_count[t], human(I->type_bytes[t], b));
        if (tensors) {
            fprintf(f, "\n| name | type | shape | bytes | offset |\n|---|---|---|---|---|\n");
            for (int64_t i = 0; i < tl_gguf_n_tensors(g); i++) {
                const tl_gguf_tensor *t = tl_gguf_tensor_at(g, i);
                char shp[100] = "";
                for (uint32_t d = 0; d < t->n_dims; d++)
                    snprintf(shp + strlen(shp), sizeof shp - strlen(shp), "%s%lld", d ? " x " : "", (long long)t->ne[d]);
                char c1[40], c2[40], name[1100] = "";
                md_text(name, sizeof name, t->name, strlen(t->name), 256);
                fprintf(f, "| %s | %s | %s | %s | %s |\n", name, tl_type_name(t->type), shp, commas(t->nbytes, c1),
                       commas(t->offset, c2));
            }
        }
    }
    if (I->have_mem) print_md_memory(f, I);
    if (I->have_gp) print_md_device(f, I);
}

static cJSON *json_parts(const tl_kv_bytes *k) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "codes", (double)k->codes);
    cJSON_AddNumberToObject(o, "scales", (double)k->scales);
    cJSON_AddNumberToObject(o, "residual", (double)k->residual);
    cJSON_AddNumberToObject(o, "other", (double)k->other);
    cJSON_AddNumberToObject(o, "host", (double)k->host);
    return o;
}

static void print_json(FILE *f, const tl_info *I, bool tensors) {
    cJSON *root = cJSON_CreateObject();
    if (I->g) {
        const tl_gguf *g = I->g;
        cJSON_AddStringToObject(root, "file", I->path);
        cJSON_AddNumberToObject(root, "gguf_version", tl_gguf_version(g));
        cJSON_AddNumberToObject(root, "file_bytes", (double)tl_gguf_file_size(g));
        cJSON_AddNumberToObject(root, "alignment", tl_gguf_alignment(g));
        cJSON *md = cJSON_AddArrayToObject(root, "metadata");
        for (int64_t i = 0; i < tl_gguf_n_kv(g); i++) {
            size_t len;
            const char *k = tl_gguf_key_name(g, i, &len);
            const tl_gguf_value *v = tl_gguf_kv_value(g, i);
            cJSON *e = cJSON_CreateObject();
            cJSON_AddItemToObject(e, "key", json_str(k, len, 4096));
            cJSON_AddStringToObject(e, "type", tl_gguf_vtype_name(v->type));
            cJSON_AddItemToObject(e, "value", json_value(v));
            cJSON_AddItemToArray(md, e);
        }
    } else {
        cJSON_AddStringToObject(root, "shape", I->shape->name);
        cJSON_AddStringToObject(root, "source", I->shape->source);
        cJSON_AddStringToObject(root, "weight_type", tl_type_name(I->shape_type));
    }
    if (I->model_skip[0]) {
        cJSON_AddStringToObject(root, "model_skipped", I->model_skip);
    } else {
        const tl_config *c = &I->cfg;
        cJSON *m = cJSON_AddObjectToObject(root, "model");
        cJSON_AddStringToObject(m, "arch", c->arch_name);
        cJSON_AddNumberToObject(m, "n_layer", c->n_layer);
        cJSON_AddNumberToObject(m, "n_embd", c->n_embd);
        cJSON_AddNumberToObject(m, "n_ff", c->n_ff);
        cJSON_AddNumberToObject(m, "n_head", c->n_head);
        cJSON_AddNumberToObject(m, "n_head_kv", c->n_head_kv);
        cJSON_AddNumberToObject(m, "head_dim_k", c->head_dim_k);
        cJSON_AddNumberToObject(m, "head_dim_v", c->head_dim_v);
        cJSON_AddNumberToObject(m, "n_vocab", c->n_vocab);
        cJSON_AddNumberToObject(m, "n_ctx_train", c->n_ctx_train);
        cJSON_AddStringToObject(m, "rope_style", c->rope_style == TL_ROPE_NORM ? "norm" : "neox");
        cJSON_AddNumberToObject(m, "rope_base", c->rope_base);
        cJSON_AddNumberToObject(m, "n_rot", c->n_rot);
        cJSON_AddNumberToObject(m, "rope_freq_scale", c->rope_freq_scale);
        cJSON_AddBoolToObject(m, "rope_freqs", I->rope_freqs);
        cJSON_AddBoolToObject(m, "longrope", I->longrope);
        cJSON_AddNumberToObject(m, "n_ctx_orig", c->n_ctx_orig);
        cJSON_AddNumberToObject(m, "rope_attn_factor", c->rope_attn_factor);
        cJSON_AddNumberToObject(m, "attn_scale", c->attn_scale);
        cJSON_AddNumberToObject(m, "attn_softcap", c->attn_softcap);
        cJSON_AddNumberToObject(m, "final_softcap", c->final_softcap);
        cJSON_AddNumberToObject(m, "norm_eps", c->norm_eps);
        cJSON_AddNumberToObject(m, "sliding_window", c->sliding_window);
        cJSON *sw = cJSON_AddArrayToObject(m, "sliding_layers");
        for (int il = 0; il < c->n_layer; il++)
            if (c->sliding_window > 0 && c->layer_swa[il]) cJSON_AddItemToArray(sw, cJSON_CreateNumber(il));
        cJSON_AddBoolToObject(m, "tied_output", I->tied);
        cJSON_AddNumberToObject(m, "weight_bytes", (double)I->weights);
    }
    if (I->g) {
        const tl_gguf *g = I->g;
        cJSON_AddNumberToObject(root, "n_tensors", (double)tl_gguf_n_tensors(g));
        cJSON_AddNumberToObject(root, "tensor_bytes", (double)I->tensor_bytes);
        cJSON *ty = cJSON_AddArrayToObject(root, "tensor_types");
        for (int t = 0; t < TL_TYPE_COUNT; t++) {
            if (!I->type_count[t]) continue;
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "type", tl_type_name(t));
            cJSON_AddNumberToObject(e, "count", (double)I->type_count[t]);
            cJSON_AddNumberToObject(e, "bytes", (double)I->type_bytes[t]);
            cJSON_AddItemToArray(ty, e);
        }
        if (tensors) {
            cJSON *ta = cJSON_AddArrayToObject(root, "tensors");
            for (int64_t i = 0; i < tl_gguf_n_tensors(g); i++) {
                const tl_gguf_tensor *t = tl_gguf_tensor_at(g, i);
                cJSON *e = cJSON_CreateObject();
                cJSON_AddItemToObject(e, "name", json_str(t->name, strlen(t->name), 4096));
                cJSON_AddStringToObject(e, "type", tl_type_name(t->type));
                cJSON *sh = cJSON_AddArrayToObject(e, "shape");
                for (uint32_t d = 0; d < t->n_dims; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->ne[d]));
                cJSON_AddNumberToObject(e, "bytes", (double)t->nbytes);
                cJSON_AddNumberToObject(e, "offset", (double)t->offset);
                cJSON_AddItemToArray(ta, e);
            }
        }
    }
    if (I->have_mem) {
        const tl_mem_plan *p = &I->mp;
        cJSON *m = cJSON_AddObjectToObject(root, "memory");
        cJSON_AddNumberToObject(m, "n_ctx", p->n_ctx);
        cJSON_AddNumberToObject(m, "chunk", p->chunk);
        cJSON_AddStringToObject(m, "kv_policy", I->plan_text);
        cJSON_AddNumberToObject(m, "weights", (double)p->weights);
        cJSON_AddNumberToObject(m, "weights_file", (double)p->weights_file);
        cJSON_AddNumberToObject(m, "weights_packed", (double)p->weights_packed);
        cJSON_AddNumberToObject(m, "kv", (double)p->kv);
        cJSON_AddItemToObject(m, "kv_parts", json_parts(&p->kv_parts));
        cJSON_AddNumberToObject(m, "activations", (double)p->activations);
        cJSON_AddNumberToObject(m, "total", (double)(p->weights + p->kv + p->activations));
        cJSON *layers = cJSON_AddArrayToObject(m, "kv_layers");
        for (int il = 0; il < I->cfg.n_layer; il++) {
            char pol[128];
            tl_kv_policy_format(&p->eff[il], pol, sizeof pol);
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "policy", pol);
            cJSON_AddNumberToObject(e, "window", p->window[il]);
            cJSON_AddNumberToObject(e, "bytes", (double)p->kv_layer[il]);
            cJSON_AddItemToArray(layers, e);
        }
    }
    if (I->have_gp) {
        cJSON *d = cJSON_AddObjectToObject(root, "device_memory");
        cJSON_AddStringToObject(d, "device", I->device);
        tl_device_plan_json(d, &I->gp);
    }
    char *txt = cJSON_Print(root);
    fprintf(f, "%s\n", txt);
    free(txt);
    cJSON_Delete(root);
}

tl_info *tl_info_open(const tl_info_params *p, tl_error *err) {
    tl_info *I = tl_xcalloc(1, sizeof *I);
    I->shape_type = p->type;
    I->device = p->device && strcmp(p->device, "cpu") ? p->device : NULL;
    I->cuda = p->cuda;
    if (p->shape) {
        I->shape = p->shape;
        tl_synth_config(I->shape, p->n_layer, 0, 0, &I->cfg);
        I->tied = I->shape->tied;
        I->rope_freqs = I->shape->rope_factor > 0;
        I->longrope = I->shape->longrope_ctx > 0;
        I->weights = tl_synth_weight_bytes(I->shape, p->type, p->n_layer, 0);
        return I;
    }
    I->path = p->path;
    if (!(I->g = tl_gguf_open(p->path, err))) {
        tl_info_free(I);
        return NULL;
    }
    for (int64_t i = 0; i < tl_gguf_n_tensors(I->g); i++) {
        const tl_gguf_tensor *t = tl_gguf_tensor_at(I->g, i);
        I->tensor_bytes += t->nbytes;
        if ((int)t->type >= 0 && (int)t->type < TL_TYPE_COUNT) {
            I->type_count[t->type]++;
            I->type_bytes[t->type] += t->nbytes;
        }
    }
    tl_error merr = {{0}};
    if (!(I->m = tl_model_load(p->path, &merr))) {
        snprintf(I->model_skip, sizeof I->model_skip, "not a model tailor can run (%s)", merr.msg);
    } else {
        I->cfg = I->m->cfg;
        I->tied = I->m->w.tied_output;
        I->rope_freqs = I->m->w.rope_freqs != NULL;
        I->longrope = I->m->w.rope_long != NULL;
        I->weights = I->m->weight_bytes;
    }
    return I;
}

void tl_info_free(tl_info *I) {
    if (!I) return;
    free(I->plan_text);
    tl_model_free(I->m);
    tl_gguf_close(I->g);
    free(I);
}

bool tl_info_has_model(const tl_info *I) { return !I->model_skip[0]; }
int tl_info_n_layer(const tl_info *I) { return I->cfg.n_layer; }

int tl_info_memory(tl_info *I, const tl_kv_plan *plan, int n_ctx, int chunk, tl_error *err) {
    const tl_config *c = &I->cfg;
    const tl_plan_target t = {.cfg = c, .model = I->m, .type = I->shape_type, .weights = I->weights};
    if (tl_plan_memory(&t, n_ctx, chunk, plan->layers, -1, &I->mp, err)) return -1;
    free(I->plan_text);
    I->plan_text = tl_kv_plan_format(plan);
    I->per_layer = false;
    for (int il = 1; il < c->n_layer; il++)
        if (!tl_kv_policy_equal(&I->mp.eff[il], &I->mp.eff[0]) || I->mp.window[il] != I->mp.window[0])
            I->per_layer = true;
    I->have_mem = true;
    if (!I->device) return 0;
    if (!I->m)
        return tl_fail(err, "--device %s: the device plan needs a model file (a --shape has no tensors to size; "
                            "`tailor synth --shape NAME` writes one)", I->device);
    const tl_backend_ops *be = tl_backend_find(I->device, err);
    if (!be) return -1;
    if (!be->plan_for) return tl_fail(err, "--device %s: the backend has no device memory plan", I->device);
    tl_session_params sp = tl_session_default_params();
    sp.n_ctx = I->mp.n_ctx;
    sp.chunk = I->mp.chunk;
    sp.device = I->device;
    sp.cuda = I->cuda;
    if (be->plan_for(I->m, &sp, I->mp.eff, &I->gp, err)) return tl_fail_prefix(err, "--device %s", I->device);
    I->have_gp = true;
    return 0;
}

void tl_device_plan_json(cJSON *o, const tl_device_plan *p) {
    cJSON_AddNumberToObject(o, "weights", (double)p->weights);
    cJSON_AddNumberToObject(o, "workspace", (double)p->workspace);
    cJSON_AddNumberToObject(o, "kv_device", (double)p->kv_device);
    cJSON_AddNumberToObject(o, "kv_host", (double)p->kv_host);
    cJSON_AddNumberToObject(o, "activations", (double)p->activations);
    cJSON_AddNumberToObject(o, "reserve", (double)p->reserve);
    cJSON_AddNumberToObject(o, "total", (double)p->total);
}

void tl_info_print(const tl_info *I, FILE *f, bool json, bool tensors) {
    if (json) print_json(f, I, tensors);
    else print_md(f, I, tensors);
}
