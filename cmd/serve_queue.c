/* serve_queue.c - the bounded queue: a request becomes a job, starts from
 * the longest cached prefix of its tokens, and is handed to the shared
 * scheduler, whose callbacks fill the job; at its end its final state goes
 * into the cache.
 *
 * At most --parallel jobs decode together (the scheduler's slots) and at
 * most --queue more wait for a slot; beyond that a request is refused at
 * once (the caller answers 503 with Retry-After), so a burst cannot pile
 * up unbounded work. */
#include <stdlib.h>
#include <string.h>

#include "gen.h"
#include "serve.h"
#include "serve_log.h"

static void job_free(serve_job *j)
{
	sb_state_free(j->final);
	free(j->tokens);
	free(j->text);
	free(j->gen);
	free(j->lp);
	pthread_cond_destroy(&j->cv);
	pthread_mutex_destroy(&j->mu);
	free(j);
}

/* Drops one reference (the lock is not held). */
static void job_unref(serve_job *j)
{
	pthread_mutex_lock(&j->mu);
	bool last = --j->refs == 0;
	pthread_mutex_unlock(&j->mu);
	if (last)
		job_free(j);
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return true;
	size_t nc = *cap ? *cap : 64;
	while (nc < need)
		nc *= 2;
	void *q = realloc(*p, nc * elem);
	if (!q)
		return false;
	*p = q;
	*cap = nc;
	return true;
}

/* The scheduler's thread, for every sampled token. */
static int on_token(const sb_seq_token *t)
{
	serve_job *j = t->user;
	serve_server *s = j->srv;
	pthread_mutex_lock(&j->mu);
	if (!j->t_first)
		j->t_first = cli_now();
	if (t->token >= 0 && t->token != s->eos) {
		if (grow((void **)&j->gen, &j->cap_gen, j->n_gen + 1, sizeof *j->gen))
			j->gen[j->n_gen++] = t->token;
		else
			j->oom = true;
		if (j->logprobs) {
			if (grow((void **)&j->lp, &j->cap_lp, j->n_lp + 1, sizeof *j->lp)) {
				serve_logprob_entry *e = &j->lp[j->n_lp++];
				e->token = t->token;
				e->logprob = t->logprob;
				e->n_top = t->n_top < SB_SCHED_MAX_TOP_LOGPROBS ? t->n_top
				                                                : SB_SCHED_MAX_TOP_LOGPROBS;
				memcpy(e->top, t->top, e->n_top * sizeof *e->top);
			} else {
				j->oom = true;
			}
		}
	}
	if (t->text_len) {
		if (grow((void **)&j->text, &j->text_cap, j->text_len + t->text_len + 1, 1)) {
			memcpy(j->text + j->text_len, t->text, t->text_len);
			j->text_len += t->text_len;
			j->text[j->text_len] = 0;
		} else {
			j->oom = true;
		}
	}
	int stop = j->cancel != SERVE_CANCEL_NONE || j->oom;
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
	if (t->token >= 0)
		serve_metrics_tokens(&s->met, 1);
	return stop;
}

/* The scheduler's thread, once per job. */
static void on_done(const sb_seq_result *r)
{
	serve_job *j = r->user;
	serve_server *s = j->srv;
	serve_cache_entry *pe = NULL;
	pthread_mutex_lock(&j->mu);
	size_t n_gen = j->n_gen;
	bool keep = r->state && !j->oom &&
	            sb_state_n_tokens(r->state) == (uint64_t)(j->n_tokens + n_gen);
	sb_state *st = keep ? j->final : NULL;
	if (keep)
		j->final = NULL;
	pthread_mutex_unlock(&j->mu);
	if (keep) {
		/* The generation thread only reads here: the job's buffers are
		 * not written after on_done. Key: the request's tokens and the
		 * reply's. */
		int32_t *key = malloc((j->n_tokens + n_gen) * sizeof *key);
		if (key) {
			memcpy(key, j->tokens, j->n_tokens * sizeof *key);
			memcpy(key + j->n_tokens, j->gen, n_gen * sizeof *key);
			bool open_user = r->finish == SB_FINISH_STOP && j->tpl_stop >= 0 &&
			                 r->stop_index == j->tpl_stop;
			pe = serve_cache_store(s->cache, key, j->n_tokens + n_gen, st, n_gen,
			                       j->text ? j->text : "", j->text_len, open_user);
			free(key);
		} else {
			sb_state_free(st);
		}
	}
	pthread_mutex_lock(&s->qmu);
	s->active--;
	pthread_mutex_unlock(&s->qmu);

	pthread_mutex_lock(&s->met.mu);
	s->met.prompt_tokens += r->prompt_tokens;
	s->met.cached_tokens += r->cached_tokens;
	s->met.completion_tokens += r->completion_tokens;
	s->met.prompt_seconds += r->prompt_s;
	s->met.gen_seconds += r->gen_s;
	if (r->finish == SB_FINISH_CANCELLED)
		s->met.cancelled++;
	pthread_mutex_unlock(&s->met.mu);

	pthread_mutex_lock(&j->mu);
	j->finish = r->finish;
	j->stop_index = r->stop_index;
	j->prompt_tokens = r->prompt_tokens;
	j->cached_tokens = r->cached_tokens;
	j->completion_tokens = r->completion_tokens;
	j->queue_s = r->queue_s;
	j->prompt_s = r->prompt_s;
	j->gen_s = r->gen_s;
	if (r->error)
		j->error = *r->error;
	j->persist = pe;
	j->done = true;
	bool last = --j->refs == 0;
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
	if (last)
		job_free(j);
}

/* A system prompt is worth keeping on its own from this many tokens. */
#define SHARED_MIN 32

/* The shared prefix of a request read on its own first (max_tokens 0), on
 * the scheduler like any sequence; the connection's thread waits for it. */
typedef struct prefix_job {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
	serve_server *srv;
	const int32_t *tokens;   /* (n) the whole prefix, for the cache's key */
	size_t n;
	sb_state *final;
	bool stored;
	serve_cache_entry *persist;
} prefix_job;

static void on_prefix_done(const sb_seq_result *r)
{
	prefix_job *pj = r->user;
	serve_server *s = pj->srv;
	bool ok = r->state && sb_state_n_tokens(r->state) == (uint64_t)pj->n;
	if (ok) {
		pj->persist = serve_cache_store(s->cache, pj->tokens, pj->n, pj->final, 0, "", 0,
		                                false);
		pj->final = NULL;
	}
	pthread_mutex_lock(&s->met.mu);
	s->met.prompt_tokens += r->prompt_tokens;
	s->met.cached_tokens += r->cached_tokens;
	s->met.prompt_seconds += r->prompt_s;
	pthread_mutex_unlock(&s->met.mu);
	pthread_mutex_lock(&pj->mu);
	pj->stored = ok;
	pj->done = true;
	pthread_cond_broadcast(&pj->cv);
	pthread_mutex_unlock(&pj->mu);
}

typedef struct submit_args {
	serve_job *j;
	sb_seq_params *p;
	const serve_job_spec *spec;
	int rc;
	sb_error *err;
	int32_t *history;        /* (n_history) the cached prefix's last tokens */
} submit_args;

static void submit_from(const sb_state *st, size_t n, void *arg)
{
	submit_args *a = arg;
	a->p->start = st;
	a->p->tokens = a->spec->tokens + n;
	a->p->n_tokens = a->spec->n_tokens - n;
	size_t nh = a->spec->sp.repeat_last_n > 0 ? (size_t)a->spec->sp.repeat_last_n : 0;
	if (nh > n)
		nh = n;
	a->p->history = a->spec->tokens + n - nh;
	a->p->n_history = nh;
	a->j->cached = n;
	a->rc = sb_sched_submit(a->j->srv->sched, a->p, &a->j->seq, a->err);
}

typedef struct prefix_args {
	serve_server *srv;
	sb_seq_params *p;
	size_t shared;
	size_t from;             /* tokens of the prefix found in the cache */
	int rc;                  /* 1: nothing to read; 0: submitted; < 0 */
	sb_error *err;
} prefix_args;

/* Under the cache's lock (the state is valid during the call only). */
static void submit_prefix(const sb_state *st, size_t n, void *arg)
{
	prefix_args *a = arg;
	a->from = n;
	if (n == a->shared) {
		a->rc = 1;
		return;
	}
	sb_seq_params *p = a->p;
	size_t nh = n < 64 ? n : 64;
	p->start = st;
	p->tokens += n;
	p->n_tokens -= n;
	p->history = p->tokens - nh;
	p->n_history = nh;
	a->rc = sb_sched_submit(a->srv->sched, p, NULL, a->err);
}

/* Reads spec's shared prefix (bos and a system prompt) into the cache on
 * its own unless the cache has it already, so that every conversation
 * opening with it starts after it. Returns how many of its tokens were
 * read now (the request's usage does not count them as cached). A failure
 * is not the request's: it then reads those tokens itself. */
static size_t read_shared(serve_server *s, const serve_job_spec *spec)
{
	prefix_job pj = {.srv = s, .tokens = spec->tokens, .n = spec->shared};
	sb_error err = {0};
	sb_seq_params p = sb_seq_default_params();
	p.tokens = spec->tokens;
	p.n_tokens = spec->shared;
	p.sampler = spec->sp;
	p.max_tokens = 0;
	p.on_done = on_prefix_done;
	p.user = &pj;
	prefix_args a = {.srv = s, .p = &p, .shared = spec->shared, .rc = 0, .err = &err};
	if (!(pj.final = sb_state_new(s->m, &err)))
		return 0;
	p.final_state = pj.final;
	pthread_mutex_init(&pj.mu, NULL);
	pthread_cond_init(&pj.cv, NULL);
	/* A probe (not counted as a hit or a miss: the request's own lookup
	 * follows). */
	if (!serve_cache_probe_prefix(s->cache, spec->tokens, spec->shared, submit_prefix, &a))
		a.rc = sb_sched_submit(s->sched, &p, NULL, &err);
	if (a.rc == 0) {
		pthread_mutex_lock(&pj.mu);
		while (!pj.done)
			pthread_cond_wait(&pj.cv, &pj.mu);
		pthread_mutex_unlock(&pj.mu);
	}
	/* Written here, not on the scheduler's thread. */
	serve_cache_persist(s->cache, pj.persist);
	sb_state_free(pj.final);
	pthread_cond_destroy(&pj.cv);
	pthread_mutex_destroy(&pj.mu);
	return a.rc == 0 && pj.stored ? spec->shared - a.from : 0;
}

int serve_job_start(serve_server *s, const serve_job_spec *spec, serve_job **out,
                    sb_error *err)
{
	if (atomic_load(&s->draining))
		return SERVE_UNAVAILABLE;
	if (spec->n_tokens == 0) {
		sb_error_set(err, SB_ERR_ARG, "the prompt has no tokens");
		return SERVE_INVALID;
	}
	pthread_mutex_lock(&s->qmu);
	bool full = s->active >= s->o.parallel + s->o.queue;
	if (!full)
		s->active++;
	pthread_mutex_unlock(&s->qmu);
	if (full)
		return SERVE_BUSY;

	serve_job *j = calloc(1, sizeof *j);
	if (!j)
		goto nomem;
	j->srv = s;
	pthread_mutex_init(&j->mu, NULL);
	pthread_cond_init(&j->cv, NULL);
	j->stop_index = -1;
	j->tpl_stop = spec->tpl_stop;
	j->logprobs = spec->logprobs;
	j->t_start = cli_now();
	j->deadline = j->t_start + s->o.timeout_s;
	/* The final state is kept only by a cache that can hold one. */
	bool keep = s->o.cache_bytes >= sb_state_bytes(s->m);
	if (!(j->tokens = malloc(spec->n_tokens * sizeof *j->tokens)) ||
	    (keep && !(j->final = sb_state_new(s->m, err)))) {
		job_free(j);
		goto nomem;
	}
	memcpy(j->tokens, spec->tokens, spec->n_tokens * sizeof *j->tokens);
	j->n_tokens = spec->n_tokens;
	j->refs = 2;

	sb_seq_params p = sb_seq_default_params();
	p.tokens = spec->tokens;
	p.n_tokens = spec->n_tokens;
	p.sampler = spec->sp;
	p.max_tokens = spec->max_tokens;
	p.stops = spec->stops;
	p.n_stops = spec->n_stops;
	p.text_at_start = spec->text_at_start;
	p.logprobs = spec->logprobs;
	p.top_logprobs = spec->top_logprobs;
	p.final_state = j->final;
	p.on_token = on_token;
	p.on_done = on_done;
	p.user = j;
	if (keep && spec->shared >= SHARED_MIN && spec->shared < spec->n_tokens)
		j->fresh_shared = read_shared(s, spec);
	submit_args a = {.j = j, .p = &p, .spec = spec, .rc = 0, .err = err};
	/* At least one token is read: the first one sampled needs logits. */
	if (!serve_cache_use_prefix(s->cache, spec->tokens, spec->n_tokens - 1, submit_from, &a))
		a.rc = sb_sched_submit(s->sched, &p, &j->seq, err);
	if (a.rc < 0) {
		job_free(j);
		pthread_mutex_lock(&s->qmu);
		s->active--;
		pthread_mutex_unlock(&s->qmu);
		return SERVE_INVALID;
	}
	*out = j;
	return 0;
nomem:
	pthread_mutex_lock(&s->qmu);
	s->active--;
	pthread_mutex_unlock(&s->qmu);
	sb_error_set(err, SB_ERR_NOMEM, "out of memory");
	return SERVE_INVALID;
}

void serve_job_cancel(serve_job *j, serve_cancel why)
{
	pthread_mutex_lock(&j->mu);
	bool now = !j->done && j->cancel == SERVE_CANCEL_NONE;
	if (now)
		j->cancel = why;
	pthread_mutex_unlock(&j->mu);
	if (now)
		sb_sched_cancel(j->srv->sched, j->seq);
}

void serve_job_release(serve_job *j)
{
	if (!j)
		return;
	serve_job_cancel(j, SERVE_CANCEL_CLIENT);
	pthread_mutex_lock(&j->mu);
	while (!j->done)
		pthread_cond_wait(&j->cv, &j->mu);
	serve_cache_entry *pe = j->persist;
	j->persist = NULL;
	pthread_mutex_unlock(&j->mu);
	/* After the response: the next turn need not wait for the disk. */
	serve_cache_persist(j->srv->cache, pe);
	job_unref(j);
}

void *serve_sched_main(void *arg)
{
	serve_server *s = arg;
	sb_error err = {0};
	if (sb_sched_serve(s->sched, &err) < 0)
		serve_log("scheduler failed: %s", err.msg);
	return NULL;
}
