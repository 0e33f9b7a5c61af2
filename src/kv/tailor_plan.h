/* tailor_plan.h: TailorKV plans. The calibration writes which layers are dense (quantize) and
 * which sparse (offload + retrieve); the --kv spec turns that into one policy per layer.
 *
 * Spec: "tailor[:FIELD=VALUE,...]" (':' after "tailor", ',' between fields; every field
 * optional):
 *   plan=FILE       calibration plan (JSON, below); without it layer 0 is dense, the rest sparse
 *   tau=T           re-decide the plan's layers from its scores: dense iff score > T
 *   dense=LIST      dense layers, overriding the plan ("0", "0-1", "0,3" is not possible inside
 *                   the spec: use '+' between items, e.g. dense=0+3-4)
 *   bits=1|2|4|8    dense layers' KIVI bits (1)            g=N  their group (64)   r=N  residual (128)
 *   budget=192|1024 the paper's presets: 192 = sinks 8, recent 56, topk 128, channels 8;
 *                   1024 = sinks 64, recent 64, topk 896, channels 12 (fields given win)
 *   sinks=N (8) recent=N (56) topk=N (128) channels=N (8)
 *   summary=0|2|4|8 device-resident channel-major key summary bits (0: fetch channel rows, the paper)
 *   page=N          page-level retrieval of N-token pages (0: token-level)
 * Dense layers get "k<b>v<b>:kchan:vtok:g<g>:r<r>" (KIVI: per-channel keys, per-token values,
 * asymmetric); sparse layers kind TL_KV_OFFLOAD; sliding-window layers (plan "window") f16.
 *
 * Plan JSON (written by `tailor calibrate`):
 *   {"model": "...", "n_layers": 30, "tau": 0.2, "top": 0.05, "n_q": 32, "n_tokens": 4096,
 *    "scores": [0.61, 0.05, ...], "layers": {"0": "dense", "1": "sparse", ..., "5": "window"}}
 * Its "layers" values are not policy texts, so giving it to `--kv plan.json` fails loudly;
 * use `--kv tailor:plan=plan.json`. */
#ifndef TL_KV_TAILOR_PLAN_H
#define TL_KV_TAILOR_PLAN_H

#include "policy.h"
#include "offload.h"

#include <stdio.h>

/* tl_tailor_layer_kind (dense, sparse, window) and tl_tailor_plan_json, the calibration's plan
 * file: include/tailor.h. */

/* Does this --kv spec name a TailorKV plan ("tailor" or "tailor:...")? */
bool tl_tailor_spec(const char *spec);

/* Parse a tailor spec into one policy per layer (plan->layers malloc'd; free with
 * tl_kv_plan_free). Errors name the field: "--kv 'tailor:bits=3': bits 3 not supported". */
int tl_tailor_plan_parse(tl_kv_plan *plan, const char *spec, int n_layers, tl_error *err);

/* Read a plan JSON text (`where` names it in errors). kinds (n_layers) receives the layer kinds;
 * scores (may be NULL) the scores (NAN where absent); tau (may be NULL) the plan's threshold. */
int tl_tailor_plan_read(const char *json, const char *where, int n_layers, int *kinds, double *scores, double *tau,
                        tl_error *err);

/* Sum of the offload counters of every offloading layer of kv[0..n_layers); returns how many
 * layers offload. decode_steps and unpredicted are the maximum over layers (every sparse layer
 * sees every decode step), so h2d_decode / decode_steps is the traffic per generated token. */
int tl_tailor_traffic(tl_kv_layer *const *kv, int n_layers, tl_kv_offload_stats *sum);

/* One line for --mem: "tailorKV: device X MiB, host Y MiB, h2d Z KiB/token (channels W KiB),
 * N sparse layers" (nothing is printed and 0 returned when no layer offloads). */
int tl_tailor_print_mem(FILE *f, tl_kv_layer *const *kv, int n_layers);

#endif
