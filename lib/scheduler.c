/* scheduler.c - the generation scheduler (see include/scheduler.h).
 *
 * The runner (the thread in sb_sched_step) owns the slots' contents; the
 * mutex guards only what other threads touch: the pending queue, which
 * sequence sits in which slot (for sb_sched_cancel), the spare states and
 * the counters. Callbacks run with the mutex released.
 *
 * A step is: admit pending sequences into free slots; finish the cancelled
 * ones; prefill (a chunk of) each admitted prompt; sample one token per
 * generating sequence and hand out its text; read all sampled tokens with
 * one batched decode; finish the sequences that ended on that token. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "scheduler.h"

/* Spare states kept for reuse: freeing one state and allocating another
 * per sequence fragments the heap (resident memory grew with chat turns). */
#define MAX_SPARE_STATES 16

typedef enum { STAGE_PENDING, STAGE_PREFILL, STAGE_GEN } stage;

typedef struct seq {
	uint64_t id;
	unsigned epoch;          /* cancel_all epoch at submit */
	bool cancel;             /* sb_sched_cancel (under the mutex) */
	struct seq *next;        /* pending queue */
	stage stage;
	/* copies of the parameters */
	int32_t *tokens;         /* (n_tokens) */
	size_t n_tokens, n_read;
	sb_state *start;         /* copy of params.start, or NULL */
	size_t cached;
	float *start_logits;     /* (V) or NULL */
	sb_sampler *smp;
	sb_stop *stop;
	long max_tokens;
	bool ignore_eos, text_at_start, logprobs;
	int top_logprobs;
	sb_state *final_state;
	float *final_logits;
	sb_seq_token_fn on_token;
	sb_seq_done_fn on_done;
	void *user;
	/* progress */
	size_t n_gen;
	int32_t token;           /* sampled, to be read by the decode */
	bool end_after_decode;   /* finish with `end` once the token is read */
	sb_finish end;
	int stop_index;
	double t_submit, t_admit, t_prompt;
} seq;

typedef struct slot {
	seq *q;                  /* NULL: free */
	sb_state *st;
	/* The prediction after the state's last token: a row of b_logits
	 * (the last decode) or of p_logits (the last sb_prefill_batch), or
	 * own, valid until the next such call, by which time the slot has
	 * sampled from it (each step samples every generating slot before
	 * its decode, and a slot that stops sampling is finished). */
	const float *logits;
	float *own;              /* (V) a prompt read alone, or start_logits */
	void *dec;               /* detokenizer, or NULL without one */
	bool fresh;              /* admitted in this step, not yet set up */
} slot;

struct sb_sched {
	sb_ctx *ctx;
	const sb_model *m;
	int V;
	sb_sched_params p;
	slot *slots;             /* (nslots) */
	size_t nslots;
	/* step scratch */
	sb_state **b_states;     /* (nslots) */
	int32_t *b_tokens;       /* (nslots) */
	slot **b_slots;          /* (nslots) */
	float *b_logits;         /* (nslots, V) a decode's logits */
	float *p_logits;         /* (nslots, V) sb_prefill_batch's */
	const int32_t **p_tokens; /* (nslots) prompts read together */
	size_t *p_n;             /* (nslots) their lengths */
	float *work;             /* (V) the logits the sampler transforms */
	sb_logprob top[SB_SCHED_MAX_TOP_LOGPROBS];
	char *tail;              /* the bytes of a sequence's last call */
	size_t tail_cap;
	/* shared with other threads */
	pthread_mutex_t mu;
	pthread_cond_t cv;       /* signalled by submit and shutdown */
	seq *head, *tail_q;      /* pending queue */
	size_t n_pending, n_running;
	sb_state *spare[MAX_SPARE_STATES];
	size_t n_spare;
	uint64_t next_id, submitted;
	/* counted as they happen, without the lock */
	atomic_uint_fast64_t prompt_tokens, completion_tokens;
	atomic_uint epoch;
	atomic_bool shutdown;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

const char *sb_finish_name(sb_finish f)
{
	switch (f) {
	case SB_FINISH_LENGTH: return "length";
	case SB_FINISH_EOS: return "eos";
	case SB_FINISH_STOP: return "stop";
	case SB_FINISH_CANCELLED: return "cancelled";
	case SB_FINISH_ERROR: return "error";
	}
	return "?";
}

sb_sched_params sb_sched_default_params(void)
{
	sb_sched_params p;
	memset(&p, 0, sizeof p);
	p.eos_id = -1;
	return p;
}

sb_seq_params sb_seq_default_params(void)
{
	sb_seq_params p;
	memset(&p, 0, sizeof p);
	p.sampler = sb_sampler_default_params();
	p.max_tokens = -1;
	return p;
}

/* ------------------------------------------------------------ lifetime */

sb_sched *sb_sched_new(sb_ctx *ctx, const sb_sched_params *p, sb_error *err)
{
	if (!ctx || !p) {
		sb_error_set(err, SB_ERR_ARG, "scheduler: ctx and params must not be NULL");
		return NULL;
	}
	size_t cap = sb_ctx_max_batch(ctx);
	size_t n = p->max_batch ? p->max_batch : cap;
	if (n < 1 || n > cap) {
		sb_error_set(err, SB_ERR_ARG, "scheduler: max_batch is %zu, expected 1 to %zu (the context's batch capacity)",
		             p->max_batch, cap);
		return NULL;
	}
	const sb_sched_text *t = &p->text;
	bool any = t->open || t->reset || t->push || t->flush || t->close;
	bool all = t->open && t->reset && t->push && t->flush && t->close;
	if (any && !all) {
		sb_error_set(err, SB_ERR_ARG, "scheduler: text: expected all five detokenizer functions or none");
		return NULL;
	}
	sb_sched *s = calloc(1, sizeof *s);
	if (!s) {
		sb_error_set(err, SB_ERR_NOMEM, "scheduler: out of memory");
		return NULL;
	}
	s->ctx = ctx;
	s->m = sb_ctx_model(ctx);
	s->V = sb_model_config(s->m)->vocab_size;
	s->p = *p;
	s->nslots = n;
	s->next_id = 1;
	atomic_init(&s->epoch, 0);
	atomic_init(&s->shutdown, false);
	atomic_init(&s->prompt_tokens, 0);
	atomic_init(&s->completion_tokens, 0);
	pthread_mutex_init(&s->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cv, &ca);
	pthread_condattr_destroy(&ca);
	size_t V = (size_t)s->V, rows;
	if (!(s->slots = calloc(n, sizeof *s->slots)) ||
	    !(s->b_states = calloc(n, sizeof *s->b_states)) ||
	    !(s->b_tokens = calloc(n, sizeof *s->b_tokens)) ||
	    !(s->b_slots = calloc(n, sizeof *s->b_slots)) ||
	    !(s->p_tokens = calloc(n, sizeof *s->p_tokens)) ||
	    !(s->p_n = calloc(n, sizeof *s->p_n)) ||
	    !sb_size_mul(n, V, &rows) || !sb_size_mul(rows, sizeof(float), &rows) ||
	    !(s->b_logits = malloc(rows)) || !(s->p_logits = malloc(rows)) ||
	    !(s->work = malloc(V * sizeof(float))))
		goto nomem;
	for (size_t i = 0; i < n; i++) {
		slot *sl = &s->slots[i];
		if (!(sl->own = malloc(V * sizeof(float))))
			goto nomem;
		if (!(sl->st = sb_ctx_state_new(s->ctx, err)))
			goto fail;
		if (all && !(sl->dec = t->open(t->user, err)))
			goto fail;
	}
	return s;
nomem:
	sb_error_set(err, SB_ERR_NOMEM, "scheduler: out of memory for %zu sequences", n);
fail:
	sb_sched_free(s);
	return NULL;
}

static sb_state *spare_take(sb_sched *s, sb_error *err)
{
	sb_state *st = NULL;
	pthread_mutex_lock(&s->mu);
	if (s->n_spare)
		st = s->spare[--s->n_spare];
	pthread_mutex_unlock(&s->mu);
	return st ? st : sb_ctx_state_new(s->ctx, err);
}

static void spare_give(sb_sched *s, sb_state *st)
{
	if (!st)
		return;
	pthread_mutex_lock(&s->mu);
	if (s->n_spare < MAX_SPARE_STATES) {
		s->spare[s->n_spare++] = st;
		st = NULL;
	}
	pthread_mutex_unlock(&s->mu);
	sb_state_free(st);
}

static void seq_free(sb_sched *s, seq *q)
{
	if (!q)
		return;
	free(q->tokens);
	free(q->start_logits);
	sb_sampler_free(q->smp);
	sb_stop_free(q->stop);
	spare_give(s, q->start);
	free(q);
}

/* ----------------------------------------------------------------- submit */

int sb_sched_submit(sb_sched *s, const sb_seq_params *p, uint64_t *id, sb_error *err)
{
	if (id)
		*id = 0;
	if (!s || !p)
		return sb_error_set(err, SB_ERR_ARG, "scheduler: submit: NULL scheduler or params");
	if (atomic_load(&s->shutdown))
		return sb_error_set(err, SB_ERR_ARG, "scheduler: shutting down, no new sequences");
	if (p->n_tokens && !p->tokens)
		return sb_error_set(err, SB_ERR_ARG, "sequence: n_tokens is %zu but tokens is NULL", p->n_tokens);
	if (p->n_history && !p->history)
		return sb_error_set(err, SB_ERR_ARG, "sequence: n_history is %zu but history is NULL", p->n_history);
	for (size_t i = 0; i < p->n_tokens; i++)
		if (p->tokens[i] < 0 || p->tokens[i] >= s->V)
			return sb_error_set(err, SB_ERR_ARG, "sequence: token %zu is id %d, expected 0 to %d",
			                    i, (int)p->tokens[i], s->V - 1);
	for (size_t i = 0; i < p->n_history; i++)
		if (p->history[i] < 0 || p->history[i] >= s->V)
			return sb_error_set(err, SB_ERR_ARG, "sequence: history token %zu is id %d, expected 0 to %d",
			                    i, (int)p->history[i], s->V - 1);
	if (!p->n_tokens && !p->start_logits)
		return sb_error_set(err, SB_ERR_ARG,
		                    "sequence: no tokens and no start_logits: nothing to generate from");
	if (p->start && p->start->m != s->m)
		return sb_error_set(err, SB_ERR_ARG, "sequence: the start state belongs to another model");
	if (p->final_state && p->final_state->m != s->m)
		return sb_error_set(err, SB_ERR_ARG, "sequence: final_state belongs to another model");
	if (p->max_tokens < -1)
		return sb_error_set(err, SB_ERR_ARG, "sequence: max_tokens is %ld, expected -1 or more", p->max_tokens);
	if (p->top_logprobs < 0 || p->top_logprobs > SB_SCHED_MAX_TOP_LOGPROBS)
		return sb_error_set(err, SB_ERR_ARG, "sequence: top_logprobs is %d, expected 0 to %d",
		                    p->top_logprobs, SB_SCHED_MAX_TOP_LOGPROBS);
	if (p->n_stops && !s->p.text.open)
		return sb_error_set(err, SB_ERR_ARG, "sequence: stop strings need a detokenizer (the scheduler has none)");

	seq *q = calloc(1, sizeof *q);
	if (!q)
		goto nomem;
	q->stop_index = -1;
	if (!(q->smp = sb_sampler_new(&p->sampler, s->V, err)) ||
	    !(q->stop = sb_stop_new(p->stops, p->n_stops, err)))
		goto fail;
	if (p->n_tokens) {
		if (!(q->tokens = malloc(p->n_tokens * sizeof *q->tokens)))
			goto nomem;
		memcpy(q->tokens, p->tokens, p->n_tokens * sizeof *q->tokens);
	} else {
		if (!(q->start_logits = malloc((size_t)s->V * sizeof(float))))
			goto nomem;
		memcpy(q->start_logits, p->start_logits, (size_t)s->V * sizeof(float));
	}
	q->n_tokens = p->n_tokens;
	if (p->start) {
		if (!(q->start = spare_take(s, err)))
			goto fail;
		if (sb_state_copy(q->start, p->start) < 0) {
			sb_error_set(err, SB_ERR_DEVICE, "sequence: cannot copy the start state");
			goto fail;
		}
		q->cached = (size_t)sb_state_n_tokens(p->start);
	}
	for (size_t i = 0; i < p->n_history; i++)
		sb_sampler_accept(q->smp, p->history[i]);
	for (size_t i = 0; i < p->n_tokens; i++)
		sb_sampler_accept(q->smp, p->tokens[i]);
	q->max_tokens = p->max_tokens;
	q->ignore_eos = p->ignore_eos;
	q->text_at_start = p->text_at_start;
	q->logprobs = p->logprobs;
	q->top_logprobs = p->logprobs ? p->top_logprobs : 0;
	q->final_state = p->final_state;
	q->final_logits = p->final_logits;
	q->on_token = p->on_token;
	q->on_done = p->on_done;
	q->user = p->user;
	q->t_submit = now_s();
	q->stage = STAGE_PENDING;

	pthread_mutex_lock(&s->mu);
	/* Read under the lock: once it is released the sequence may run and
	 * finish (and be freed) on the scheduler's thread. */
	uint64_t qid = q->id = s->next_id++;
	q->epoch = atomic_load(&s->epoch);
	if (s->tail_q)
		s->tail_q->next = q;
	else
		s->head = q;
	s->tail_q = q;
	s->n_pending++;
	s->submitted++;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	if (id)
		*id = qid;
	return SB_OK;
nomem:
	sb_error_set(err, SB_ERR_NOMEM, "sequence: out of memory");
fail:
	seq_free(s, q);
	return err ? err->code : SB_ERR_NOMEM;
}

void sb_sched_cancel(sb_sched *s, uint64_t id)
{
	if (!s || !id)
		return;
	pthread_mutex_lock(&s->mu);
	for (seq *q = s->head; q; q = q->next)
		if (q->id == id)
			q->cancel = true;
	for (size_t i = 0; i < s->nslots; i++)
		if (s->slots[i].q && s->slots[i].q->id == id)
			s->slots[i].q->cancel = true;
	pthread_mutex_unlock(&s->mu);
}

void sb_sched_cancel_all(sb_sched *s)
{
	if (s)
		atomic_fetch_add(&s->epoch, 1u);
}

void sb_sched_shutdown(sb_sched *s)
{
	if (s)
		atomic_store(&s->shutdown, true);
}

void sb_sched_stats_get(sb_sched *s, sb_sched_stats *out)
{
	pthread_mutex_lock(&s->mu);
	out->pending = s->n_pending;
	out->running = s->n_running;
	out->slots = s->nslots;
	out->submitted = s->submitted;
	out->prompt_tokens = atomic_load_explicit(&s->prompt_tokens, memory_order_relaxed);
	out->completion_tokens = atomic_load_explicit(&s->completion_tokens, memory_order_relaxed);
	pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------------ steps */

static bool is_cancelled(sb_sched *s, seq *q)
{
	pthread_mutex_lock(&s->mu);
	bool c = q->cancel;
	pthread_mutex_unlock(&s->mu);
	return c || q->epoch != atomic_load(&s->epoch);
}

static int tail_add(sb_sched *s, size_t *len, const char *b, size_t n)
{
	if (!n)
		return 0;
	if (*len + n > s->tail_cap) {
		size_t cap = s->tail_cap ? s->tail_cap : 256;
		while (cap < *len + n)
			cap *= 2;
		char *t = realloc(s->tail, cap);
		if (!t)
			return -1;
		s->tail = t;
		s->tail_cap = cap;
	}
	memcpy(s->tail + *len, b, n);
	*len += n;
	return 0;
}

/* Ends a sequence: its held-back text (unless a stop string or an error
 * ended it), the final state, on_done, and its slot freed. sl is NULL for
 * a sequence that never got a slot. */
static void finish(sb_sched *s, slot *sl, seq *q, sb_finish why, const sb_error *error)
{
	double t_end = now_s();
	if (sl && q->stage == STAGE_GEN && why != SB_FINISH_ERROR && why != SB_FINISH_STOP && sl->dec) {
		const char *o, *piece;
		size_t ol, piece_len, len = 0;
		bool matched = false;
		s->p.text.flush(sl->dec, &piece, &piece_len);
		/* piece points into the decoder, which nothing changes below. */
		if (sb_stop_push(q->stop, piece, piece_len, &o, &ol, &matched) == 0) {
			int bad = tail_add(s, &len, o, ol);
			if (matched) {
				if (why != SB_FINISH_CANCELLED)
					why = SB_FINISH_STOP;
				q->stop_index = sb_stop_which(q->stop);
			} else {
				sb_stop_flush(q->stop, &o, &ol);
				bad |= tail_add(s, &len, o, ol);
			}
			if (!bad && (len || piece_len) && q->on_token) {
				sb_seq_token t = {
					.id = q->id, .user = q->user, .token = -1, .index = q->n_gen,
					.text = s->tail, .text_len = len, .piece = piece,
					.piece_len = piece_len, .logprob = NAN,
				};
				q->on_token(&t);
			}
		}
	}
	sb_seq_result r = {
		.id = q->id,
		.user = q->user,
		.finish = why,
		.stop_index = why == SB_FINISH_STOP ? q->stop_index : -1,
		.prompt_tokens = q->n_tokens,
		.cached_tokens = q->cached,
		.completion_tokens = q->n_gen,
		.error = why == SB_FINISH_ERROR ? error : NULL,
	};
	if (q->stage == STAGE_PENDING) {
		r.queue_s = t_end - q->t_submit;
	} else {
		r.queue_s = q->t_admit - q->t_submit;
		if (q->stage == STAGE_PREFILL) {
			r.prompt_s = t_end - q->t_admit;
		} else {
			r.prompt_s = q->t_prompt - q->t_admit;
			r.gen_s = t_end - q->t_prompt;
		}
	}
	sb_error copy_err = {0};
	if (sl && q->final_state && q->stage == STAGE_GEN && why != SB_FINISH_ERROR) {
		if (sb_state_copy(q->final_state, sl->st) == 0) {
			r.state = q->final_state;
			if (q->final_logits)
				memcpy(q->final_logits, sl->logits, (size_t)s->V * sizeof(float));
		} else {
			r.finish = SB_FINISH_ERROR;
			r.stop_index = -1;
			r.error = &copy_err;
			sb_error_set(&copy_err, SB_ERR_DEVICE, "sequence: cannot copy the final state");
		}
	}
	pthread_mutex_lock(&s->mu);
	if (sl) {
		sl->q = NULL;
		s->n_running--;
	}
	pthread_mutex_unlock(&s->mu);
	if (q->on_done)
		q->on_done(&r);
	seq_free(s, q);
}

/* Takes pending sequences into free slots; cancelled ones finish here. */
static void admit(sb_sched *s)
{
	for (size_t i = 0; i < s->nslots; i++) {
		slot *sl = &s->slots[i];
		while (!sl->q) {
			pthread_mutex_lock(&s->mu);
			seq *q = s->head;
			if (q) {
				s->head = q->next;
				if (!s->head)
					s->tail_q = NULL;
				q->next = NULL;
				s->n_pending--;
				if (!q->cancel && q->epoch == atomic_load(&s->epoch)) {
					sl->q = q;
					s->n_running++;
				}
			}
			pthread_mutex_unlock(&s->mu);
			if (!q)
				return;
			if (sl->q != q) {
				finish(s, NULL, q, SB_FINISH_CANCELLED, NULL);
				continue;
			}
			sl->fresh = true;
		}
	}
}

/* A newly admitted sequence: its state, decoder and stop matcher. */
static void setup(sb_sched *s, slot *sl)
{
	seq *q = sl->q;
	sl->fresh = false;
	q->t_admit = now_s();
	q->stage = STAGE_PREFILL;
	if (q->start) {
		sb_state *t = sl->st;
		sl->st = q->start;
		q->start = t; /* the slot's old state goes back with the sequence */
	} else {
		sb_state_reset(sl->st);
	}
	if (sl->dec)
		s->p.text.reset(sl->dec, q->text_at_start);
	sb_stop_reset(q->stop);
}

/* Prompts (or pieces of them) up to this many tokens are read together,
 * in one sb_prefill_batch per step (one pass over the weights for all
 * admitted sequences); a longer one alone through sb_prefill, which is
 * faster for it. Which way a sequence goes depends on its prompt alone,
 * so its numbers never depend on the others. */
#define PREFILL_BATCH_MAX 64

/* The tokens the next prefill of the slot's sequence reads. */
static size_t prefill_len(const sb_sched *s, const slot *sl)
{
	size_t n = sl->q->n_tokens - sl->q->n_read;
	if (s->p.prefill_chunk && n > s->p.prefill_chunk)
		n = s->p.prefill_chunk;
	return n;
}

/* After n tokens of the prompt were read. Returns false if the sequence
 * ended. */
static bool prefill_done(sb_sched *s, slot *sl, size_t n)
{
	seq *q = sl->q;
	q->n_read += n;
	atomic_fetch_add_explicit(&s->prompt_tokens, n, memory_order_relaxed);
	if (q->n_read < q->n_tokens)
		return true;
	q->stage = STAGE_GEN;
	q->t_prompt = now_s();
	return true;
}

/* The short prompts of P slots (s->b_slots) in one call. */
static void prefill_many(sb_sched *s, size_t P)
{
	const size_t V = (size_t)s->V;
	for (size_t i = 0; i < P; i++) {
		seq *q = s->b_slots[i]->q;
		s->b_states[i] = s->b_slots[i]->st;
		s->p_tokens[i] = q->tokens + q->n_read;
		s->p_n[i] = prefill_len(s, s->b_slots[i]);
	}
	sb_error err = {0};
	if (sb_prefill_batch(s->ctx, s->b_states, s->p_tokens, s->p_n, P, s->p_logits, &err) < 0) {
		for (size_t i = 0; i < P; i++)
			finish(s, s->b_slots[i], s->b_slots[i]->q, SB_FINISH_ERROR, &err);
		return;
	}
	for (size_t i = 0; i < P; i++) {
		s->b_slots[i]->logits = s->p_logits + i * V;
		prefill_done(s, s->b_slots[i], s->p_n[i]);
	}
}

/* Reads (a chunk of) the prompt. Returns false if the sequence ended. */
static bool prefill(sb_sched *s, slot *sl)
{
	seq *q = sl->q;
	if (q->n_tokens == 0) {
		memcpy(sl->own, q->start_logits, (size_t)s->V * sizeof(float));
		sl->logits = sl->own;
		return prefill_done(s, sl, 0);
	}
	size_t n = prefill_len(s, sl);
	sb_error err = {0};
	sb_outputs o = {.last_logits = sl->own};
	if (sb_prefill(s->ctx, sl->st, q->tokens + q->n_read, n, &o, &err) < 0) {
		finish(s, sl, q, SB_FINISH_ERROR, &err);
		return false;
	}
	sl->logits = sl->own;
	return prefill_done(s, sl, n);
}

/* log-softmax of the logits: the chosen token's and the top k. */
static float logprobs(sb_sched *s, const float *l, int32_t chosen, int k)
{
	int V = s->V;
	float mx = -INFINITY;
	for (int i = 0; i < V; i++)
		if (l[i] > mx)
			mx = l[i];
	double sum = 0;
	for (int i = 0; i < V; i++)
		sum += exp((double)l[i] - mx);
	double lse = mx + log(sum);
	int n = 0;
	for (int i = 0; i < V && k > 0; i++) {
		if (n == k && !(l[i] > s->top[n - 1].logprob))
			continue;
		int at = n < k ? n++ : k - 1;
		while (at > 0 && l[i] > s->top[at - 1].logprob) {
			s->top[at] = s->top[at - 1];
			at--;
		}
		s->top[at] = (sb_logprob){.token = i, .logprob = l[i]};
	}
	for (int i = 0; i < n; i++)
		s->top[i].logprob = (float)(s->top[i].logprob - lse);
	return (float)(l[chosen] - lse);
}

/* Samples the slot's next token and hands out its text. Returns true if
 * the token goes to the decode. */
static bool sample(sb_sched *s, slot *sl)
{
	seq *q = sl->q;
	if (q->max_tokens >= 0 && q->n_gen >= (size_t)q->max_tokens) {
		finish(s, sl, q, SB_FINISH_LENGTH, NULL);
		return false;
	}
	/* The slot's logits stay the prediction after the state's last token
	 * (for final_logits and log probabilities): the sampler copies them
	 * into work only where a bias or penalty changes them. */
	int32_t t = sb_sampler_sample_from(q->smp, sl->logits, s->work);
	if (t == s->p.eos_id && !q->ignore_eos) {
		finish(s, sl, q, SB_FINISH_EOS, NULL);
		return false;
	}
	sb_sampler_accept(q->smp, t);
	size_t index = q->n_gen++;
	atomic_fetch_add_explicit(&s->completion_tokens, 1, memory_order_relaxed);
	const char *piece = "", *o = "";
	size_t piece_len = 0, ol = 0;
	bool matched = false;
	if (sl->dec) {
		sb_error err = {0};
		if (s->p.text.push(sl->dec, t, &piece, &piece_len, &err) < 0) {
			finish(s, sl, q, SB_FINISH_ERROR, &err);
			return false;
		}
		if (sb_stop_push(q->stop, piece, piece_len, &o, &ol, &matched) < 0) {
			sb_error_set(&err, SB_ERR_NOMEM, "sequence: out of memory matching stop strings");
			finish(s, sl, q, SB_FINISH_ERROR, &err);
			return false;
		}
	}
	int stop_now = 0;
	if (q->on_token) {
		sb_seq_token info = {
			.id = q->id, .user = q->user, .token = t, .index = index,
			.text = o, .text_len = ol, .piece = piece, .piece_len = piece_len,
			.logprob = NAN,
		};
		if (q->logprobs) {
			info.logprob = logprobs(s, sl->logits, t, q->top_logprobs);
			info.top = s->top;
			info.n_top = (size_t)q->top_logprobs;
			if (info.n_top > (size_t)s->V)
				info.n_top = (size_t)s->V;
		}
		stop_now = q->on_token(&info);
	}
	if (matched) {
		q->end = SB_FINISH_STOP;
		q->stop_index = sb_stop_which(q->stop);
	} else if (stop_now) {
		q->end = SB_FINISH_CANCELLED;
	} else {
		q->token = t;
		return true;
	}
	/* The state is asked for: it holds every sampled token. */
	if (q->final_state) {
		q->token = t;
		q->end_after_decode = true;
		return true;
	}
	finish(s, sl, q, q->end, NULL);
	return false;
}

int sb_sched_step(sb_sched *s, sb_error *err)
{
	(void)err;
	admit(s);
	size_t P = 0;
	for (size_t i = 0; i < s->nslots; i++) {
		slot *sl = &s->slots[i];
		if (sl->q && sl->fresh)
			setup(s, sl);
		if (sl->q && is_cancelled(s, sl->q))
			finish(s, sl, sl->q, SB_FINISH_CANCELLED, NULL);
		if (sl->q && sl->q->stage == STAGE_PREFILL) {
			if (sl->q->n_tokens > 0 && prefill_len(s, sl) <= PREFILL_BATCH_MAX)
				s->b_slots[P++] = sl;
			else
				prefill(s, sl);
		}
	}
	if (P)
		prefill_many(s, P);
	size_t B = 0;
	for (size_t i = 0; i < s->nslots; i++) {
		slot *sl = &s->slots[i];
		if (!sl->q || sl->q->stage != STAGE_GEN || !sample(s, sl))
			continue;
		s->b_slots[B] = sl;
		s->b_states[B] = sl->st;
		s->b_tokens[B] = sl->q->token;
		B++;
	}
	if (B) {
		sb_error derr = {0};
		int rc;
		size_t V = (size_t)s->V;
		if (B == 1) {
			rc = sb_decode(s->ctx, s->b_states[0], s->b_tokens[0], s->b_logits, &derr);
		} else {
			rc = sb_decode_batch(s->ctx, s->b_states, s->b_tokens, B, s->b_logits, &derr);
		}
		for (size_t b = 0; rc == 0 && b < B; b++)
			s->b_slots[b]->logits = s->b_logits + b * V;
		for (size_t b = 0; b < B; b++) {
			slot *sl = s->b_slots[b];
			if (rc < 0)
				finish(s, sl, sl->q, SB_FINISH_ERROR, &derr);
			else if (sl->q->end_after_decode)
				finish(s, sl, sl->q, sl->q->end, NULL);
		}
	}
	pthread_mutex_lock(&s->mu);
	size_t live = s->n_pending + s->n_running;
	pthread_mutex_unlock(&s->mu);
	return live > (size_t)INT32_MAX ? INT32_MAX : (int)live;
}

int sb_sched_run(sb_sched *s, sb_error *err)
{
	int rc;
	while ((rc = sb_sched_step(s, err)) > 0)
		;
	return rc;
}

int sb_sched_serve(sb_sched *s, sb_error *err)
{
	for (;;) {
		int rc = sb_sched_step(s, err);
		if (rc < 0)
			return rc;
		if (rc > 0)
			continue;
		pthread_mutex_lock(&s->mu);
		while (!s->n_pending && !atomic_load(&s->shutdown)) {
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_nsec += 100 * 1000 * 1000;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&s->cv, &s->mu, &ts);
		}
		bool done = !s->n_pending && atomic_load(&s->shutdown);
		pthread_mutex_unlock(&s->mu);
		if (done)
			return 0;
	}
}

void sb_sched_free(sb_sched *s)
{
	if (!s)
		return;
	for (size_t i = 0; s->slots && i < s->nslots; i++)
		if (s->slots[i].q)
			finish(s, &s->slots[i], s->slots[i].q, SB_FINISH_CANCELLED, NULL);
	for (;;) {
		pthread_mutex_lock(&s->mu);
		seq *q = s->head;
		if (q) {
			s->head = q->next;
			s->n_pending--;
		}
		pthread_mutex_unlock(&s->mu);
		if (!q)
			break;
		finish(s, NULL, q, SB_FINISH_CANCELLED, NULL);
	}
	for (size_t i = 0; s->slots && i < s->nslots; i++) {
		sb_state_free(s->slots[i].st);
		free(s->slots[i].own);
		if (s->slots[i].dec)
			s->p.text.close(s->slots[i].dec);
	}
	for (size_t i = 0; i < s->n_spare; i++)
		sb_state_free(s->spare[i]);
	free(s->slots);
	free(s->b_states);
	free(s->b_tokens);
	free(s->b_slots);
	free(s->p_tokens);
	free(s->p_n);
	free(s->b_logits);
	free(s->p_logits);
	free(s->work);
	free(s->tail);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
	free(s);
}
