/*
 * test-scheduler.c - the generation scheduler against one-at-a-time runs.
 *
 * The reference for every sequence is written here from the engine's
 * primitives alone (prefill, then sample / accept / decode one token at a
 * time), and each sequence the scheduler runs - batched with others of
 * other lengths, refilled into freed slots, started from a snapshot, next
 * to sequences cancelled from another thread - must give exactly its
 * reference's tokens. Runs on the two converted official fixtures.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "scheduler.h"
#include "testutil.h"
#include "tokenizer.h"

static const char *cases[] = {"rotary-softmax", "simple-relu2-ffn"};
#define N_CASES 2
#define EOS 2            /* the fixtures' fairseq </s> */
#define MAX_GEN 512


static sb_ctx *new_ctx(const sb_model *m)
{
	sb_error err = {0};
	sb_ctx *c = tu_ctx_new(m, 1, &err);
	ck_assert_msg(c != NULL, "%s", err.msg);
	return c;
}

/* Word ids (4..V-1) from a small LCG, so prompts are reproducible. */
static void prompt(int32_t *out, size_t n, int V, uint32_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1664525u + 1013904223u;
		out[i] = 4 + (int32_t)((seed >> 8) % (uint32_t)(V - 4));
	}
}

static sb_sampler_params greedy(void)
{
	sb_sampler_params p = sb_sampler_default_params();
	p.temp = 0;
	return p;
}

static sb_sampler_params seeded(uint64_t seed)
{
	sb_sampler_params p = sb_sampler_default_params();
	p.temp = 1.0f;
	p.top_k = 0;
	p.top_p = 1;
	p.min_p = 0;
	p.repeat_penalty = 1.3f;
	p.seed = seed;
	return p;
}

/* One sequence generated token by token with the engine's primitives:
 * `history` already in `start` (or nothing), then `toks`. Returns the
 * number of tokens generated into out; *eos: it ended at </s>. */
static size_t reference(sb_ctx *ctx, const sb_state *start, const int32_t *history,
                        size_t n_history, const int32_t *toks, size_t n,
                        const sb_sampler_params *sp, long max, bool ignore_eos,
                        int32_t *out, bool *eos)
{
	const sb_model *m = sb_ctx_model(ctx);
	size_t V = (size_t)sb_model_config(m)->vocab_size;
	sb_error err = {0};
	sb_state *st = start ? sb_state_clone(start, &err) : sb_state_new(m, &err);
	sb_sampler *smp = sb_sampler_new(sp, (int)V, &err);
	float *logits = malloc(V * sizeof(float)), *work = malloc(V * sizeof(float));
	ck_assert(st && smp && logits && work);
	ck_assert_uint_gt(n, 0);
	sb_outputs o = {.last_logits = logits};
	ck_assert_int_eq(sb_prefill(ctx, st, toks, n, &o, &err), 0);
	for (size_t i = 0; i < n_history; i++)
		sb_sampler_accept(smp, history[i]);
	for (size_t i = 0; i < n; i++)
		sb_sampler_accept(smp, toks[i]);
	size_t k = 0;
	*eos = false;
	while ((max < 0 || k < (size_t)max) && k < MAX_GEN) {
		memcpy(work, logits, V * sizeof(float));
		int32_t t = sb_sampler_sample(smp, work);
		if (t == EOS && !ignore_eos) {
			*eos = true;
			break;
		}
		sb_sampler_accept(smp, t);
		out[k++] = t;
		ck_assert_int_eq(sb_decode(ctx, st, t, logits, &err), 0);
	}
	sb_state_free(st);
	sb_sampler_free(smp);
	free(logits);
	free(work);
	return k;
}

/* What the callbacks of one scheduled sequence saw. */
typedef struct got {
	int32_t tokens[MAX_GEN + 1];
	atomic_size_t n;
	char text[8192];
	size_t text_len;
	bool done;
	int n_done;
	sb_finish finish;
	int stop_index;
	size_t prompt_tokens, cached_tokens, completion_tokens;
	bool state;
	int cancel_after;        /* on_token asks to stop after this many; 0: never */
	bool logprob_ok;         /* the log probabilities were consistent */
	/* At its gate_at'th token on_token waits for *gate: another thread
	 * acts while the scheduler is inside this step. */
	int gate_at;
	atomic_bool *gate;
} got;

static int on_token(const sb_seq_token *t)
{
	got *g = t->user;
	ck_assert(!g->done);
	if (t->token >= 0) {
		size_t n = atomic_load(&g->n);
		ck_assert_uint_eq(t->index, n);
		ck_assert_uint_lt(n, MAX_GEN + 1);
		g->tokens[n] = t->token;
		atomic_store(&g->n, n + 1);
		if (t->n_top) {
			/* the top list is sorted and, for greedy, led by the token */
			for (size_t i = 1; i < t->n_top; i++)
				if (t->top[i].logprob > t->top[i - 1].logprob)
					g->logprob_ok = false;
			if (t->top[0].token != t->token || t->top[0].logprob != t->logprob ||
			    !(t->logprob <= 0))
				g->logprob_ok = false;
		}
	}
	if (g->gate && t->token >= 0 && (int)atomic_load(&g->n) == g->gate_at) {
		struct timespec ts = {0, 100000};
		while (!atomic_load(g->gate))
			nanosleep(&ts, NULL);
	}
	ck_assert_uint_le(g->text_len + t->text_len, sizeof g->text);
	memcpy(g->text + g->text_len, t->text, t->text_len);
	g->text_len += t->text_len;
	return g->cancel_after && (int)atomic_load(&g->n) >= g->cancel_after;
}

static void on_done(const sb_seq_result *r)
{
	got *g = r->user;
	g->n_done++;
	g->done = true;
	g->finish = r->finish;
	g->stop_index = r->stop_index;
	g->prompt_tokens = r->prompt_tokens;
	g->cached_tokens = r->cached_tokens;
	g->completion_tokens = r->completion_tokens;
	g->state = r->state != NULL;
	ck_assert_msg(r->finish != SB_FINISH_ERROR, "sequence failed: %s", r->error->msg);
}

static uint64_t submit(sb_sched *s, got *g, const sb_seq_params *base)
{
	sb_seq_params p = *base;
	p.on_token = on_token;
	p.on_done = on_done;
	p.user = g;
	uint64_t id = 0;
	sb_error err = {0};
	ck_assert_msg(sb_sched_submit(s, &p, &id, &err) == 0, "submit: %s", err.msg);
	ck_assert_uint_ne(id, 0);
	return id;
}

static void assert_same(const got *g, const int32_t *want, size_t n, const char *what)
{
	ck_assert_msg(atomic_load(&g->n) == n, "%s: %zu tokens, one at a time %zu",
	              what, atomic_load(&g->n), n);
	for (size_t i = 0; i < n; i++)
		ck_assert_msg(g->tokens[i] == want[i], "%s: token %zu is %d, one at a time %d",
		              what, i, g->tokens[i], want[i]);
}

/* Twelve sequences of mixed prompt and output lengths, greedy and seeded,
 * three slots: every slot is refilled several times. Prompts are prefilled
 * whole, or 5 tokens per step while the others decode (_i >= N_CASES). */
START_TEST(scheduler_batches_equal_one_at_a_time)
{
	const char *name = cases[_i % N_CASES];
	sb_model *m = tu_load_fixture_model(name);
	int V = sb_model_config(m)->vocab_size;
	sb_ctx *ctx = new_ctx(m);
	sb_sched_params sp = sb_sched_default_params();
	sp.max_batch = 3;
	sp.eos_id = EOS;
	sp.prefill_chunk = _i >= N_CASES ? 5 : 0;
	sb_error err = {0};
	sb_sched *s = sb_sched_new(ctx, &sp, &err);
	ck_assert_msg(s != NULL, "%s", err.msg);
	enum { N = 12 };
	static const size_t plen[N] = {1, 7, 40, 3, 19, 2, 64, 5, 11, 1, 30, 9};
	static const long maxn[N] = {20, 3, 45, 0, 1, 60, 8, 33, 2, 50, 17, 26};
	static got g[N];
	int32_t toks[N][64];
	memset(g, 0, sizeof g);
	for (int i = 0; i < N; i++) {
		prompt(toks[i], plen[i], V, 100u + (uint32_t)i);
		sb_seq_params p = sb_seq_default_params();
		p.tokens = toks[i];
		p.n_tokens = plen[i];
		p.sampler = i % 2 ? seeded(1000 + (uint64_t)i) : greedy();
		p.max_tokens = maxn[i];
		p.ignore_eos = i % 3 == 0;
		p.logprobs = i % 2 == 0;
		p.top_logprobs = i % 4 == 0 ? 5 : 1;
		g[i].logprob_ok = true;
		submit(s, &g[i], &p);
	}
	sb_sched_stats st;
	sb_sched_stats_get(s, &st);
	ck_assert_uint_eq(st.pending, N);
	ck_assert_uint_eq(st.slots, 3);
	int steps = 0, rc;
	while ((rc = sb_sched_step(s, &err)) > 0) {
		sb_sched_stats_get(s, &st);
		ck_assert_uint_le(st.running, 3);
		steps++;
	}
	ck_assert_int_eq(rc, 0);
	for (int i = 0; i < N; i++) {
		int32_t want[MAX_GEN];
		bool eos;
		sb_seq_params p = sb_seq_default_params();
		p.sampler = i % 2 ? seeded(1000 + (uint64_t)i) : greedy();
		size_t n = reference(ctx, NULL, NULL, 0, toks[i], plen[i], &p.sampler, maxn[i],
		                     i % 3 == 0, want, &eos);
		char what[64];
		snprintf(what, sizeof what, "%s chunk %zu sequence %d", name, sp.prefill_chunk, i);
		ck_assert_int_eq(g[i].n_done, 1);
		assert_same(&g[i], want, n, what);
		ck_assert_int_eq(g[i].finish, eos ? SB_FINISH_EOS : SB_FINISH_LENGTH);
		ck_assert_uint_eq(g[i].completion_tokens, n);
		ck_assert_uint_eq(g[i].prompt_tokens, plen[i]);
		ck_assert_uint_eq(g[i].cached_tokens, 0);
		ck_assert(!g[i].state);
		if (i % 2 == 0)
			ck_assert_msg(g[i].logprob_ok, "%s: log probabilities inconsistent", what);
	}
	/* Batched: fewer steps than tokens. */
	size_t total = 0;
	for (int i = 0; i < N; i++)
		total += atomic_load(&g[i].n);
	ck_assert_uint_lt((size_t)steps, total);
	sb_sched_stats_get(s, &st);
	ck_assert_uint_eq(st.submitted, N);
	ck_assert_uint_eq(st.pending + st.running, 0);
	size_t prompt_total = 0;
	for (int i = 0; i < N; i++)
		prompt_total += plen[i];
	ck_assert_uint_eq(st.prompt_tokens, prompt_total);
	ck_assert_uint_eq(st.completion_tokens, total);
	sb_sched_free(s);
	sb_ctx_free(ctx);
	sb_model_free(m);
}
END_TEST

/* A snapshot after a prefix, continued with the rest of the prompt, gives
 * what the whole prompt gives; so does the state after the whole prompt
 * with its logits and no new tokens. The final state holds every token. */
START_TEST(scheduler_snapshot_start_equals_full_prefill)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	int V = sb_model_config(m)->vocab_size;
	sb_ctx *ctx = new_ctx(m);
	sb_sched_params sp = sb_sched_default_params();
	sp.max_batch = 4;
	sp.eos_id = EOS;
	sb_error err = {0};
	sb_sched *s = sb_sched_new(ctx, &sp, &err);
	ck_assert_msg(s != NULL, "%s", err.msg);
	int32_t toks[50];
	const size_t P = 30, T = 50;
	prompt(toks, T, V, 7);
	sb_state *snap = sb_state_new(m, &err), *whole = sb_state_new(m, &err);
	sb_state *fin[3] = {sb_state_new(m, &err), sb_state_new(m, &err), sb_state_new(m, &err)};
	float *whole_logits = malloc((size_t)V * sizeof(float));
	float *fin_logits = malloc(3 * (size_t)V * sizeof(float));
	ck_assert_int_eq(sb_prefill(ctx, snap, toks, P, NULL, &err), 0);
	sb_outputs o = {.last_logits = whole_logits};
	ck_assert_int_eq(sb_prefill(ctx, whole, toks, T, &o, &err), 0);
	for (int smp = 0; smp < 2; smp++) {
		static got g[3];
		memset(g, 0, sizeof g);
		sb_seq_params p = sb_seq_default_params();
		p.sampler = smp ? seeded(77) : greedy();
		p.max_tokens = 40;
		p.ignore_eos = true;
		p.tokens = toks;
		p.n_tokens = T;
		p.final_state = fin[0];
		p.final_logits = fin_logits;
		submit(s, &g[0], &p);
		p.start = snap;
		p.history = toks;
		p.n_history = P;
		p.tokens = toks + P;
		p.n_tokens = T - P;
		p.final_state = fin[1];
		p.final_logits = fin_logits + V;
		submit(s, &g[1], &p);
		p.start = whole;
		p.start_logits = whole_logits;
		p.history = toks;
		p.n_history = T;
		p.tokens = NULL;
		p.n_tokens = 0;
		p.final_state = fin[2];
		p.final_logits = fin_logits + 2 * V;
		submit(s, &g[2], &p);
		ck_assert_int_eq(sb_sched_run(s, &err), 0);
		int32_t want[MAX_GEN];
		bool eos;
		size_t n = reference(ctx, NULL, NULL, 0, toks, T, &p.sampler, 40, true, want, &eos);
		ck_assert_uint_eq(n, 40);
		assert_same(&g[0], want, n, "whole prompt");
		assert_same(&g[1], want, n, "snapshot + rest of the prompt");
		assert_same(&g[2], want, n, "snapshot of the whole prompt + its logits");
		ck_assert_uint_eq(g[1].cached_tokens, P);
		ck_assert_uint_eq(g[1].prompt_tokens, T - P);
		ck_assert_uint_eq(g[2].cached_tokens, T);
		ck_assert_uint_eq(g[2].prompt_tokens, 0);
		for (int k = 0; k < 3; k++) {
			ck_assert(g[k].state);
			ck_assert_uint_eq(sb_state_n_tokens(fin[k]), T + 40);
		}
		/* The final logits are the prediction after the last token: the
		 * reference's 41st greedy token is their argmax. */
		if (!smp) {
			int32_t more[MAX_GEN];
			size_t n41 = reference(ctx, NULL, NULL, 0, toks, T, &p.sampler, 41, true, more, &eos);
			ck_assert_uint_eq(n41, 41);
			for (int k = 0; k < 3; k++) {
				const float *l = fin_logits + (size_t)k * (size_t)V;
				int best = 0;
				for (int v = 1; v < V; v++)
					if (l[v] > l[best])
						best = v;
				ck_assert_int_eq(best, more[40]);
			}
		}
	}
	/* The caller's start state is copied at submit: changing it after
	 * does not change the sequence. */
	static got a, b;
	memset(&a, 0, sizeof a);
	memset(&b, 0, sizeof b);
	sb_seq_params p = sb_seq_default_params();
	p.sampler = greedy();
	p.max_tokens = 10;
	p.start = snap;
	p.tokens = toks + P;
	p.n_tokens = T - P;
	submit(s, &a, &p);
	sb_state_reset(snap);
	ck_assert_int_eq(sb_sched_run(s, &err), 0);
	p.start = NULL;
	p.tokens = toks;
	p.n_tokens = T;
	submit(s, &b, &p);
	ck_assert_int_eq(sb_sched_run(s, &err), 0);
	ck_assert_uint_eq(atomic_load(&a.n), 10);
	assert_same(&a, b.tokens, 10, "start changed after submit");
	for (int k = 0; k < 3; k++)
		sb_state_free(fin[k]);
	free(fin_logits);
	free(whole_logits);
	sb_state_free(snap);
	sb_state_free(whole);
	sb_sched_free(s);
	sb_ctx_free(ctx);
	sb_model_free(m);
}
END_TEST

typedef struct canceller {
	sb_sched *s;
	got *watch;              /* wait until it has `after` tokens */
	int after;
	uint64_t id;             /* 0: cancel_all */
	atomic_bool done;        /* the cancel was made */
} canceller;

static void *cancel_thread(void *arg)
{
	canceller *c = arg;
	struct timespec ts = {0, 200000};
	while ((int)atomic_load(&c->watch->n) < c->after)
		nanosleep(&ts, NULL);
	if (c->id)
		sb_sched_cancel(c->s, c->id);
	else
		sb_sched_cancel_all(c->s);
	atomic_store(&c->done, true);
	return NULL;
}

/* Sequences cancelled from another thread, by their own token callback and
 * while still pending stop; the others give their one-at-a-time tokens. */
START_TEST(scheduler_cancel_one_and_all)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	int V = sb_model_config(m)->vocab_size;
	sb_ctx *ctx = new_ctx(m);
	sb_sched_params sp = sb_sched_default_params();
	sp.max_batch = 3;
	sp.eos_id = EOS;
	sb_error err = {0};
	sb_sched *s = sb_sched_new(ctx, &sp, &err);
	ck_assert_msg(s != NULL, "%s", err.msg);
	int32_t toks[6][8];
	for (int i = 0; i < 6; i++)
		prompt(toks[i], 3 + (size_t)i, V, 300u + (uint32_t)i);
	static got g[6];
	memset(g, 0, sizeof g);
	sb_seq_params p = sb_seq_default_params();
	p.ignore_eos = true;
	uint64_t ids[6];
	for (int i = 0; i < 6; i++) {
		p.tokens = toks[i];
		p.n_tokens = 3 + (size_t)i;
		p.sampler = i % 2 ? seeded(50 + (uint64_t)i) : greedy();
		/* 0: cancelled from a thread; 1: by its callback; 4: while
		 * pending; the others run to their limit. */
		p.max_tokens = i == 0 ? MAX_GEN : 25 + 10 * i;
		g[i].cancel_after = i == 1 ? 7 : 0;
		ids[i] = submit(s, &g[i], &p);
	}
	sb_sched_cancel(s, ids[4]);
	sb_sched_cancel(s, 999999); /* unknown: ignored */
	static canceller c;
	c = (canceller){.s = s, .watch = &g[0], .after = 12, .id = ids[0]};
	atomic_init(&c.done, false);
	g[0].gate = &c.done;
	g[0].gate_at = 12;
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, cancel_thread, &c), 0);
	ck_assert_int_eq(sb_sched_run(s, &err), 0);
	pthread_join(th, NULL);
	sb_sched_cancel(s, ids[0]); /* finished: ignored */
	for (int i = 0; i < 6; i++) {
		ck_assert_int_eq(g[i].n_done, 1);
		int32_t want[MAX_GEN];
		bool eos;
		sb_sampler_params smp = i % 2 ? seeded(50 + (uint64_t)i) : greedy();
		size_t n = reference(ctx, NULL, NULL, 0, toks[i], 3 + (size_t)i, &smp,
		                     i == 0 ? MAX_GEN : 25 + 10 * i, true, want, &eos);
		size_t got_n = atomic_load(&g[i].n);
		char what[64];
		snprintf(what, sizeof what, "%s sequence %d", cases[_i], i);
		if (i == 0) {
			/* cancelled during the step of its 12th token: that token
			 * is delivered, nothing after it */
			ck_assert_int_eq(g[i].finish, SB_FINISH_CANCELLED);
			ck_assert_uint_eq(got_n, 12);
			assert_same(&g[i], want, got_n, what); /* a prefix of its run */
		} else if (i == 1) {
			ck_assert_int_eq(g[i].finish, SB_FINISH_CANCELLED);
			assert_same(&g[i], want, 7, what);
		} else if (i == 4) {
			ck_assert_int_eq(g[i].finish, SB_FINISH_CANCELLED);
			ck_assert_uint_eq(got_n, 0);
			ck_assert_uint_eq(g[i].completion_tokens, 0);
		} else {
			ck_assert_int_eq(g[i].finish, SB_FINISH_LENGTH);
			assert_same(&g[i], want, n, what);
		}
	}

	/* cancel_all from another thread ends every sequence under way; one
	 * submitted afterwards runs normally. */
	memset(g, 0, sizeof g);
	p.max_tokens = MAX_GEN;
	for (int i = 0; i < 5; i++) {
		p.tokens = toks[i];
		p.n_tokens = 3 + (size_t)i;
		p.sampler = greedy();
		ids[i] = submit(s, &g[i], &p);
	}
	c = (canceller){.s = s, .watch = &g[0], .after = 5, .id = 0};
	atomic_init(&c.done, false);
	g[0].gate = &c.done;
	g[0].gate_at = 5;
	ck_assert_int_eq(pthread_create(&th, NULL, cancel_thread, &c), 0);
	ck_assert_int_eq(sb_sched_run(s, &err), 0);
	pthread_join(th, NULL);
	ck_assert_uint_eq(atomic_load(&g[0].n), 5);
	for (int i = 0; i < 5; i++) {
		ck_assert_int_eq(g[i].n_done, 1);
		ck_assert_int_eq(g[i].finish, SB_FINISH_CANCELLED);
		ck_assert_uint_le(atomic_load(&g[i].n), 5);
	}
	p.max_tokens = 9;
	p.tokens = toks[5];
	p.n_tokens = 8;
	submit(s, &g[5], &p);
	ck_assert_int_eq(sb_sched_run(s, &err), 0);
	ck_assert_int_eq(g[5].finish, SB_FINISH_LENGTH);
	ck_assert_uint_eq(atomic_load(&g[5].n), 9);

	/* Freeing the scheduler finishes what is left as cancelled. */
	memset(g, 0, sizeof g);
	submit(s, &g[0], &p);
	sb_sched_free(s);
	ck_assert_int_eq(g[0].n_done, 1);
	ck_assert_int_eq(g[0].finish, SB_FINISH_CANCELLED);
	sb_ctx_free(ctx);
	sb_model_free(m);
}
END_TEST

/* Text through the tokenizer's detokenizer: a stop string cut out of the
 * one-at-a-time text ends the sequence where it starts. */
START_TEST(scheduler_stop_string_cuts_the_text)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	int V = sb_model_config(m)->vocab_size;
	sb_error err = {0};
	sb_tokenizer *tok = sb_tokenizer_load_for_model(m, SB_BYTES_AUTO, &err);
	ck_assert_msg(tok != NULL, "%s", err.msg);
	sb_ctx *ctx = new_ctx(m);
	sb_sched_params sp = sb_sched_default_params();
	sp.max_batch = 2;
	sp.eos_id = EOS;
	sp.text = sb_tokenizer_sched_text(tok);
	sb_sched *s = sb_sched_new(ctx, &sp, &err);
	ck_assert_msg(s != NULL, "%s", err.msg);
	int32_t toks[6];
	prompt(toks, 6, V, 9);
	static got full, cut;
	memset(&full, 0, sizeof full);
	memset(&cut, 0, sizeof cut);
	sb_seq_params p = sb_seq_default_params();
	p.tokens = toks;
	p.n_tokens = 6;
	p.sampler = greedy();
	p.max_tokens = 30;
	p.ignore_eos = true;
	submit(s, &full, &p);
	ck_assert_int_eq(sb_sched_run(s, &err), 0);
	ck_assert_int_eq(full.finish, SB_FINISH_LENGTH);
	/* The streamed text is the tokenizer's decoding of the tokens. */
	sb_detok *d = sb_detok_new(tok, &err);
	sb_detok_reset(d, false);
	char want[8192];
	size_t wn = 0;
	for (size_t i = 0; i < atomic_load(&full.n); i++) {
		const char *o;
		size_t ol;
		ck_assert_int_eq(sb_detok_push(d, full.tokens[i], &o, &ol, &err), 0);
		memcpy(want + wn, o, ol);
		wn += ol;
	}
	sb_detok_free(d);
	want[wn] = 0;
	ck_assert_uint_eq(full.text_len, wn);
	ck_assert(!memcmp(full.text, want, wn));
	ck_assert_uint_gt(wn, 20);
	char stop[8];
	memcpy(stop, full.text + 10, 6);
	stop[6] = 0;
	const char *stops[] = {"never in this text \x01", stop};
	p.stops = stops;
	p.n_stops = 2;
	submit(s, &cut, &p);
	ck_assert_int_eq(sb_sched_run(s, &err), 0);
	ck_assert_int_eq(cut.finish, SB_FINISH_STOP);
	ck_assert_int_eq(cut.stop_index, 1);
	const char *at = strstr(want, stop);
	ck_assert_ptr_nonnull(at);
	ck_assert_uint_eq(cut.text_len, (size_t)(at - want));
	ck_assert(!memcmp(cut.text, want, cut.text_len));
	sb_sched_free(s);
	sb_ctx_free(ctx);
	sb_tokenizer_free(tok);
	sb_model_free(m);
}
END_TEST

typedef struct client {
	sb_sched *s;
	got *g;
	const int32_t *toks;
	size_t n;
	uint64_t seed;
} client;

static void *client_thread(void *arg)
{
	client *c = arg;
	sb_seq_params p = sb_seq_default_params();
	p.tokens = c->toks;
	p.n_tokens = c->n;
	p.sampler = seeded(c->seed);
	p.max_tokens = 30;
	p.ignore_eos = true;
	submit(c->s, c->g, &p);
	return NULL;
}

static void *serve_thread(void *arg)
{
	sb_error err = {0};
	intptr_t rc = sb_sched_serve(arg, &err);
	return (void *)rc;
}

/* A server's pattern: the scheduler on its own thread, sequences
 * submitted from several others while it runs, then shutdown. */
START_TEST(scheduler_serve_takes_submissions_from_threads)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	int V = sb_model_config(m)->vocab_size;
	sb_ctx *ctx = new_ctx(m);
	sb_sched_params sp = sb_sched_default_params();
	sp.max_batch = 2;
	sp.eos_id = EOS;
	sb_error err = {0};
	sb_sched *s = sb_sched_new(ctx, &sp, &err);
	ck_assert_msg(s != NULL, "%s", err.msg);
	pthread_t srv, cl[4];
	ck_assert_int_eq(pthread_create(&srv, NULL, serve_thread, s), 0);
	static got g[4];
	memset(g, 0, sizeof g);
	int32_t toks[4][12];
	client c[4];
	for (int i = 0; i < 4; i++) {
		prompt(toks[i], 4 + 2 * (size_t)i, V, 500u + (uint32_t)i);
		c[i] = (client){.s = s, .g = &g[i], .toks = toks[i], .n = 4 + 2 * (size_t)i,
		                .seed = 9 + (uint64_t)i};
		ck_assert_int_eq(pthread_create(&cl[i], NULL, client_thread, &c[i]), 0);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(cl[i], NULL);
	sb_sched_shutdown(s);
	void *rc;
	pthread_join(srv, &rc);
	ck_assert_int_eq((intptr_t)rc, 0);
	/* Submits after shutdown are refused. */
	sb_seq_params p = sb_seq_default_params();
	p.tokens = toks[0];
	p.n_tokens = 4;
	ck_assert_int_eq(sb_sched_submit(s, &p, NULL, &err), SB_ERR_ARG);
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(g[i].n_done, 1);
		int32_t want[MAX_GEN];
		bool eos;
		sb_sampler_params smp = seeded(9 + (uint64_t)i);
		size_t n = reference(ctx, NULL, NULL, 0, toks[i], 4 + 2 * (size_t)i, &smp, 30, true,
		                     want, &eos);
		assert_same(&g[i], want, n, "served sequence");
	}
	sb_sched_free(s);
	sb_ctx_free(ctx);
	sb_model_free(m);
}
END_TEST

/* Bad sequences are refused at submit, naming what is wrong. */
START_TEST(scheduler_submit_validates)
{
	sb_model *m = tu_load_fixture_model(cases[0]);
	sb_ctx *ctx = new_ctx(m);
	sb_sched_params sp = sb_sched_default_params();
	sb_error err = {0};
	sp.max_batch = 100000;
	ck_assert_ptr_null(sb_sched_new(ctx, &sp, &err));
	ck_assert_int_eq(err.code, SB_ERR_ARG);
	sp.max_batch = 2;
	sb_sched *s = sb_sched_new(ctx, &sp, &err);
	ck_assert_ptr_nonnull(s);
	int32_t bad[2] = {5, 72};
	sb_seq_params p = sb_seq_default_params();
	p.tokens = bad;
	p.n_tokens = 2;
	ck_assert_int_eq(sb_sched_submit(s, &p, NULL, &err), SB_ERR_ARG);
	ck_assert_ptr_nonnull(strstr(err.msg, "token 1"));
	p.n_tokens = 1;
	p.sampler.top_p = 2;
	ck_assert_int_eq(sb_sched_submit(s, &p, NULL, &err), SB_ERR_ARG);
	ck_assert_ptr_nonnull(strstr(err.msg, "top_p"));
	p.sampler = greedy();
	p.n_tokens = 0;
	ck_assert_int_eq(sb_sched_submit(s, &p, NULL, &err), SB_ERR_ARG);
	p.n_tokens = 1;
	const char *stops[] = {"x"};
	p.stops = stops;
	p.n_stops = 1;
	ck_assert_int_eq(sb_sched_submit(s, &p, NULL, &err), SB_ERR_ARG);
	ck_assert_ptr_nonnull(strstr(err.msg, "detokenizer"));
	p.n_stops = 0;
	p.top_logprobs = SB_SCHED_MAX_TOP_LOGPROBS + 1;
	ck_assert_int_eq(sb_sched_submit(s, &p, NULL, &err), SB_ERR_ARG);
	sb_sched_stats st;
	sb_sched_stats_get(s, &st);
	ck_assert_uint_eq(st.submitted, 0);
	ck_assert_str_eq(sb_finish_name(SB_FINISH_STOP), "stop");
	sb_sched_free(s);
	sb_ctx_free(ctx);
	sb_model_free(m);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("scheduler");
	TCase *tc = tcase_create("scheduler");
	tcase_set_timeout(tc, 300);
	tcase_add_loop_test(tc, scheduler_batches_equal_one_at_a_time, 0, 2 * N_CASES);
	tcase_add_loop_test(tc, scheduler_snapshot_start_equals_full_prefill, 0, N_CASES);
	tcase_add_loop_test(tc, scheduler_cancel_one_and_all, 0, N_CASES);
	tcase_add_loop_test(tc, scheduler_stop_string_cuts_the_text, 0, N_CASES);
	tcase_add_loop_test(tc, scheduler_serve_takes_submissions_from_threads, 0, N_CASES);
	tcase_add_test(tc, scheduler_submit_validates);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
