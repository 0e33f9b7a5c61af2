/* sched.c: slots, the bounded queue and the step loop (continuous batching).
 *
 * P slots, each owning one tl_session (KV cache sized by the policy and n_ctx). One thread runs
 * the steps: it admits waiting jobs into free slots, then runs one batched forward step
 * (engine/batch.c, all n_threads threads) over every running job: the next token of each one that is
 * generating, plus prompt chunks of the others, oldest first, up to the step's token budget
 * (--batch-tokens); jobs join and leave between steps. With --device cuda the sessions hold
 * their KV caches on the GPU and the step runs there (src/cuda/batch.cu), the same loop
 * otherwise. Jobs wait in a FIFO of fixed capacity.
 * A request takes its place before it parses and tokenizes its body (tl_sched_reserve), so that
 * work counts against the same P + Q as the queue; a reservation that would exceed P running +
 * capacity waiting is refused (the HTTP layer answers 429).
 * Each job's sampling is tailor generate's loop, token for token (same sampler calls in the
 * same order), and its prompt is cut into the same chunks, so equal prompt, seed and parameters
 * give equal text. What shares its steps changes its logits at most by the order of float
 * additions, and not at all for quantized weights on AVX-512 VNNI (tests/engine/test_batch.c).
 *
 * Admission by memory: with a KV budget, a job is queued only once the planner's KV bytes at
 * its largest context (tl_plan_kv_bytes) fit beside those of the jobs queued and running; otherwise
 * its connection thread waits for room (first come, first served), up to a bound.
 *
 * Prefix reuse: a slot keeps its KV after a job (the tokens it holds in `cache`). A new job goes
 * to the free slot holding the longest common prefix with its prompt when that covers more
 * than half of it (else to an empty slot, else the longest prefix; pick_slot); the session is
 * cut back to that prefix (tl_session_truncate, at the largest count
 * its stores hold exactly: tl_session_truncate_max) and only the rest of the prompt is
 * evaluated, in chunks from there. Idle slots' KV counts against the budget and is dropped,
 * idle longest first, when a job admitted needs the room.
 *
 * Per-request KV plans (--kv-allow, CPU): a job may carry another of the server's plans; its
 * admission counts that plan's bytes, it prefers a free slot of its plan (a prefix is reused
 * only between jobs of one plan), and a slot of another plan makes its session again for it
 * (slot_start).
 *
 * Locking: sched->mu guards the queue and slot bookkeeping; job->mu guards a job's output.
 * sched->mu may be held while taking job->mu, never the other way round. */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    tl_sched *owner;
    tl_session *sess;
    int kv_plan;     /* the plan sess was made with (tl_job.kv_plan's numbering) */
    tl_job *job;     /* running job (set and cleared under owner->mu) */
    tl_kv_bytes kv;  /* KV bytes held now (under owner->mu) */
    uint64_t kv_peak; /* the most it has held (under owner->mu) */
    uint64_t last_used; /* admission number of its latest job (under owner->mu): idle-longest first */
    /* the tokens whose KV the session holds, in order (cache[0..n_cache) = its n_past tokens);
     * written by the step loop, read under owner->mu while the slot is free */
    int32_t *cache;
    int n_cache;
    /* the running job's progress, the step loop's alone */
    uint64_t admitted; /* admission order: older prompts get the step's rows first */
    tl_sampler *smp;
    int fed;           /* prompt tokens in the session */
    bool decoding;     /* the prompt is in: each step feeds `next` and samples the one after */
    bool echo;         /* the prompt's rows' logits are kept (echo + logprobs), in `rows` */
    int32_t next;
    int n_gen, max_new;
    float *logits;     /* [n_vocab]: the next position's */
    float *rows;       /* [ECHO_PIECE][n_vocab] for echo jobs */
    float *raw;        /* [n_vocab]: logits before sampling, for logprobs */
    double t0, t1;     /* when the prompt started, when generation started */
} slot;

struct tl_sched {
    tl_model *m;
    tl_metrics *metrics;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    tl_job **q;
    int q_cap, q_head, q_len;
    int n_reserved; /* places held by requests still parsing and tokenizing */
    int n_running;
    int n_slots;
    bool stop;
    slot *slots;
    uint64_t n_admitted;
    tl_batch *batch; /* the step's workspace and thread pool */
    int batch_tokens, chunk;
    pthread_t th;    /* the step loop */
    bool started;
    int n_ctx, n_vocab;
    tl_session_mem slot_mem; /* slot 0's memory before any work, for the start-up report */
    /* admission by memory */
    tl_kv_plan plan;         /* every slot's KV plan (on the CPU auto layers resolved once; the
                                batch keeps a pointer); layers NULL = f16 */
    bool own_plan;           /* plan.layers is ours to free */
    tl_kv_plan *allow;       /* [n_allow + 1]: plans a request may ask for, [k] for job kv_plan k
                                (auto layers resolved; [0] unused: the slots' plan above) */
    int n_allow;
    uint64_t kv_budget;      /* 0 = none */
    uint64_t kv_reserved;    /* kv_need of queued and running jobs (under mu) */
    int kv_wait_ms;
    tl_job **kv_wait;        /* jobs waiting for KV room, oldest first (under mu) */
    int n_kv_wait;
    pthread_cond_t kv_cv;    /* KV room freed, or a waiter left (CLOCK_MONOTONIC) */
};

/* Plan k of the numbering of tl_job.kv_plan (NULL: f16). */
static const tl_kv_plan *plan_of(const tl_sched *S, int k) {
    if (k > 0) return &S->allow[k];
    return S->plan.layers ? &S->plan : NULL;
}

static void slot_finish(slot *sl, tl_finish fin, const char *fail);

/* ---------------- jobs ---------------- */

tl_job *tl_job_new(void) {
    tl_job *j = tl_xcalloc(1, sizeof *j);
    pthread_mutex_init(&j->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* waits must not jump with the wall clock */
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    j->refs = 1;
    j->max_tokens = -1;
    j->logprobs = -1;
    j->cache_prompt = true;
    j->cap = 256;
    j->text = tl_xmalloc(j->cap);
    j->text[0] = 0;
    atomic_init(&j->cancel, false);
    return j;
}

void tl_job_ref(tl_job *j) {
    pthread_mutex_lock(&j->mu);
    j->refs++;
    pthread_mutex_unlock(&j->mu);
}

void tl_job_unref(tl_job *j) {
    if (!j) return;
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left) return;
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    for (int i = 0; i < j->n_stop; i++) free(j->stop[i]);
    free(j->lp);
    free(j->prompt);
    free(j->text);
    free(j);
}

void tl_job_wait(tl_job *j, size_t sent, int timeout_ms) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += (long)timeout_ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&j->mu);
    while (j->state != TL_JOB_DONE && j->safe_len <= sent)
        if (pthread_cond_timedwait(&j->cv, &j->mu, &ts) == ETIMEDOUT) break;
    pthread_mutex_unlock(&j->mu);
}

/* Mark done and wake the waiter (job->mu not held). */
static void job_finish(tl_job *j, tl_finish f, const char *err) {
    pthread_mutex_lock(&j->mu);
    j->state = TL_JOB_DONE;
    j->finish = f;
    j->safe_len = j->len;
    if (err) snprintf(j->err, sizeof j->err, "%s", err);
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

/* Bytes at the end of the text that must wait: a character not yet complete, or the start
 * of a stop string that the next token may finish. */
static size_t held_back(const tl_job *j) {
    size_t hold = tl_utf8_incomplete_tail(j->text, j->len);
    for (int i = 0; i < j->n_stop; i++) {
        size_t sl = strlen(j->stop[i]);
        for (size_t k = TL_MIN(sl - 1, j->len); k > hold; k--)
            if (!memcmp(j->text + j->len - k, j->stop[i], k)) {
                hold = k;
                break;
            }
    }
    return hold;
}

/* Append a piece; returns true if a stop string now appears (text cut before it). */
static bool job_append(tl_job *j, const char *piece, size_t n) {
    pthread_mutex_lock(&j->mu);
    size_t old = j->len;
    if (j->len + n + 1 > j->cap) {
        j->cap = (j->len + n + 1) * 2;
        j->text = tl_xrealloc(j->text, j->cap);
    }
    memcpy(j->text + j->len, piece, n);
    j->len += n;
    j->text[j->len] = 0;
    j->n_gen++;
    bool hit = false;
    size_t cut = j->len;
    for (int i = 0; i < j->n_stop; i++) {
        size_t sl = strlen(j->stop[i]);
        size_t from = old >= sl - 1 ? old - (sl - 1) : 0; /* a match must end in the new piece */
        const char *p = memmem(j->text + from, j->len - from, j->stop[i], sl);
        if (p && (size_t)(p - j->text) < cut) {
            cut = (size_t)(p - j->text);
            hit = true;
        }
    }
    if (hit) {
        j->len = cut;
        j->text[cut] = 0;
        j->stop_cut = true;
    } else {
        size_t safe = j->len - held_back(j);
        if (safe > j->safe_len) j->safe_len = safe;
        if (j->safe_len > old || safe == j->len) pthread_cond_broadcast(&j->cv);
    }
    pthread_mutex_unlock(&j->mu);
    return hit;
}

/* ---------------- log-probabilities ---------------- */

/* Append token id's entry, from the logits of the position that predicts it (NULL: none). */
static void lp_add(tl_job *j, int32_t id, const float *logits, int V) {
    if (j->n_lp == j->cap_lp) {
        j->cap_lp = j->cap_lp ? 2 * j->cap_lp : 64;
        j->lp = tl_xrealloc(j->lp, sizeof *j->lp * (size_t)j->cap_lp);
    }
    tl_tok_lp *e = &j->lp[j->n_lp++];
    memset(e, 0, sizeof *e);
    e->id = id;
    e->logprob = NAN;
    if (!logits) return;
    float mx = logits[0];
    for (int i = 1; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)logits[i] - mx);
    const double lse = mx + log(sum);
    e->logprob = (float)(logits[id] - lse);
    /* the top N by insertion into a short sorted list (ties: lower id first) */
    const int N = j->logprobs;
    for (int i = 0; i < V && N > 0; i++) {
        const float x = logits[i];
        if (e->n_top == N && x <= logits[e->top_id[N - 1]]) continue;
        int k = e->n_top < N ? e->n_top++ : N - 1;
        while (k > 0 && logits[e->top_id[k - 1]] < x) {
            e->top_id[k] = e->top_id[k - 1];
            k--;
        }
        e->top_id[k] = i;
    }
    for (int k = 0; k < e->n_top; k++) e->top_lp[k] = (float)(logits[e->top_id[k]] - lse);
}

/* ---------------- the step loop ---------------- */

/* An echo job's prompt goes in pieces of at most this many rows, every row's logits kept. */
enum { ECHO_PIECE = 64 };

static void slot_update_kv(slot *sl) {
    tl_session_mem mem;
    tl_session_memory(sl->sess, &mem);
    pthread_mutex_lock(&sl->owner->mu);
    sl->kv = mem.kv_parts;
    sl->kv_peak = TL_MAX(sl->kv_peak, tl_kv_bytes_total(&mem.kv_parts));
    pthread_mutex_unlock(&sl->owner->mu);
}

/* Forget the slot's KV (the step loop's; the slot is free or its job starts anew). */
static void slot_drop_cache(slot *sl) {
    tl_session_reset(sl->sess);
    pthread_mutex_lock(&sl->owner->mu);
    sl->n_cache = 0;
    pthread_mutex_unlock(&sl->owner->mu);
    slot_update_kv(sl);
}

/* Tokens at the start of a[0..na) and b[0..nb) that are equal. */
static int common_prefix(const int32_t *a, int na, const int32_t *b, int nb) {
    int n = 0;
    while (n < na && n < nb && a[n] == b[n]) n++;
    return n;
}

/* Prompt tokens of j a slot can reuse: the common prefix, short of the last prompt token (it is
 * evaluated for the first sample's logits); none when j evaluates its whole prompt (echo with
 * logprobs needs every prompt row's logits; cache_prompt false). */
static int reusable(const slot *sl, const tl_job *j) {
    if (!j->cache_prompt || (j->echo && j->logprobs >= 0)) return 0;
    return common_prefix(sl->cache, sl->n_cache, j->prompt, j->n_prompt - 1);
}

/* A job taken from the queue starts in its slot: the prompt is to be fed from its start. */
static void slot_start(slot *sl) {
    tl_job *j = sl->job;
    const int V = sl->owner->n_vocab;
    pthread_mutex_lock(&j->mu);
    j->state = TL_JOB_RUNNING;
    j->t_start = tl_time_s();
    pthread_mutex_unlock(&j->mu);
    if (sl->kv_plan != j->kv_plan) { /* a request of another KV plan: the slot's session made again */
        tl_error e = {{0}};
        tl_session *s = tl_batch_session_new_plan(sl->owner->batch, plan_of(sl->owner, j->kv_plan), &e);
        if (!s) {
            sl->t0 = tl_time_s();
            sl->decoding = false;
            sl->n_gen = 0;
            return slot_finish(sl, TL_FINISH_ERROR, e.msg);
        }
        tl_session_free(sl->sess);
        sl->sess = s;
        sl->kv_plan = j->kv_plan;
        slot_drop_cache(sl); /* (empty: the KV held is the new session's) */
    }
    /* the prefix the slot holds (reusable), cut back to where its stores hold it exactly */
    int keep = tl_session_truncate_max(sl->sess, reusable(sl, j));
    tl_error err = {{0}};
    if (keep == 0 || tl_session_truncate(sl->sess, keep, &err)) { /* (truncate_max said it can) */
        slot_drop_cache(sl);
        keep = 0;
    }
    pthread_mutex_lock(&sl->owner->mu);
    sl->n_cache = keep;
    pthread_mutex_unlock(&sl->owner->mu);
    pthread_mutex_lock(&j->mu);
    j->n_cached = keep;
    pthread_mutex_unlock(&j->mu);
    sl->smp = tl_sampler_new(&j->sp, V);
    for (int i = 0; i < j->n_prompt; i++) tl_sampler_accept(sl->smp, j->prompt[i]);
    sl->fed = keep;
    sl->decoding = false;
    sl->n_gen = 0;
    const int room = tl_session_n_ctx(sl->sess) - j->n_prompt;
    sl->max_new = j->max_tokens < 0 ? room : TL_MIN(j->max_tokens, room);
    sl->t0 = tl_time_s();
    sl->echo = j->echo && j->logprobs >= 0;
    if (sl->echo) {
        sl->rows = tl_xmalloc(sizeof(float) * (size_t)ECHO_PIECE * V);
        pthread_mutex_lock(&j->mu);
        lp_add(j, j->prompt[0], NULL, V); /* the first token: nothing predicts it */
        pthread_mutex_unlock(&j->mu);
    }
    if (j->logprobs >= 0) sl->raw = tl_xmalloc(sizeof(float) * (size_t)V);
}

/* The job leaves its slot: counters, metrics, the slot given back, then the outcome published,
 * so a client that gets its answer can never find its own slot still taken. */
static void slot_finish(slot *sl, tl_finish fin, const char *fail) {
    tl_sched *S = sl->owner;
    tl_job *j = sl->job;
    const double now = tl_time_s();
    const double t_prompt = sl->decoding ? sl->t1 - sl->t0 : now - sl->t0;
    const double t_gen = sl->decoding ? now - sl->t1 : 0;
    tl_metrics_tokens(S->metrics, j->n_prompt - j->n_cached, j->n_cached, t_prompt, sl->n_gen, t_gen);
    pthread_mutex_lock(&j->mu);
    j->t_prompt = t_prompt;
    j->t_gen = t_gen;
    pthread_mutex_unlock(&j->mu);
    tl_sampler_free(sl->smp);
    free(sl->rows);
    free(sl->raw);
    sl->smp = NULL;
    sl->rows = sl->raw = NULL;
    if (fin == TL_FINISH_ERROR) slot_drop_cache(sl); /* a failed step: what the stores hold is unknown */
    else slot_update_kv(sl);                         /* the KV stays for the next job's prefix */
    pthread_mutex_lock(&S->mu);
    S->n_running--;
    S->kv_reserved -= j->kv_need;
    pthread_cond_broadcast(&S->kv_cv);
    sl->job = NULL;
    pthread_mutex_unlock(&S->mu);
    job_finish(j, fin, fail);
    tl_job_unref(j);
}

/* The logits of the position after the last fed token are in sl->logits: sample the next
 * token, as tailor generate's loop does, and either keep it to feed next step or end the job. */
static void slot_sample(slot *sl) {
    tl_job *j = sl->job;
    const tl_tokenizer *tok = tl_model_tokenizer(sl->owner->m);
    const int V = sl->owner->n_vocab;
    if (sl->n_gen >= sl->max_new) return slot_finish(sl, TL_FINISH_LENGTH, NULL);
    if (atomic_load(&j->cancel)) return slot_finish(sl, TL_FINISH_CANCELLED, NULL);
    if (sl->raw) memcpy(sl->raw, sl->logits, sizeof(float) * (size_t)V); /* the sampler edits its copy */
    const int32_t id = tl_sampler_sample(sl->smp, sl->logits);
    if (sl->raw) { /* an end-of-generation token too: its text is empty, its log-probability is not */
        pthread_mutex_lock(&j->mu);
        lp_add(j, id, sl->raw, V);
        pthread_mutex_unlock(&j->mu);
    }
    if (!j->ignore_eos && tl_tok_is_eog(tok, id)) return slot_finish(sl, TL_FINISH_STOP, NULL);
    sl->n_gen++;
    tl_sampler_accept(sl->smp, id);
    char piece[256];
    size_t np = tl_token_to_piece(tok, id, false, piece, sizeof piece);
    bool hit;
    if (np > sizeof piece) { /* rare: a very long piece */
        char *big = tl_xmalloc(np);
        np = tl_token_to_piece(tok, id, false, big, np);
        hit = job_append(j, big, np);
        free(big);
    } else {
        hit = job_append(j, piece, np);
    }
    if (hit) return slot_finish(sl, TL_FINISH_STOP, NULL);
    if (sl->n_gen == sl->max_new || tl_session_n_past(sl->sess) + 1 > tl_session_n_ctx(sl->sess))
        return slot_finish(sl, TL_FINISH_LENGTH, NULL);
    sl->next = id;
    if ((sl->n_gen & 31) == 0) slot_update_kv(sl);
}

/* After a step: the rows a slot fed are in its session; take what they gave. */
static void slot_advance(slot *sl, int n) {
    tl_job *j = sl->job;
    const int V = sl->owner->n_vocab;
    memcpy(sl->cache + sl->n_cache, sl->decoding ? &sl->next : j->prompt + sl->fed, sizeof(int32_t) * (size_t)n);
    sl->n_cache += n; /* (a running slot's cache is the step loop's alone) */
    if (sl->decoding) return slot_sample(sl);
    if (sl->echo) {
        pthread_mutex_lock(&j->mu);
        for (int r = 0; r < n && sl->fed + r + 1 < j->n_prompt; r++)
            lp_add(j, j->prompt[sl->fed + r + 1], sl->rows + (size_t)r * V, V);
        pthread_mutex_unlock(&j->mu);
        if (sl->fed + n == j->n_prompt) memcpy(sl->logits, sl->rows + (size_t)(n - 1) * V, sizeof(float) * (size_t)V);
    }
    sl->fed += n;
    if (sl->fed < j->n_prompt) return;
    j->n_lp_prompt = j->n_lp;
    sl->decoding = true;
    sl->t1 = tl_time_s();
    slot_update_kv(sl);
    slot_sample(sl);
}

/* One step: every decoding slot's next token, then prompt pieces of the other slots in the
 * order they were admitted, while they fit the step's budget. A prompt goes in whole pieces of
 * `chunk` rows (the last one shorter), as tailor generate cuts it, whatever shares its steps;
 * the oldest piece always fits (the budget holds a piece beside a token of every slot).
 * Returns the number of sequences; step[i] is the slot of seqs[i]. */
static int form_step(tl_sched *S, tl_batch_seq *seqs, slot **step) {
    int n = 0, rows = 0;
    for (int i = 0; i < S->n_slots; i++) {
        slot *sl = &S->slots[i];
        if (!sl->job || !sl->decoding) continue;
        step[n] = sl;
        seqs[n++] = (tl_batch_seq){.s = sl->sess, .tokens = &sl->next, .n = 1, .logits = sl->logits};
        rows++;
    }
    slot *pre[S->n_slots];
    int n_pre = 0;
    for (int i = 0; i < S->n_slots; i++) { /* by admission, oldest first */
        slot *sl = &S->slots[i];
        if (!sl->job || sl->decoding) continue;
        int k = n_pre++;
        while (k > 0 && pre[k - 1]->admitted > sl->admitted) pre[k] = pre[k - 1], k--;
        pre[k] = sl;
    }
    for (int i = 0; i < n_pre; i++) {
        slot *sl = pre[i];
        const tl_job *j = sl->job;
        const int take = TL_MIN(sl->echo ? TL_MIN(ECHO_PIECE, S->chunk) : S->chunk, j->n_prompt - sl->fed);
        if (rows + take > S->batch_tokens) continue; /* a later step */
        const bool last = sl->fed + take == j->n_prompt;
        step[n] = sl;
        seqs[n++] = (tl_batch_seq){.s = sl->sess, .tokens = j->prompt + sl->fed, .n = take,
                                   .logits = sl->echo ? sl->rows : last ? sl->logits : NULL, .all_logits = sl->echo};
        rows += take;
    }
    return n;
}

/* Whether empty slot a suits job j better than empty slot b: one of its plan, then the one
 * idle longest. */
static bool better_empty(const slot *a, const slot *b, const tl_job *j) {
    const bool sa = a->kv_plan == j->kv_plan, sb = b->kv_plan == j->kv_plan;
    return sa != sb ? sa : a->last_used < b->last_used;
}

/* The free slot for job j (under S->mu), NULL if none is free: the one sharing the longest
 * prefix with its prompt when that covers more than half of it (llama.cpp's default
 * similarity; a BOS or a short system prompt alone does not draw a request away from an empty
 * slot), else one holding nothing (other slots keep their KV), else the longest prefix, the one
 * idle longest among equals. */
static slot *pick_slot(tl_sched *S, const tl_job *j) {
    slot *best = NULL, *empty = NULL;
    int best_n = 0;
    for (int i = 0; i < S->n_slots; i++) {
        slot *sl = &S->slots[i];
        if (sl->job) continue;
        /* (with per-request plans: a slot of the job's plan first, as the one idle longest;
         * another plan's slot makes its session again, slot_start) */
        if (!sl->n_cache && (!empty || better_empty(sl, empty, j))) empty = sl;
        const int n = sl->kv_plan == j->kv_plan ? reusable(sl, j) : 0;
        if (!best || n > best_n || (n == best_n && sl->last_used < best->last_used)) best = sl, best_n = n;
    }
    return best && 2 * best_n > j->n_prompt ? best : empty ? empty : best;
}

/* With a budget: idle slots whose KV must go so that the running jobs' reservations and what
 * idle slots hold fit it, idle longest first (under S->mu). Returns how many, in out. */
static int pick_evictions(tl_sched *S, slot **out) {
    if (!S->kv_budget) return 0;
    uint64_t used = 0;
    for (int i = 0; i < S->n_slots; i++) {
        const slot *sl = &S->slots[i];
        used += sl->job ? sl->job->kv_need : sl->n_cache ? tl_kv_bytes_total(&sl->kv) : 0;
    }
    int n = 0;
    while (used > S->kv_budget) {
        slot *old = NULL;
        for (int i = 0; i < S->n_slots; i++) {
            slot *sl = &S->slots[i];
            bool taken = false;
            for (int k = 0; k < n; k++) taken |= out[k] == sl;
            if (!sl->job && sl->n_cache && !taken && (!old || sl->last_used < old->last_used)) old = sl;
        }
        if (!old) break;
        used -= tl_kv_bytes_total(&old->kv);
        out[n++] = old;
    }
    return n;
}

/* The scheduler thread: admit waiting jobs into free slots, drop cancelled ones, run one
 * batched step over all running jobs, repeat; sleep while there is nothing to do. */
static void *step_loop(void *arg) {
    tl_sched *S = arg;
    tl_batch_seq *seqs = tl_xcalloc((size_t)S->n_slots, sizeof *seqs);
    slot **step = tl_xcalloc((size_t)S->n_slots, sizeof *step);
    tl_error err = {{0}};
    for (;;) {
        slot *started[S->n_slots];
        int n_started = 0;
        pthread_mutex_lock(&S->mu);
        while (!S->stop && S->q_len == 0 && S->n_running == 0) pthread_cond_wait(&S->cv, &S->mu);
        if (S->stop && S->n_running == 0) {
            pthread_mutex_unlock(&S->mu);
            break;
        }
        while (S->q_len > 0 && !S->stop) {
            slot *sl = pick_slot(S, S->q[S->q_head]);
            if (!sl) break;
            sl->job = S->q[S->q_head];
            S->q_head = (S->q_head + 1) % S->q_cap;
            S->q_len--;
            S->n_running++;
            sl->admitted = sl->last_used = ++S->n_admitted;
            started[n_started++] = sl;
        }
        slot *evict[S->n_slots];
        const int n_evict = n_started ? pick_evictions(S, evict) : 0;
        pthread_mutex_unlock(&S->mu);
        for (int i = 0; i < n_evict; i++) slot_drop_cache(evict[i]);
        for (int i = 0; i < n_started; i++) slot_start(started[i]);
        for (int i = 0; i < S->n_slots; i++) /* cancelled (or shutting down) jobs leave at a step's edge */
            if (S->slots[i].job && atomic_load(&S->slots[i].job->cancel)) slot_finish(&S->slots[i], TL_FINISH_CANCELLED, NULL);

        const int n = form_step(S, seqs, step);
        if (!n) continue;
        if (tl_batch_eval(S->batch, seqs, n, &err)) {
            for (int i = 0; i < n; i++) slot_finish(step[i], TL_FINISH_ERROR, err.msg);
            continue;
        }
        for (int i = 0; i < n; i++) slot_advance(step[i], seqs[i].n);
    }
    free(seqs);
    free(step);
    return NULL;
}

/* ---------------- the scheduler ---------------- */

tl_sched *tl_sched_new(tl_model *m, const tl_sched_params *p, tl_metrics *metrics, tl_error *err) {
    if (p->n_parallel < 1) {
        tl_fail(err, "--parallel %d: need at least 1 slot", p->n_parallel);
        return NULL;
    }
    tl_sched *S = tl_xcalloc(1, sizeof *S);
    S->m = m;
    S->metrics = metrics;
    pthread_mutex_init(&S->mu, NULL);
    pthread_cond_init(&S->cv, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&S->kv_cv, &ca);
    pthread_condattr_destroy(&ca);
    S->kv_budget = p->kv_budget;
    S->kv_wait_ms = p->kv_wait_ms;
    S->n_slots = p->n_parallel;
    /* the ring holds waiting jobs; one spare place per slot covers jobs just submitted
     * while every slot is about to pick one up */
    S->q_cap = p->n_queue + p->n_parallel;
    S->q = tl_xcalloc((size_t)S->q_cap, sizeof *S->q);
    S->kv_wait = tl_xcalloc((size_t)S->q_cap, sizeof *S->kv_wait); /* waiters hold places: at most q_cap */
    S->slots = tl_xcalloc((size_t)S->n_slots, sizeof *S->slots);
    const bool cuda = p->device && !strcmp(p->device, "cuda");
    /* one set of policies for every slot, and for the planner's admission: on the CPU, auto
     * layers are measured once here, not once per slot (a GPU session measures its own) */
    if (p->kv && cuda) {
        S->plan = *p->kv;
    } else if (p->kv) {
        if (tl_kv_plan_resolve_auto(&S->plan, m, p->kv, p->n_threads, err)) {
            tl_sched_free(S);
            return NULL;
        }
        S->own_plan = true;
    }
    if (p->n_kv_allow && cuda) {
        tl_fail(err, "--kv-allow: per-request KV plans run on the CPU only (the GPU's batch plans the memory of "
                     "its slots for one plan)");
        tl_sched_free(S);
        return NULL;
    }
    S->allow = tl_xcalloc((size_t)p->n_kv_allow + 1, sizeof *S->allow);
    for (int k = 1; k <= p->n_kv_allow; k++) {
        if (tl_kv_plan_resolve_auto(&S->allow[k], m, &p->kv_allow[k - 1], p->n_threads, err)) {
            tl_fail_prefix(err, "--kv-allow %d", k);
            tl_sched_free(S);
            return NULL;
        }
        S->n_allow = k;
    }
    /* the sessions hold the KV caches; the step's activations and threads are the batch's */
    tl_session_params sp = tl_session_default_params();
    sp.n_ctx = p->n_ctx;
    sp.n_threads = p->n_threads;
    sp.kv = S->plan.layers ? &S->plan : NULL;
    sp.device = p->device;
    sp.gpu_mem_budget = p->gpu_mem_budget;
    sp.cuda = p->cuda;
    sp.prefill_q8 = p->prefill_q8;
    S->n_ctx = tl_model_resolve_n_ctx(m, p->n_ctx);
    /* a step holds a token of every slot and a prompt piece of up to `chunk` rows */
    S->n_vocab = tl_model_n_vocab(m);
    S->chunk = tl_plan_chunk(S->n_ctx, p->chunk);
    S->batch_tokens = p->batch_tokens > 0 ? p->batch_tokens : S->chunk + p->n_parallel;
    if (S->batch_tokens <= p->n_parallel) {
        tl_fail(err, "--batch-tokens %d: a step must hold one token of each of the %d slots (--parallel) and a prompt "
                     "piece: at least %d", S->batch_tokens, p->n_parallel, p->n_parallel + 1);
        tl_sched_free(S);
        return NULL;
    }
    S->chunk = TL_MIN(S->chunk, S->batch_tokens - p->n_parallel);
    /* the batch first: on the GPU it plans the memory of every slot before anything is allocated */
    if (!(S->batch = tl_batch_new_for(m, S->batch_tokens, S->n_slots, p->n_threads, &sp, err))) {
        tl_fail_prefix(err, "%d slot(s) (--parallel) of %d tokens", S->n_slots, S->n_ctx);
        tl_sched_free(S);
        return NULL;
    }
    /* each allowed plan must make a session of this model (a store that does not fit its shape
     * stops the start, not a request) */
    for (int k = 1; k <= S->n_allow; k++) {
        tl_session *probe = tl_batch_session_new_plan(S->batch, &S->allow[k], err);
        if (!probe) {
            tl_fail_prefix(err, "--kv-allow %d", k);
            tl_sched_free(S);
            return NULL;
        }
        tl_session_free(probe);
    }
    for (int i = 0; i < S->n_slots; i++) {
        slot *sl = &S->slots[i];
        sl->owner = S;
        if (!(sl->sess = tl_batch_session_new(S->batch, err))) {
            tl_fail_prefix(err, "slot %d", i);
            tl_sched_free(S);
            return NULL;
        }
        sl->logits = tl_xmalloc(sizeof(float) * (size_t)S->n_vocab);
        sl->cache = tl_xmalloc(sizeof(int32_t) * (size_t)S->n_ctx);
    }
    tl_session_memory(S->slots[0].sess, &S->slot_mem); /* before the step loop owns the sessions */
    S->slot_mem.activations = tl_batch_bytes(S->batch);
    int rc = pthread_create(&S->th, NULL, step_loop, S);
    if (rc) {
        tl_fail(err, "cannot start the step thread: %s", strerror(rc));
        tl_sched_free(S);
        return NULL;
    }
    S->started = true;
    return S;
}

int tl_sched_n_ctx(const tl_sched *s) { return s->n_ctx; }

void tl_sched_slot_memory(tl_sched *s, tl_session_mem *out) { *out = s->slot_mem; }

int tl_sched_reserve(tl_sched *S) {
    pthread_mutex_lock(&S->mu);
    int rc = TL_SUBMIT_OK;
    if (S->stop) rc = TL_SUBMIT_STOPPING;
    else if (S->n_running + S->q_len + S->n_reserved >= S->q_cap) rc = TL_SUBMIT_FULL;
    else S->n_reserved++;
    pthread_mutex_unlock(&S->mu);
    return rc;
}

void tl_sched_release(tl_sched *S) {
    pthread_mutex_lock(&S->mu);
    S->n_reserved--;
    pthread_mutex_unlock(&S->mu);
}

/* The job's KV need: the planner's bytes at its largest context. */
static uint64_t kv_need(const tl_sched *S, const tl_job *j, int *n_tokens) {
    const int64_t n = j->max_tokens < 0 ? S->n_ctx : TL_MIN((int64_t)j->n_prompt + j->max_tokens, S->n_ctx);
    *n_tokens = (int)n;
    tl_kv_bytes b;
    tl_error err = {{0}};
    if (tl_plan_kv_bytes(S->m, S->n_ctx, plan_of(S, j->kv_plan), n, &b, &err)) return 0; /* (cannot fail: the plans were parsed for this model) */
    return tl_kv_bytes_total(&b);
}

static void kv_wait_remove(tl_sched *S, const tl_job *j) {
    for (int k = 0; k < S->n_kv_wait; k++)
        if (S->kv_wait[k] == j) {
            memmove(S->kv_wait + k, S->kv_wait + k + 1, sizeof *S->kv_wait * (size_t)(S->n_kv_wait - k - 1));
            S->n_kv_wait--;
            pthread_cond_broadcast(&S->kv_cv); /* the next one may be first now */
            return;
        }
}

/* Under S->mu: wait until j is the oldest waiter and fits (0), or give up (a TL_SUBMIT_ code). */
static int kv_admit(tl_sched *S, tl_job *j, bool (*gone)(const void *), const void *ctx, tl_kv_refusal *why) {
    const double t0 = tl_time_s();
    if (!S->kv_budget) return TL_SUBMIT_OK;
    if (j->kv_need > S->kv_budget) return TL_SUBMIT_KV_TOO_BIG;
    S->kv_wait[S->n_kv_wait++] = j; /* at most the places of P + Q, its capacity */
    int rc = TL_SUBMIT_OK;
    for (;;) {
        if (S->stop) {
            rc = TL_SUBMIT_STOPPING;
            break;
        }
        if (S->kv_wait[0] == j && S->kv_reserved + j->kv_need <= S->kv_budget) break;
        const double left = t0 + S->kv_wait_ms / 1e3 - tl_time_s();
        if (left <= 0) {
            rc = TL_SUBMIT_KV_TIMEOUT;
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        const long ns = (long)(TL_MIN(left, 0.1) * 1e9); /* the client is checked every 100 ms */
        ts.tv_nsec += ns;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&S->kv_cv, &S->mu, &ts);
        if (gone) {
            pthread_mutex_unlock(&S->mu);
            const bool left_us = gone(ctx);
            pthread_mutex_lock(&S->mu);
            if (left_us) {
                rc = TL_SUBMIT_GONE;
                break;
            }
        }
    }
    kv_wait_remove(S, j);
    why->waited_s = tl_time_s() - t0;
    return rc;
}

int tl_sched_submit_reserved(tl_sched *S, tl_job *j, bool (*gone)(const void *ctx), const void *ctx,
                             tl_kv_refusal *why) {
    memset(why, 0, sizeof *why);
    if (j->kv_plan < 0 || j->kv_plan > S->n_allow) j->kv_plan = 0; /* (the router names only plans it has) */
    j->kv_need = kv_need(S, j, &why->n_tokens);
    pthread_mutex_lock(&S->mu);
    int rc = S->stop ? TL_SUBMIT_STOPPING : kv_admit(S, j, gone, ctx, why);
    why->need = j->kv_need;
    why->budget = S->kv_budget;
    why->available = S->kv_budget > S->kv_reserved ? S->kv_budget - S->kv_reserved : 0;
    S->n_reserved--; /* the place passes to the job, or is given back */
    if (rc == TL_SUBMIT_OK) {
        S->kv_reserved += j->kv_need;
        tl_job_ref(j);
        pthread_mutex_lock(&j->mu);
        j->state = TL_JOB_QUEUED;
        j->t_queued = tl_time_s();
        pthread_mutex_unlock(&j->mu);
        S->q[(S->q_head + S->q_len) % S->q_cap] = j;
        S->q_len++;
        pthread_cond_signal(&S->cv);
    }
    pthread_mutex_unlock(&S->mu);
    return rc;
}

void tl_sched_cancel(tl_sched *S, tl_job *j) {
    atomic_store(&j->cancel, true);
    bool removed = false;
    pthread_mutex_lock(&S->mu);
    for (int k = 0; k < S->q_len; k++) {
        int at = (S->q_head + k) % S->q_cap;
        if (S->q[at] != j) continue;
        for (int r = k; r + 1 < S->q_len; r++) /* close the gap, keeping FIFO order */
            S->q[(S->q_head + r) % S->q_cap] = S->q[(S->q_head + r + 1) % S->q_cap];
        S->q_len--;
        S->kv_reserved -= j->kv_need;
        pthread_cond_broadcast(&S->kv_cv);
        removed = true;
        break;
    }
    pthread_mutex_unlock(&S->mu);
    if (removed) {
        job_finish(j, TL_FINISH_CANCELLED, NULL);
        tl_job_unref(j); /* the queue's reference */
    }
}

void tl_sched_stats_get(tl_sched *S, tl_sched_stats *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&S->mu);
    out->n_slots = S->n_slots;
    out->n_busy = S->n_running;
    out->n_queued = S->q_len;
    out->n_reserved = S->n_reserved;
    out->n_queue_cap = S->q_cap - S->n_slots;
    out->n_kv_waiting = S->n_kv_wait;
    out->kv_reserved = S->kv_reserved;
    out->kv_budget = S->kv_budget;
    for (int i = 0; i < S->n_slots; i++) {
        const slot *sl = &S->slots[i];
        const tl_kv_bytes *b = &sl->kv;
        out->kv_resident += sl->kv_peak;
        if (!sl->job && sl->n_cache) {
            out->n_cached++;
            out->kv_cached += tl_kv_bytes_total(b);
        }
        out->kv.codes += b->codes;
        out->kv.scales += b->scales;
        out->kv.residual += b->residual;
        out->kv.other += b->other;
        out->kv.host += b->host;
    }
    out->kv_total = tl_kv_bytes_total(&out->kv);
    pthread_mutex_unlock(&S->mu);
}

/* Stop taking work, cancel what runs and what waits, and join the step loop. Waiters see
 * every job finished afterwards, so connection threads can end. */
void tl_sched_shutdown(tl_sched *S) {
    pthread_mutex_lock(&S->mu);
    S->stop = true;
    for (int i = 0; i < S->n_slots; i++)
        if (S->slots[i].job) atomic_store(&S->slots[i].job->cancel, true);
    tl_job *waiting[S->q_cap > 0 ? S->q_cap : 1];
    int n_wait = S->q_len;
    for (int k = 0; k < n_wait; k++) {
        waiting[k] = S->q[(S->q_head + k) % S->q_cap];
        S->kv_reserved -= waiting[k]->kv_need;
    }
    S->q_len = 0;
    pthread_cond_broadcast(&S->cv);
    pthread_cond_broadcast(&S->kv_cv); /* requests waiting for KV room see the stop */
    pthread_mutex_unlock(&S->mu);
    for (int k = 0; k < n_wait; k++) {
        job_finish(waiting[k], TL_FINISH_CANCELLED, "the server is shutting down");
        tl_job_unref(waiting[k]);
    }
    if (S->started) {
        pthread_join(S->th, NULL);
        S->started = false;
    }
}

void tl_sched_free(tl_sched *S) {
    if (!S) return;
    tl_sched_shutdown(S);
    for (int i = 0; i < S->n_slots; i++) {
        tl_session_free(S->slots[i].sess);
        free(S->slots[i].logits);
        free(S->slots[i].cache);
    }
    tl_batch_free(S->batch);
    free(S->slots);
    free(S->q);
    free(S->kv_wait);
    if (S->own_plan) tl_kv_plan_free(&S->plan);
    for (int k = 1; S->allow && k <= S->n_allow; k++) tl_kv_plan_free(&S->allow[k]);
    free(S->allow);
    pthread_mutex_destroy(&S->mu);
    pthread_cond_destroy(&S->cv);
    pthread_cond_destroy(&S->kv_cv);
    free(S);
}
