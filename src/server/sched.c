/* sched.c: slots and the bounded queue.
 *
 * P slots, each a worker thread owning one tl_session (KV cache sized by the policy and
 * n_ctx, threads = max(1, n_threads / P)). Jobs wait in a FIFO of fixed capacity. A request
 * takes its place before it parses and tokenizes its body (tl_sched_reserve), so that work
 * counts against the same P + Q as the queue; a reservation that would exceed P running +
 * capacity waiting is refused (the HTTP layer answers 429).
 * The generation loop is tailor generate's, token for token (same sampler calls in the same
 * order), so equal prompt, seed and parameters give equal text.
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
    int id;
    pthread_t th;
    bool started;
    tl_session *sess;
    float *logits;
    tl_job *job;     /* running job (under owner->mu) */
    tl_kv_bytes kv;  /* KV bytes held now (under owner->mu) */
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
    int n_ctx;
    tl_session_mem slot_mem; /* slot 0's memory before any work, for the start-up report */
};

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

/* Prefill with every position's logits (echo + logprobs), in pieces of ECHO_PIECE rows. */
enum { ECHO_PIECE = 64 };
static int prefill_logprobs(tl_session *s, tl_job *j, int V, float *last_logits, tl_error *err) {
    float *rows = tl_xmalloc(sizeof(float) * (size_t)ECHO_PIECE * V);
    pthread_mutex_lock(&j->mu);
    lp_add(j, j->prompt[0], NULL, V); /* the first token: nothing predicts it */
    pthread_mutex_unlock(&j->mu);
    int rc = 0;
    for (int i = 0; i < j->n_prompt && !rc;) {
        if (atomic_load(&j->cancel)) break;
        const int n = TL_MIN(ECHO_PIECE, j->n_prompt - i);
        if ((rc = tl_session_eval(s, j->prompt + i, n, rows, true, err))) break;
        pthread_mutex_lock(&j->mu);
        for (int r = 0; r < n && i + r + 1 < j->n_prompt; r++) lp_add(j, j->prompt[i + r + 1], rows + (size_t)r * V, V);
        pthread_mutex_unlock(&j->mu);
        if (i + n == j->n_prompt) memcpy(last_logits, rows + (size_t)(n - 1) * V, sizeof(float) * (size_t)V);
        i += n;
    }
    j->n_lp_prompt = j->n_lp;
    free(rows);
    return rc;
}

/* ---------------- the worker ---------------- */

static void slot_update_kv(slot *sl) {
    tl_session_mem mem;
    tl_session_memory(sl->sess, &mem);
    pthread_mutex_lock(&sl->owner->mu);
    sl->kv = mem.kv_parts;
    pthread_mutex_unlock(&sl->owner->mu);
}

/* Runs a job to its end; the caller publishes the outcome (job_finish) after giving the
 * slot back, so a client that gets its answer can never find its own slot still taken. */
static tl_finish run_job(slot *sl, tl_job *j, char *fail_msg, size_t fail_cap) {
    tl_sched *S = sl->owner;
    tl_model *m = S->m;
    tl_session *s = sl->sess;
    tl_error err = {{0}};
    if (atomic_load(&j->cancel)) return TL_FINISH_CANCELLED;
    pthread_mutex_lock(&j->mu);
    j->state = TL_JOB_RUNNING;
    j->t_start = tl_time_s();
    pthread_mutex_unlock(&j->mu);

    tl_session_reset(s);
    const int V = m->cfg.n_vocab;
    tl_sampler *smp = tl_sampler_new(&j->sp, V);
    for (int i = 0; i < j->n_prompt; i++) tl_sampler_accept(smp, j->prompt[i]);

    /* The prompt goes in chunk-sized pieces (what the session does inside one call anyway), so
     * a cancelled request does not hold its slot through a long prefill. */
    double t0 = tl_time_s();
    tl_finish fin = TL_FINISH_LENGTH;
    const char *fail = NULL;
    if (j->echo && j->logprobs >= 0) {
        if (prefill_logprobs(s, j, V, sl->logits, &err)) {
            fin = TL_FINISH_ERROR;
            fail = err.msg;
        } else if (atomic_load(&j->cancel)) {
            fin = TL_FINISH_CANCELLED;
        }
    }
    for (int i = j->echo && j->logprobs >= 0 ? j->n_prompt : 0; i < j->n_prompt;) {
        if (atomic_load(&j->cancel)) {
            fin = TL_FINISH_CANCELLED;
            break;
        }
        int n = TL_MIN(s->chunk, j->n_prompt - i);
        bool last = i + n == j->n_prompt;
        if (tl_session_eval(s, j->prompt + i, n, last ? sl->logits : NULL, false, &err)) {
            fin = TL_FINISH_ERROR;
            fail = err.msg;
            break;
        }
        i += n;
    }
    double t_prompt = tl_time_s() - t0;
    slot_update_kv(sl);

    int n_gen = 0;
    double t1 = tl_time_s();
    float *raw = j->logprobs >= 0 ? tl_xmalloc(sizeof(float) * (size_t)V) : NULL; /* logits before sampling */
    if (fin == TL_FINISH_LENGTH) {
        int room = s->n_ctx - j->n_prompt;
        int max_new = j->max_tokens < 0 ? room : TL_MIN(j->max_tokens, room);
        char small[256];
        char *piece = small;
        size_t piece_cap = sizeof small;
        while (n_gen < max_new) {
            if (atomic_load(&j->cancel)) {
                fin = TL_FINISH_CANCELLED;
                break;
            }
            if (raw) memcpy(raw, sl->logits, sizeof(float) * (size_t)V); /* the sampler edits its copy */
            int32_t id = tl_sampler_sample(smp, sl->logits);
            if (raw) { /* an end-of-generation token too: its text is empty, its log-probability is not */
                pthread_mutex_lock(&j->mu);
                lp_add(j, id, raw, V);
                pthread_mutex_unlock(&j->mu);
            }
            if (!j->ignore_eos && tl_tok_is_eog(m->tok, id)) {
                fin = TL_FINISH_STOP;
                break;
            }
            n_gen++;
            tl_sampler_accept(smp, id);
            size_t np = tl_token_to_piece(m->tok, id, false, piece, piece_cap);
            if (np > piece_cap) { /* rare: a very long piece */
                if (piece != small) free(piece);
                piece_cap = np;
                piece = tl_xmalloc(piece_cap);
                np = tl_token_to_piece(m->tok, id, false, piece, piece_cap);
            }
            if (job_append(j, piece, np)) {
                fin = TL_FINISH_STOP;
                break;
            }
            if (n_gen == max_new || s->n_past + 1 > s->n_ctx) break;
            if (tl_session_eval(s, &id, 1, sl->logits, false, &err)) {
                fin = TL_FINISH_ERROR;
                fail = err.msg;
                break;
            }
            if ((n_gen & 31) == 0) slot_update_kv(sl);
        }
        if (piece != small) free(piece);
    }
    double t_gen = tl_time_s() - t1;
    free(raw);
    tl_sampler_free(smp);
    slot_update_kv(sl);
    tl_metrics_tokens(S->metrics, j->n_prompt, t_prompt, n_gen, t_gen);
    pthread_mutex_lock(&j->mu);
    j->t_prompt = t_prompt;
    j->t_gen = t_gen;
    pthread_mutex_unlock(&j->mu);
    if (fail) snprintf(fail_msg, fail_cap, "%s", fail);
    return fin;
}

static void *worker(void *arg) {
    slot *sl = arg;
    tl_sched *S = sl->owner;
    for (;;) {
        pthread_mutex_lock(&S->mu);
        while (!S->stop && S->q_len == 0) pthread_cond_wait(&S->cv, &S->mu);
        if (S->stop) {
            pthread_mutex_unlock(&S->mu);
            break;
        }
        tl_job *j = S->q[S->q_head];
        S->q_head = (S->q_head + 1) % S->q_cap;
        S->q_len--;
        S->n_running++;
        sl->job = j;
        pthread_mutex_unlock(&S->mu);

        char fail[512] = "";
        tl_finish fin = run_job(sl, j, fail, sizeof fail);
        tl_session_reset(sl->sess);
        slot_update_kv(sl);

        pthread_mutex_lock(&S->mu);
        S->n_running--;
        sl->job = NULL;
        pthread_mutex_unlock(&S->mu);
        job_finish(j, fin, fail[0] ? fail : NULL);
        tl_job_unref(j);
    }
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
    S->n_slots = p->n_parallel;
    /* the ring holds waiting jobs; one spare place per slot covers jobs just submitted
     * while every slot is about to pick one up */
    S->q_cap = p->n_queue + p->n_parallel;
    S->q = tl_xcalloc((size_t)S->q_cap, sizeof *S->q);
    S->slots = tl_xcalloc((size_t)S->n_slots, sizeof *S->slots);
    int threads = p->n_threads > 0 ? p->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    int per_slot = TL_MAX(1, threads / p->n_parallel);
    tl_session_params sp = tl_session_default_params();
    sp.n_ctx = p->n_ctx;
    sp.n_threads = per_slot;
    sp.chunk = p->chunk;
    sp.kv = p->kv;
    for (int i = 0; i < S->n_slots; i++) {
        slot *sl = &S->slots[i];
        sl->owner = S;
        sl->id = i;
        if (!(sl->sess = tl_session_new(m, &sp, err))) {
            tl_fail_prefix(err, "slot %d", i);
            tl_sched_free(S);
            return NULL;
        }
        sl->logits = tl_xmalloc(sizeof(float) * (size_t)m->cfg.n_vocab);
    }
    S->n_ctx = S->slots[0].sess->n_ctx;
    tl_session_memory(S->slots[0].sess, &S->slot_mem); /* before the workers own their sessions */
    for (int i = 0; i < S->n_slots; i++) {
        int rc = pthread_create(&S->slots[i].th, NULL, worker, &S->slots[i]);
        if (rc) {
            tl_fail(err, "slot %d: cannot start its thread: %s", i, strerror(rc));
            tl_sched_free(S);
            return NULL;
        }
        S->slots[i].started = true;
    }
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

int tl_sched_submit_reserved(tl_sched *S, tl_job *j) {
    pthread_mutex_lock(&S->mu);
    S->n_reserved--; /* the place passes to the job */
    int rc = S->stop ? TL_SUBMIT_STOPPING : TL_SUBMIT_OK;
    if (rc == TL_SUBMIT_OK) {
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
    for (int i = 0; i < S->n_slots; i++) {
        const tl_kv_bytes *b = &S->slots[i].kv;
        out->kv.codes += b->codes;
        out->kv.scales += b->scales;
        out->kv.residual += b->residual;
        out->kv.other += b->other;
        out->kv.host += b->host;
    }
    out->kv_total = tl_kv_bytes_total(&out->kv);
    pthread_mutex_unlock(&S->mu);
}

/* Stop taking work, cancel what runs and what waits, and join the workers. Waiters see
 * every job finished afterwards, so connection threads can end. */
void tl_sched_shutdown(tl_sched *S) {
    pthread_mutex_lock(&S->mu);
    S->stop = true;
    for (int i = 0; i < S->n_slots; i++)
        if (S->slots[i].job) atomic_store(&S->slots[i].job->cancel, true);
    tl_job *waiting[S->q_cap > 0 ? S->q_cap : 1];
    int n_wait = S->q_len;
    for (int k = 0; k < n_wait; k++) waiting[k] = S->q[(S->q_head + k) % S->q_cap];
    S->q_len = 0;
    pthread_cond_broadcast(&S->cv);
    pthread_mutex_unlock(&S->mu);
    for (int k = 0; k < n_wait; k++) {
        job_finish(waiting[k], TL_FINISH_CANCELLED, "the server is shutting down");
        tl_job_unref(waiting[k]);
    }
    for (int i = 0; i < S->n_slots; i++)
        if (S->slots[i].started) {
            pthread_join(S->slots[i].th, NULL);
            S->slots[i].started = false;
        }
}

void tl_sched_free(tl_sched *S) {
    if (!S) return;
    tl_sched_shutdown(S);
    for (int i = 0; i < S->n_slots; i++) {
        tl_session_free(S->slots[i].sess);
        free(S->slots[i].logits);
    }
    free(S->slots);
    free(S->q);
    pthread_mutex_destroy(&S->mu);
    pthread_cond_destroy(&S->cv);
    free(S);
}
