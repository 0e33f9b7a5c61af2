/* offload.h: TailorKV's sparse-layer store (kind TL_KV_OFFLOAD): two tiers, retrieval of the
 * dominant prompt tokens per decode step, and exact accounting of bytes per tier and of bytes
 * moved between them. Semantics are described at the top of offload.c. */
#ifndef TL_KV_OFFLOAD_H
#define TL_KV_OFFLOAD_H

#include "kv.h"

/* Create a sparse-layer store. Refuses sliding-window shapes (those layers keep their
 * window in a dense store) and parameters that do not fit (negative sizes, summary bits other
 * than 0, 2, 4, 8). */
tl_kv_layer *tl_kv_offload_new(const tl_kv_layer_policy *p, const tl_kv_shape *s, tl_error *err);

/* Is this layer an offloading store? */
bool tl_kv_is_offload(const tl_kv_layer *l);

/* Exact resident bytes after n_tokens prompt tokens (appended in chunks of > 1 token) and no
 * generated tokens; equals what ops->bytes reports. Device tier in codes (K/V rows) and other
 * (max|K|, key summary); host tier in host. */
int tl_kv_offload_bytes_formula(const tl_kv_layer_policy *p, const tl_kv_shape *s, int64_t n_tokens, tl_kv_bytes *b,
                                tl_error *err);
/* Same with n_gen generated (single-token) tokens held on the device as well. */
int tl_kv_offload_bytes_formula2(const tl_kv_layer_policy *p, const tl_kv_shape *s, int64_t n_prompt, int64_t n_gen,
                                 tl_kv_bytes *b, tl_error *err);

/* Bytes one decode step of one layer moves host -> device with n_prompt prompt tokens in the
 * host tier: channel rows (summary_bits == 0 and scoring needed) + the retrieved K/V rows.
 * Exact for token-level retrieval; for page-level retrieval an upper bound (a partial last
 * page may be picked). channels_part (may be NULL) receives the channel-row part. */
uint64_t tl_kv_offload_step_traffic(const tl_kv_offload_params *p, const tl_kv_shape *s, int64_t n_prompt,
                                    uint64_t *channels_part);

typedef struct {
    uint64_t h2d_decode;   /* host -> device bytes in decode steps (channel rows + retrieved rows) */
    uint64_t h2d_channels; /* the channel-row part of h2d_decode */
    uint64_t h2d_prefill;  /* host tier read back by later prefill chunks (dense prefill) */
    uint64_t d2h;          /* prompt K/V written to the host tier */
    int64_t decode_steps;
    int64_t unpredicted;   /* decode steps without a query prediction (channels from the real query) */
    uint64_t tokens_attended; /* sum over decode steps of tokens attended per KV head */
} tl_kv_offload_stats;

/* Counters since creation (clear() resets them too). Returns -1 if l is not an offload store. */
int tl_kv_offload_traffic(const tl_kv_layer *l, tl_kv_offload_stats *st);

/* Testing: the host-tier indices (ascending) retrieved for KV head h in the last decode step.
 * Returns how many (writes at most max). */
int tl_kv_offload_last_selection(const tl_kv_layer *l, int h, int *idx, int max);

#endif
