/*
 * test-engine.c - the forward pass against the official implementation's
 * outputs (tests/fixtures), in decode, prefill and split modes; the
 * constant-size state; snapshots; batching; no allocation per token.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* Allocation counter: the test links with -Wl,--wrap=malloc,... so every
 * allocation libseqboat makes passes through here. */
static long n_allocs;
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
void *__real_aligned_alloc(size_t a, size_t n);
void *__wrap_malloc(size_t n) { n_allocs++; return __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t m) { n_allocs++; return __real_calloc(n, m); }
void *__wrap_realloc(void *p, size_t n) { n_allocs++; return __real_realloc(p, n); }
void *__wrap_aligned_alloc(size_t a, size_t n) { n_allocs++; return __real_aligned_alloc(a, n); }

static const char *cases[] = {"rotary-softmax", "simple-relu2-ffn"};
#define N_CASES 2


typedef struct expected {
	sb_st_file *f;
	const int32_t *tokens;  // (T)
	const float *logits;    // (T, V)
	const uint8_t *act;     // (L, T)
	const float *hidden;    // (L, T, D)
	size_t T, V, L, D;
} expected;

static void load_expected(const char *name, expected *e)
{
	char rel[256];
	snprintf(rel, sizeof rel, "%s/expected.safetensors", name);
	sb_error err = {0};
	e->f = sb_st_open(tu_fixture(rel), &err);
	ck_assert_msg(e->f != NULL, "%s", err.msg);
	const sb_tensor *tok = sb_st_find(e->f, "tokens"), *lg = sb_st_find(e->f, "logits"),
	                *ac = sb_st_find(e->f, "act"), *hd = sb_st_find(e->f, "hidden");
	ck_assert(tok && lg && ac && hd);
	ck_assert_int_eq(tok->dtype, SB_DTYPE_I32);
	ck_assert_int_eq(lg->dtype, SB_DTYPE_F32);
	ck_assert_int_eq(ac->dtype, SB_DTYPE_U8);
	e->tokens = tok->data;
	e->logits = lg->data;
	e->act = ac->data;
	e->hidden = hd->data;
	e->T = tok->shape[0];
	e->V = lg->shape[1];
	e->L = ac->shape[0];
	e->D = hd->shape[2];
}

typedef enum { MODE_DECODE, MODE_PREFILL, MODE_SPLIT } run_mode;

/* Runs the fixture's tokens through the engine in one mode and compares
 * logits, act and hidden with the official outputs. */
static void check_parity(const char *name, run_mode mode)
{
	expected e;
	load_expected(name, &e);
	sb_model *m = tu_load_fixture_model(name);
	const sb_config *c = sb_model_config(m);
	ck_assert_uint_eq(e.V, (size_t)c->vocab_size);
	ck_assert_uint_eq(e.L, (size_t)c->layers);
	ck_assert_uint_eq(e.D, (size_t)c->embed_dim);
	sb_error err = {0};
	sb_ctx *ctx = tu_ctx_new(m, 1, &err);
	sb_state *s = sb_state_new(m, &err);
	ck_assert(ctx && s);
	float *logits = calloc(e.T * e.V, sizeof(float));
	float *hidden = calloc(e.L * e.T * e.D, sizeof(float));
	uint8_t *act = calloc(e.L * e.T, 1);
	sb_outputs out = {.logits = logits, .act = act, .hidden = hidden, .stride = e.T};
	size_t split = mode == MODE_DECODE ? 0 : mode == MODE_PREFILL ? e.T : e.T / 3;
	if (split)
		ck_assert_int_eq(sb_prefill(ctx, s, e.tokens, split, &out, &err), 0);
	for (size_t t = split; t < e.T; t++) {
		out.offset = t;
		ck_assert_int_eq(sb_prefill(ctx, s, e.tokens + t, 1, &out, &err), 0);
	}
	double worst = 0;
	for (size_t i = 0; i < e.T * e.V; i++)
		worst = fmax(worst, fabs((double)logits[i] - e.logits[i]));
	ck_assert_msg(worst <= 1e-4, "%s mode %d: logits differ by %g", name, mode, worst);
	for (size_t i = 0; i < e.L * e.T; i++)
		ck_assert_msg(act[i] == e.act[i], "%s mode %d: act[layer %zu][t %zu] = %d, expected %d",
		              name, mode, i / e.T, i % e.T, act[i], e.act[i]);
	worst = 0;
	for (size_t i = 0; i < e.L * e.T * e.D; i++)
		worst = fmax(worst, fabs((double)hidden[i] - e.hidden[i]));
	ck_assert_msg(worst <= 1e-4, "%s mode %d: hidden differs by %g", name, mode, worst);
	/* The routers must have fired somewhere and not everywhere, or the
	 * fixture would not exercise the attention unit. */
	size_t fired = 0;
	for (size_t i = 0; i < e.L * e.T; i++)
		fired += act[i];
	ck_assert(fired > 0 && fired < e.L * e.T);
	ck_assert_uint_eq(sb_state_n_tokens(s), e.T);
	free(logits);
	free(hidden);
	free(act);
	sb_state_free(s);
	sb_ctx_free(ctx);
	sb_model_free(m);
	sb_st_close(e.f);
}

START_TEST(engine_parity_decode) { check_parity(cases[_i], MODE_DECODE); }
END_TEST
START_TEST(engine_parity_prefill) { check_parity(cases[_i], MODE_PREFILL); }
END_TEST
START_TEST(engine_parity_split) { check_parity(cases[_i], MODE_SPLIT); }
END_TEST

static int32_t *random_tokens(size_t n, int V, unsigned seed)
{
	int32_t *t = malloc(n * sizeof *t);
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		t[i] = (int32_t)((seed >> 8) % (unsigned)V);
	}
	return t;
}

/* Prefill over more tokens than one block (and with the ring wrapping many
 * times) computes what token-by-token decode computes. */
START_TEST(engine_prefill_long_matches_decode)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	const sb_config *c = sb_model_config(m);
	const size_t T = 700, V = (size_t)c->vocab_size, L = (size_t)c->layers;
	int32_t *tok = random_tokens(T, c->vocab_size, 7);
	sb_error err = {0};
	sb_ctx *ctx = tu_ctx_new(m, 1, &err);
	sb_state *a = sb_state_new(m, &err), *b = sb_state_new(m, &err);
	float *la = calloc(T * V, sizeof(float)), *lb = calloc(T * V, sizeof(float));
	uint8_t *aa = calloc(L * T, 1), *ab = calloc(L * T, 1);
	sb_outputs oa = {.logits = la, .act = aa, .stride = T};
	ck_assert_int_eq(sb_prefill(ctx, a, tok, T, &oa, &err), 0);
	sb_outputs ob = {.logits = lb, .act = ab, .stride = T};
	for (size_t t = 0; t < T; t++) {
		ob.offset = t;
		ck_assert_int_eq(sb_prefill(ctx, b, tok + t, 1, &ob, &err), 0);
	}
	double worst = 0;
	for (size_t i = 0; i < T * V; i++)
		worst = fmax(worst, fabs((double)la[i] - lb[i]));
	ck_assert_msg(worst <= 1e-4, "prefill vs decode differ by %g", worst);
	ck_assert_mem_eq(aa, ab, L * T);
	free(tok);
	free(la);
	free(lb);
	free(aa);
	free(ab);
	sb_state_free(a);
	sb_state_free(b);
	sb_ctx_free(ctx);
	sb_model_free(m);
}
END_TEST

/* The state's size does not depend on how many tokens it has read. */
START_TEST(engine_state_size_is_constant)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	const sb_config *c = sb_model_config(m);
	sb_error err = {0};
	sb_ctx *ctx = tu_ctx_new(m, 1, &err);
	sb_state *s = sb_state_new(m, &err);
	size_t bytes0 = sb_state_bytes(m), ser0 = sb_state_serialized_size(m);
	int32_t *tok = random_tokens(100000, c->vocab_size, 3);
	ck_assert_int_eq(sb_prefill(ctx, s, tok, 10, NULL, &err), 0);
	unsigned char *buf10 = malloc(ser0), *buf100k = malloc(ser0);
	ck_assert_int_eq(sb_state_serialize(s, buf10, ser0, &err), 0);
	ck_assert_int_eq(sb_prefill(ctx, s, tok + 10, 100000 - 10, NULL, &err), 0);
	ck_assert_uint_eq(sb_state_n_tokens(s), 100000);
	ck_assert_uint_eq(sb_state_bytes(m), bytes0);
	ck_assert_uint_eq(sb_state_serialized_size(m), ser0);
	ck_assert_int_eq(sb_state_serialize(s, buf100k, ser0, &err), 0);
	/* A buffer one byte short is refused: the state really fills ser0. */
	ck_assert_int_eq(sb_state_serialize(s, buf100k, ser0 - 1, &err), SB_ERR_ARG);
	/* EMA (L*D*N) plus ring ((W+1)*(Z+H) floats and positions) per layer. */
	size_t L = (size_t)c->layers, W1 = (size_t)c->window + 1;
	size_t floats = L * ((size_t)c->embed_dim * c->n_dim + W1 * (size_t)(c->z_dim + c->hidden_dim));
	ck_assert_uint_ge(bytes0, floats * 4 + L * W1 * 8);
	ck_assert_uint_le(bytes0, floats * 4 + L * W1 * 8 + 64 * L + 64);
	for (int l = 0; l < c->layers; l++)
		ck_assert_uint_le(sb_state_n_activated(s, l), 100000);
	free(tok);
	free(buf10);
	free(buf100k);
	sb_state_free(s);
	sb_ctx_free(ctx);
	sb_model_free(m);
}
END_TEST

/* Decoding a token allocates nothing. */
START_TEST(engine_decode_allocates_nothing)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	const sb_config *c = sb_model_config(m);
	sb_error err = {0};
	sb_ctx *ctx = tu_ctx_new(m, 1, &err);
	sb_state *s = sb_state_new(m, &err);
	float *logits = malloc((size_t)c->vocab_size * sizeof(float));
	int32_t *tok = random_tokens(2000, c->vocab_size, 11);
	ck_assert_int_eq(sb_decode(ctx, s, tok[0], logits, &err), 0); /* warm-up */
	/* No ck_assert inside the loop: Check itself allocates to record
	 * each passing assertion. */
	long before = n_allocs;
	int bad = 0;
	for (int i = 1; i < 2000; i++)
		bad |= sb_decode(ctx, s, tok[i], logits, &err);
	long during = n_allocs - before;
	ck_assert_int_eq(bad, 0);
	ck_assert_int_eq(during, 0);
	/* And the counter does count: a state allocates. */
	sb_state *t = sb_state_new(m, &err);
	ck_assert_int_gt(n_allocs - before, 0);
	sb_state_free(t);
	free(tok);
	free(logits);
	sb_state_free(s);
	sb_ctx_free(ctx);
	sb_model_free(m);
}
END_TEST

/* Decode N, snapshot, decode M, restore, decode M again: identical. Also
 * through serialization to a file. */
START_TEST(engine_snapshot_restore_is_identical)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	const sb_config *c = sb_model_config(m);
	const size_t V = (size_t)c->vocab_size, N = 50, M = 40;
	sb_error err = {0};
	sb_ctx *ctx = tu_ctx_new(m, 1, &err);
	sb_state *s = sb_state_new(m, &err);
	int32_t *tok = random_tokens(N + M, c->vocab_size, 5);
	ck_assert_int_eq(sb_prefill(ctx, s, tok, N, NULL, &err), 0);
	sb_state *snap = sb_state_clone(s, &err);
	ck_assert_ptr_nonnull(snap);
	const char *path = tu_write_file(tu_tmpdir(), "s.state", "", 0);
	ck_assert_int_eq(sb_state_save(s, path, &err), 0);
	float *first = malloc(M * V * sizeof(float)), *again = malloc(M * V * sizeof(float));
	for (size_t i = 0; i < M; i++)
		ck_assert_int_eq(sb_decode(ctx, s, tok[N + i], first + i * V, &err), 0);
	sb_state_copy(s, snap);
	for (size_t i = 0; i < M; i++)
		ck_assert_int_eq(sb_decode(ctx, s, tok[N + i], again + i * V, &err), 0);
	ck_assert_mem_eq(first, again, M * V * sizeof(float));
	sb_state_reset(s);
	ck_assert_uint_eq(sb_state_n_tokens(s), 0);
	ck_assert_int_eq(sb_state_load(s, path, &err), 0);
	ck_assert_uint_eq(sb_state_n_tokens(s), N);
	for (size_t i = 0; i < M; i++)
		ck_assert_int_eq(sb_decode(ctx, s, tok[N + i], again + i * V, &err), 0);
	ck_assert_mem_eq(first, again, M * V * sizeof(float));
	free(first);
	free(again);
	free(tok);
	sb_state_free(snap);
	sb_state_free(s);
	sb_ctx_free(ctx);
	sb_model_free(m);
}
END_TEST

/* sb_state_budget: how many sequences fit a limit, and a refusal naming
 * the config fields when one does not. */
START_TEST(engine_state_budget)
{
	sb_model *a = tu_load_fixture_model(cases[0]);
	sb_error err = {0};
	size_t one = sb_state_bytes(a), fit = 99;
	ck_assert_int_eq(sb_state_budget(a, 10 * one + one / 2, "--mem", 1, 64, &fit, &err), 0);
	ck_assert_uint_eq(fit, 10);
	ck_assert_int_eq(sb_state_budget(a, 10 * one, "--mem", 1, 3, &fit, &err), 0);
	ck_assert_uint_eq(fit, 3);
	ck_assert_int_eq(sb_state_budget(a, 10 * one, "--mem", 3, 64, &fit, &err), 0);
	ck_assert_uint_eq(fit, 3);
	ck_assert_int_eq(sb_state_budget(a, 2 * one - 1, "--mem", 2, 1, &fit, &err), SB_ERR_FORMAT);
	ck_assert_msg(strstr(err.msg, "--mem") && strstr(err.msg, "layers") &&
	              (strstr(err.msg, "window") || strstr(err.msg, "embed_dim")), "%s", err.msg);
	ck_assert_uint_gt(sb_mem_physical(), 0);
	sb_model_free(a);
}
END_TEST

/* Every counter of a state file must be one the model can reach (issue
 * 16: n_tokens >= 2^63 overflowed a position in the forward pass), and its
 * floats finite. Genuine states pass, full rings with a moved head too;
 * each refusal leaves the state as it was. */
START_TEST(engine_state_load_checks_every_counter)
{
	sb_model *a = tu_load_fixture_model(cases[0]);
	sb_error err = {0};
	sb_state *sa = sb_state_new(a, &err), *sc = sb_state_new(a, &err);
	sb_ctx *ctx = tu_ctx_new(a, 1, &err);
	int32_t tok[300];
	for (int i = 0; i < 300; i++)
		tok[i] = 4 + i % 60;
	ck_assert_int_eq(sb_prefill(ctx, sa, tok, 300, NULL, &err), 0);
	size_t n = sb_state_serialized_size(a);
	unsigned char *good = malloc(n), *buf = malloc(n);
	ck_assert_int_eq(sb_state_serialize(sa, good, n, &err), 0);
	ck_assert_int_eq(sb_state_deserialize(sc, good, n, "x.state", &err), 0);
	ck_assert_uint_eq(sb_state_n_tokens(sc), 300);
	/* The block's layout as lib/backend.h documents it: 8-aligned arrays
	 * n_act (L u64), ring_len, ring_head (L i32), ring_pos (L, W+1) i64,
	 * h (L, D, N), ring_k (L, W+1, Z), ring_v (L, W+1, H) floats. */
	const sb_config *cf = sb_model_config(a);
	const int W1 = cf->window + 1;
	const size_t L = (size_t)cf->layers;
#define A8(x) (((x) + 7) & ~(size_t)7)
	struct { size_t n_act, ring_len, ring_head, ring_pos, h, ring_k, ring_v; } lay;
	lay.n_act = 0;
	lay.ring_len = A8(L * 8);
	lay.ring_head = lay.ring_len + A8(L * 4);
	lay.ring_pos = lay.ring_head + A8(L * 4);
	lay.h = lay.ring_pos + A8(L * W1 * 8);
	lay.ring_k = lay.h + A8(L * cf->embed_dim * cf->n_dim * 4);
	lay.ring_v = lay.ring_k + A8(L * W1 * cf->z_dim * 4);
#undef A8
	ck_assert_uint_eq(lay.ring_v + ((L * W1 * cf->hidden_dim * 4 + 7) & ~(size_t)7) + 40, n);
	const size_t H0 = 40;   /* the header before the block */
	int32_t len0;
	memcpy(&len0, good + H0 + lay.ring_len, 4);
	ck_assert_int_eq(len0, W1);   /* 300 tokens fill layer 0's ring */
	struct { const char *what, *word; } cases_[] = {
		{"n_tokens 2^63", "tokens"},
		{"n_act above n_tokens", "activated"},
		{"ring length below the activations", "ring"},
		{"head moved in a ring not full", "ring"},
		{"positions out of order", "order"},
		{"NaN in the EMA state", "NaN"},
		{"infinity in a ring value", "infinity"},
	};
	for (int k = 0; k < 7; k++) {
		memcpy(buf, good, n);
		uint64_t u64;
		int32_t i32;
		int64_t p0, p1;
		float f;
		switch (k) {
		case 0: u64 = UINT64_C(1) << 63; memcpy(buf + 24, &u64, 8); break;
		case 1: u64 = 301; memcpy(buf + H0 + lay.n_act, &u64, 8); break;
		case 2: i32 = W1 - 1; memcpy(buf + H0 + lay.ring_len, &i32, 4);
		        i32 = 0; memcpy(buf + H0 + lay.ring_head, &i32, 4); break;
		case 3: u64 = 3; memcpy(buf + H0 + lay.n_act, &u64, 8);
		        i32 = 3; memcpy(buf + H0 + lay.ring_len, &i32, 4);
		        i32 = 1; memcpy(buf + H0 + lay.ring_head, &i32, 4); break;
		case 4: memcpy(&p0, buf + H0 + lay.ring_pos, 8);
		        memcpy(&p1, buf + H0 + lay.ring_pos + 8, 8);
		        memcpy(buf + H0 + lay.ring_pos, &p1, 8);
		        memcpy(buf + H0 + lay.ring_pos + 8, &p0, 8); break;
		case 5: f = NAN; memcpy(buf + H0 + lay.h + 4 * 7, &f, 4); break;
		case 6: f = -INFINITY; memcpy(buf + H0 + lay.ring_v + 4 * 3, &f, 4); break;
		}
		sb_state_reset(sc);
		ck_assert_int_eq(sb_prefill(ctx, sc, tok, 5, NULL, &err), 0);
		ck_assert_msg(sb_state_deserialize(sc, buf, n, "x.state", &err) == SB_ERR_FORMAT,
		              "%s was accepted", cases_[k].what);
		ck_assert_msg(strstr(err.msg, cases_[k].word) && strstr(err.msg, "x.state"),
		              "%s: %s", cases_[k].what, err.msg);
		ck_assert_uint_eq(sb_state_n_tokens(sc), 5);
	}
	free(good);
	free(buf);
	sb_ctx_free(ctx);
	sb_state_free(sa);
	sb_state_free(sc);
	sb_model_free(a);
}
END_TEST

/* A state file from another model, a truncated one, or one with ring
 * counters out of range is refused and leaves the state as it was. */
START_TEST(engine_state_load_rejects_bad_files)
{
	sb_model *a = tu_load_fixture_model(cases[0]), *b = tu_load_fixture_model(cases[1]);
	sb_error err = {0};
	sb_state *sa = sb_state_new(a, &err), *sb = sb_state_new(b, &err);
	sb_ctx *ctx = tu_ctx_new(a, 1, &err);
	int32_t tok[20];
	for (int i = 0; i < 20; i++)
		tok[i] = 4 + i;
	ck_assert_int_eq(sb_prefill(ctx, sa, tok, 20, NULL, &err), 0);
	size_t n = sb_state_serialized_size(a);
	unsigned char *buf = malloc(n);
	ck_assert_int_eq(sb_state_serialize(sa, buf, n, &err), 0);
	ck_assert_int_eq(sb_state_deserialize(sb, buf, n, "x.state", &err), SB_ERR_FORMAT);
	ck_assert_ptr_nonnull(strstr(err.msg, "different model"));
	ck_assert_int_eq(sb_state_deserialize(sa, buf, n - 1, "x.state", &err), SB_ERR_FORMAT);
	buf[0] ^= 1;
	ck_assert_int_eq(sb_state_deserialize(sa, buf, n, "x.state", &err), SB_ERR_FORMAT);
	ck_assert_ptr_nonnull(strstr(err.msg, "magic"));
	buf[0] ^= 1;
	/* Corrupt layer 0's ring length (the first int32 after the L
	 * activation counters, 8-byte aligned, after the 40-byte header). */
	size_t L = (size_t)sb_model_config(a)->layers;
	int32_t bad = 1 << 20;
	memcpy(buf + 40 + ((L * 8 + 7) & ~(size_t)7), &bad, 4);
	ck_assert_int_eq(sb_state_deserialize(sa, buf, n, "x.state", &err), SB_ERR_FORMAT);
	ck_assert_ptr_nonnull(strstr(err.msg, "ring"));
	ck_assert_uint_eq(sb_state_n_tokens(sa), 20);
	free(buf);
	sb_ctx_free(ctx);
	sb_state_free(sa);
	sb_state_free(sb);
	sb_model_free(a);
	sb_model_free(b);
}
END_TEST

/* Decoding several sequences in one batch gives each the numbers it gets
 * alone. */
START_TEST(engine_batch_matches_single)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	const sb_config *c = sb_model_config(m);
	const size_t V = (size_t)c->vocab_size, B = 3, steps = 30;
	sb_error err = {0};
	/* The batch runs on three threads (rows attend in parallel), the
	 * single sequences on one. */
	sb_ctx *ctx = tu_ctx_new(m, 1, &err), *bctx = tu_ctx_new(m, 3, &err);
	ck_assert_int_eq(sb_ctx_threads(bctx), 3);
	sb_state *bs[3], *ss[3];
	int32_t *tok = random_tokens(B * (steps + 20), c->vocab_size, 9);
	for (size_t b = 0; b < B; b++) {
		bs[b] = sb_state_new(m, &err);
		/* different history lengths */
		ck_assert_int_eq(sb_prefill(ctx, bs[b], tok + b * 20, 5 + 7 * b, NULL, &err), 0);
		ss[b] = sb_state_clone(bs[b], &err);
	}
	float *lb = malloc(B * V * sizeof(float)), *ls = malloc(V * sizeof(float));
	for (size_t i = 0; i < steps; i++) {
		int32_t step_tok[3];
		for (size_t b = 0; b < B; b++)
			step_tok[b] = tok[B * 20 + i * B + b];
		ck_assert_int_eq(sb_decode_batch(bctx, bs, step_tok, B, lb, &err), 0);
		for (size_t b = 0; b < B; b++) {
			ck_assert_int_eq(sb_decode(ctx, ss[b], step_tok[b], ls, &err), 0);
			for (size_t v = 0; v < V; v++)
				ck_assert_float_eq_tol(lb[b * V + v], ls[v], 1e-4);
		}
	}
	for (size_t b = 0; b < B; b++) {
		sb_state_free(bs[b]);
		sb_state_free(ss[b]);
	}
	free(lb);
	free(ls);
	free(tok);
	sb_ctx_free(ctx);
	sb_ctx_free(bctx);
	sb_model_free(m);
}
END_TEST

/* Threads change nothing but the order of float sums: a prefill and a
 * decode on three threads give the one-thread numbers within 1e-5. */
START_TEST(engine_threads_match_one_thread)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	const sb_config *c = sb_model_config(m);
	const size_t T = 600, V = (size_t)c->vocab_size;
	sb_error err = {0};
	sb_ctx *c1 = tu_ctx_new(m, 1, &err), *c3 = tu_ctx_new(m, 3, &err);
	sb_state *a = sb_state_new(m, &err), *b = sb_state_new(m, &err);
	int32_t *tok = random_tokens(T + 50, c->vocab_size, 13);
	float *la = malloc(T * V * sizeof(float)), *lb = malloc(T * V * sizeof(float));
	sb_outputs oa = {.logits = la}, ob = {.logits = lb};
	ck_assert_int_eq(sb_prefill(c1, a, tok, T, &oa, &err), 0);
	ck_assert_int_eq(sb_prefill(c3, b, tok, T, &ob, &err), 0);
	for (size_t i = 0; i < T * V; i++)
		ck_assert_float_eq_tol(la[i], lb[i], 1e-5);
	for (size_t i = 0; i < 50; i++) {
		ck_assert_int_eq(sb_decode(c1, a, tok[T + i], la, &err), 0);
		ck_assert_int_eq(sb_decode(c3, b, tok[T + i], lb, &err), 0);
		for (size_t v = 0; v < V; v++)
			ck_assert_float_eq_tol(la[v], lb[v], 1e-5);
	}
	free(la);
	free(lb);
	free(tok);
	sb_state_free(a);
	sb_state_free(b);
	sb_ctx_free(c1);
	sb_ctx_free(c3);
	sb_model_free(m);
}
END_TEST

/* act_bias moves the router: far positive fires nothing, far negative
 * fires everything. */
START_TEST(engine_act_bias_shifts_router)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	const sb_config *c = sb_model_config(m);
	sb_error err = {0};
	sb_ctx *ctx = tu_ctx_new(m, 1, &err);
	sb_state *s = sb_state_new(m, &err);
	int32_t *tok = random_tokens(64, c->vocab_size, 2);
	ck_assert_float_eq(sb_ctx_act_bias(ctx), 0.0f);
	sb_ctx_set_act_bias(ctx, 1000.0f);
	ck_assert_int_eq(sb_prefill(ctx, s, tok, 64, NULL, &err), 0);
	for (int l = 0; l < c->layers; l++)
		ck_assert_uint_eq(sb_state_n_activated(s, l), 0);
	sb_state_reset(s);
	sb_ctx_set_act_bias(ctx, -1000.0f);
	ck_assert_int_eq(sb_prefill(ctx, s, tok, 64, NULL, &err), 0);
	for (int l = 0; l < c->layers; l++)
		ck_assert_uint_eq(sb_state_n_activated(s, l), 64);
	/* Out-of-vocabulary ids are refused, the state untouched. */
	int32_t badtok = c->vocab_size;
	ck_assert_int_eq(sb_decode(ctx, s, badtok, NULL, &err), SB_ERR_ARG);
	ck_assert_uint_eq(sb_state_n_tokens(s), 64);
	free(tok);
	sb_state_free(s);
	sb_ctx_free(ctx);
	sb_model_free(m);
}
END_TEST

/* A batch that names a state twice reads its tokens in order: the same
 * numbers as decoding them one by one. */
START_TEST(engine_batch_repeated_state)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	const size_t V = (size_t)sb_model_config(m)->vocab_size;
	sb_error err = {0};
	sb_ctx *ctx = tu_ctx_new(m, 2, &err);
	ck_assert_msg(ctx != NULL, "%s", err.msg);
	sb_state *a = sb_ctx_state_new(ctx, &err), *b = sb_ctx_state_new(ctx, &err);
	sb_state *a1 = sb_ctx_state_new(ctx, &err), *b1 = sb_ctx_state_new(ctx, &err);
	int32_t *tok = random_tokens(40, sb_model_config(m)->vocab_size, 5);
	ck_assert_int_eq(sb_prefill(ctx, a, tok, 11, NULL, &err), 0);
	ck_assert_int_eq(sb_prefill(ctx, b, tok + 11, 4, NULL, &err), 0);
	ck_assert_int_eq(sb_state_copy(a1, a), 0);
	ck_assert_int_eq(sb_state_copy(b1, b), 0);
	sb_state *batch[4] = {a, b, a, a};
	int32_t bt[4] = {tok[20], tok[21], tok[22], tok[23]};
	float *lb = malloc(4 * V * sizeof(float)), *ls = malloc(V * sizeof(float));
	ck_assert_int_eq(sb_decode_batch(ctx, batch, bt, 4, lb, &err), 0);
	const int which[4] = {0, 1, 0, 0};
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(sb_decode(ctx, which[i] ? b1 : a1, bt[i], ls, &err), 0);
		for (size_t v = 0; v < V; v++)
			ck_assert_float_eq_tol(lb[(size_t)i * V + v], ls[v], 1e-4);
	}
	ck_assert_uint_eq(sb_state_n_tokens(a), 14);
	ck_assert_uint_eq(sb_state_n_tokens(b), 5);
	free(lb);
	free(ls);
	free(tok);
	sb_state_free(a);
	sb_state_free(b);
	sb_state_free(a1);
	sb_state_free(b1);
	sb_ctx_free(ctx);
	sb_model_free(m);
}
END_TEST

/* Context parameters: defaults, the device string, the batch capacity. */
START_TEST(engine_ctx_params)
{
	sb_model *m = tu_load_fixture_model(cases[0]);
	sb_error err = {0};
	sb_ctx_params p = sb_ctx_default_params();
	ck_assert_int_eq(p.n_threads, 0);
	ck_assert_uint_eq(p.max_batch, 512);
	ck_assert_ptr_null(p.device);
	p.n_threads = 2;
	p.act_bias = 0.5f;
	p.max_batch = 3;
	p.device = "cpu";
	sb_ctx *ctx = sb_ctx_new(m, &p, &err);
	ck_assert_msg(ctx != NULL, "%s", err.msg);
	ck_assert_int_eq(sb_ctx_threads(ctx), 2);
	ck_assert_float_eq(sb_ctx_act_bias(ctx), 0.5f);
	ck_assert_uint_eq(sb_ctx_max_batch(ctx), 3);
	ck_assert_str_eq(sb_ctx_device(ctx), "cpu");
	sb_state *st[4];
	for (int i = 0; i < 4; i++) {
		st[i] = sb_ctx_state_new(ctx, &err);
		ck_assert_str_eq(sb_state_device(st[i]), "cpu");
	}
	int32_t tk[4] = {1, 2, 3, 4};
	ck_assert_int_eq(sb_decode_batch(ctx, st, tk, 4, NULL, &err), SB_ERR_ARG);
	ck_assert_int_eq(sb_decode_batch(ctx, st, tk, 3, NULL, &err), 0);
	for (int i = 0; i < 4; i++) {
		ck_assert_uint_eq(sb_state_n_tokens(st[i]), i < 3 ? 1 : 0);
		sb_state_free(st[i]);
	}
	sb_ctx_free(ctx);
	const char *bad[] = {"cpu:1", "cuda:x", "cpu:", "nosuch", "cuda"};
	const int code[] = {SB_ERR_ARG, SB_ERR_ARG, SB_ERR_ARG, SB_ERR_UNSUPPORTED, 0};
	for (int i = 0; i < 5; i++) {
		p = sb_ctx_default_params();
		p.device = bad[i];
		err.code = 0;
		ctx = sb_ctx_new(m, &p, &err);
		if (!code[i] && ctx) { /* a build with a CUDA backend */
			sb_ctx_free(ctx);
			continue;
		}
		ck_assert_msg(ctx == NULL, "device %s accepted", bad[i]);
		if (code[i])
			ck_assert_int_eq(err.code, code[i]);
		ck_assert_msg(strstr(err.msg, bad[i]) != NULL, "%s: %s", bad[i], err.msg);
	}
	p = sb_ctx_default_params();
	p.max_batch = 0;
	ck_assert_ptr_null(sb_ctx_new(m, &p, &err));
	ck_assert_int_eq(err.code, SB_ERR_ARG);
	ctx = sb_ctx_new(m, NULL, &err);
	ck_assert_ptr_nonnull(ctx);
	sb_ctx_free(ctx);
	/* The state's size breakdown adds up. */
	sb_state_sizes z = sb_state_sizes_of(m);
	const sb_config *c = sb_model_config(m);
	ck_assert_uint_eq(z.total, sb_state_bytes(m));
	ck_assert_uint_eq(z.total, z.ema + z.ring + z.counters);
	ck_assert_uint_eq(z.ema, (size_t)c->layers * c->embed_dim * c->n_dim * sizeof(float));
	ck_assert_uint_eq(z.ring, (size_t)c->layers * (c->window + 1) *
	                          ((c->z_dim + c->hidden_dim) * sizeof(float) + sizeof(int64_t)));
	sb_model_free(m);
}
END_TEST

/* Reset and copy leave exactly the bytes of a fresh state or of the
 * source, whatever the destination held before (the CPU backend touches
 * only the used part of each ring). */
START_TEST(engine_state_reset_and_copy_are_exact)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	const sb_config *c = sb_model_config(m);
	sb_error err = {0};
	sb_ctx *ctx = tu_ctx_new(m, 1, &err);
	const size_t n = sb_state_serialized_size(m), T = (size_t)c->window * 3 + 40;
	unsigned char *a = malloc(n), *b = malloc(n);
	sb_state *longs = sb_ctx_state_new(ctx, &err), *shorts = sb_ctx_state_new(ctx, &err);
	sb_state *fresh = sb_ctx_state_new(ctx, &err);
	int32_t *tok = random_tokens(T, c->vocab_size, 21);
	sb_ctx_set_act_bias(ctx, -1000.0f); /* every token activated: rings wrap */
	ck_assert_int_eq(sb_prefill(ctx, longs, tok, T, NULL, &err), 0);
	sb_ctx_set_act_bias(ctx, 0.0f);
	ck_assert_int_eq(sb_prefill(ctx, shorts, tok, 7, NULL, &err), 0);
	/* long -> short copy */
	sb_state *dst = sb_state_clone(longs, &err);
	ck_assert_int_eq(sb_state_copy(dst, shorts), 0);
	ck_assert_int_eq(sb_state_serialize(dst, a, n, &err), 0);
	ck_assert_int_eq(sb_state_serialize(shorts, b, n, &err), 0);
	ck_assert(memcmp(a, b, n) == 0);
	/* reset after a long sequence */
	sb_state_reset(longs);
	ck_assert_int_eq(sb_state_serialize(longs, a, n, &err), 0);
	ck_assert_int_eq(sb_state_serialize(fresh, b, n, &err), 0);
	ck_assert(memcmp(a, b, n) == 0);
	/* a loaded state (bytes from outside), then reset */
	ck_assert_int_eq(sb_state_serialize(dst, a, n, &err), 0);
	ck_assert_int_eq(sb_state_deserialize(longs, a, n, "mem", &err), 0);
	sb_state_reset(longs);
	ck_assert_int_eq(sb_state_serialize(longs, a, n, &err), 0);
	ck_assert(memcmp(a, b, n) == 0);
	free(a);
	free(b);
	free(tok);
	sb_state_free(longs);
	sb_state_free(shorts);
	sb_state_free(fresh);
	sb_state_free(dst);
	sb_ctx_free(ctx);
	sb_model_free(m);
}
END_TEST

/* Several prompts in one call: each gets its sb_prefill numbers (within
 * rounding), bit for bit what it gets alone in the same call, and its
 * state continues as after sb_prefill. Lengths cross the 512-row blocks. */
START_TEST(engine_prefill_batch_matches_single)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	const sb_config *c = sb_model_config(m);
	const size_t V = (size_t)c->vocab_size, B = 4;
	const size_t n[4] = {7, 1, 600, 300};
	sb_error err = {0};
	sb_ctx *ctx = tu_ctx_new(m, 2, &err);
	int32_t *tok = random_tokens(1000, c->vocab_size, 31);
	const int32_t *tp[4] = {tok, tok + 10, tok + 20, tok + 650};
	sb_state *bs[4], *ss[4], *one = sb_ctx_state_new(ctx, &err);
	float *lb = malloc(B * V * sizeof(float)), *ls = malloc(V * sizeof(float)),
	      *l1 = malloc(V * sizeof(float)), *d1 = malloc(V * sizeof(float)),
	      *d2 = malloc(V * sizeof(float));
	for (size_t b = 0; b < B; b++) {
		bs[b] = sb_ctx_state_new(ctx, &err);
		ss[b] = sb_ctx_state_new(ctx, &err);
		/* the second sequence starts from a history */
		if (b == 1) {
			ck_assert_int_eq(sb_prefill(ctx, bs[b], tok + 900, 50, NULL, &err), 0);
			ck_assert_int_eq(sb_state_copy(ss[b], bs[b]), 0);
		}
	}
	ck_assert_int_eq(sb_prefill_batch(ctx, bs, tp, n, B, lb, &err), 0);
	for (size_t b = 0; b < B; b++) {
		sb_outputs o = {.last_logits = ls};
		ck_assert_int_eq(sb_prefill(ctx, ss[b], tp[b], n[b], &o, &err), 0);
		for (size_t v = 0; v < V; v++)
			ck_assert_float_eq_tol(lb[b * V + v], ls[v], 1e-4);
		ck_assert_uint_eq(sb_state_n_tokens(bs[b]), sb_state_n_tokens(ss[b]));
		for (int l = 0; l < c->layers; l++)
			ck_assert_uint_eq(sb_state_n_activated(bs[b], l), sb_state_n_activated(ss[b], l));
		/* alone in the call: the same bits */
		sb_state_reset(one);
		if (b == 1)
			ck_assert_int_eq(sb_prefill(ctx, one, tok + 900, 50, NULL, &err), 0);
		ck_assert_int_eq(sb_prefill_batch(ctx, &one, &tp[b], &n[b], 1, l1, &err), 0);
		ck_assert(memcmp(l1, lb + b * V, V * sizeof(float)) == 0);
		/* and the states go on alike */
		ck_assert_int_eq(sb_decode(ctx, bs[b], tok[999], d1, &err), 0);
		ck_assert_int_eq(sb_decode(ctx, ss[b], tok[999], d2, &err), 0);
		for (size_t v = 0; v < V; v++)
			ck_assert_float_eq_tol(d1[v], d2[v], 1e-4);
	}
	/* refused: a state twice, an empty prompt; nothing read */
	sb_state *twice[2] = {bs[0], bs[0]};
	uint64_t before = sb_state_n_tokens(bs[0]);
	ck_assert_int_eq(sb_prefill_batch(ctx, twice, tp, n, 2, NULL, &err), SB_ERR_ARG);
	const size_t zero[2] = {3, 0};
	ck_assert_int_eq(sb_prefill_batch(ctx, bs, tp, zero, 2, NULL, &err), SB_ERR_ARG);
	ck_assert_uint_eq(sb_state_n_tokens(bs[0]), before);
	for (size_t b = 0; b < B; b++) {
		sb_state_free(bs[b]);
		sb_state_free(ss[b]);
	}
	sb_state_free(one);
	free(lb);
	free(ls);
	free(l1);
	free(d1);
	free(d2);
	free(tok);
	sb_ctx_free(ctx);
	sb_model_free(m);
}
END_TEST

/* A decode batch gives bit for bit the numbers of one decode at a time
 * (short rings: a ring of 128 entries or more is split over threads when
 * one row attends alone). */
START_TEST(engine_batch_is_bit_identical)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	const sb_config *c = sb_model_config(m);
	const size_t V = (size_t)c->vocab_size, B = 5;
	sb_error err = {0};
	sb_ctx *ctx = tu_ctx_new(m, 2, &err);
	int32_t *tok = random_tokens(200, c->vocab_size, 41);
	sb_state *bs[5], *ss[5];
	for (size_t b = 0; b < B; b++) {
		bs[b] = sb_ctx_state_new(ctx, &err);
		ck_assert_int_eq(sb_prefill(ctx, bs[b], tok + 10 * b, 3 + b, NULL, &err), 0);
		ss[b] = sb_state_clone(bs[b], &err);
	}
	float *lb = malloc(B * V * sizeof(float)), *ls = malloc(V * sizeof(float));
	for (size_t i = 0; i < 20; i++) {
		ck_assert_int_eq(sb_decode_batch(ctx, bs, tok + 100 + i * B, B, lb, &err), 0);
		for (size_t b = 0; b < B; b++) {
			ck_assert_int_eq(sb_decode(ctx, ss[b], tok[100 + i * B + b], ls, &err), 0);
			ck_assert_msg(memcmp(ls, lb + b * V, V * sizeof(float)) == 0,
			              "step %zu sequence %zu differs", i, b);
		}
	}
	for (size_t b = 0; b < B; b++) {
		sb_state_free(bs[b]);
		sb_state_free(ss[b]);
	}
	free(lb);
	free(ls);
	free(tok);
	sb_ctx_free(ctx);
	sb_model_free(m);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("engine");
	TCase *tc = tcase_create("engine");
	tcase_set_timeout(tc, 300);
	tcase_add_loop_test(tc, engine_parity_decode, 0, N_CASES);
	tcase_add_loop_test(tc, engine_parity_prefill, 0, N_CASES);
	tcase_add_loop_test(tc, engine_parity_split, 0, N_CASES);
	tcase_add_loop_test(tc, engine_prefill_long_matches_decode, 0, N_CASES);
	tcase_add_loop_test(tc, engine_state_size_is_constant, 0, N_CASES);
	tcase_add_loop_test(tc, engine_decode_allocates_nothing, 0, N_CASES);
	tcase_add_loop_test(tc, engine_snapshot_restore_is_identical, 0, N_CASES);
	tcase_add_test(tc, engine_state_load_rejects_bad_files);
	tcase_add_test(tc, engine_state_load_checks_every_counter);
	tcase_add_test(tc, engine_state_budget);
	tcase_add_loop_test(tc, engine_batch_matches_single, 0, N_CASES);
	tcase_add_loop_test(tc, engine_batch_repeated_state, 0, N_CASES);
	tcase_add_test(tc, engine_ctx_params);
	tcase_add_loop_test(tc, engine_prefill_batch_matches_single, 0, N_CASES);
	tcase_add_loop_test(tc, engine_batch_is_bit_identical, 0, N_CASES);
	tcase_add_loop_test(tc, engine_state_reset_and_copy_are_exact, 0, N_CASES);
	tcase_add_loop_test(tc, engine_act_bias_shifts_router, 0, N_CASES);
	tcase_add_loop_test(tc, engine_threads_match_one_thread, 0, N_CASES);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
