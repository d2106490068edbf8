/*
 * test-cuda.c - the CUDA backend against the official fixtures and the CPU
 * engine: logits within 1e-3 of the largest logit of their row, every
 * router decision equal (the fixtures' margins are all >= 2e-3), in
 * decode, prefill, split and batch modes; F16 weights (split tensor-core
 * products) against the CPU; graphs against plain launches; the fused
 * decode step against the per-op kernels; states moving between host and
 * device. Built only with the CUDA backend;
 * exits 77 (skipped) where no GPU can be used.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

static const char *cases[] = {"rotary-softmax", "simple-relu2-ffn"};
#define N_CASES 2
#define REL_TOL 1e-3

static sb_ctx *ctx_on(const sb_model *m, const char *device, size_t max_batch)
{
	sb_ctx_params p = sb_ctx_default_params();
	p.device = device;
	p.n_threads = 2;
	if (max_batch)
		p.max_batch = max_batch;
	sb_error err = {0};
	sb_ctx *c = sb_ctx_new(m, &p, &err);
	ck_assert_msg(c != NULL, "context on %s: %s", device, err.msg);
	return c;
}

static sb_state *state_on(sb_ctx *c)
{
	sb_error err = {0};
	sb_state *s = sb_ctx_state_new(c, &err);
	ck_assert_msg(s != NULL, "state on %s: %s", sb_ctx_device(c), err.msg);
	return s;
}

/* Worst |got - want| over rows of V, each relative to the largest |want|
 * of its row. */
static double rel_diff(const float *got, const float *want, size_t rows, size_t V)
{
	double worst = 0;
	for (size_t r = 0; r < rows; r++) {
		double big = 1e-30, d = 0;
		for (size_t v = 0; v < V; v++) {
			big = fmax(big, fabs((double)want[r * V + v]));
			d = fmax(d, fabs((double)got[r * V + v] - want[r * V + v]));
		}
		worst = fmax(worst, d / big);
	}
	return worst;
}

typedef struct expected {
	sb_st_file *f;
	const int32_t *tokens;  // (T)
	const float *logits;    // (T, V)
	const uint8_t *act;     // (L, T)
	const float *margin;    // (L, T)
	size_t T, V, L;
} expected;

static void load_expected(const char *name, expected *e)
{
	char rel[256];
	snprintf(rel, sizeof rel, "%s/expected.safetensors", name);
	sb_error err = {0};
	e->f = sb_st_open(tu_fixture(rel), &err);
	ck_assert_msg(e->f != NULL, "%s", err.msg);
	const sb_tensor *tok = sb_st_find(e->f, "tokens"), *lg = sb_st_find(e->f, "logits"),
	                *ac = sb_st_find(e->f, "act"), *mg = sb_st_find(e->f, "router_margin");
	ck_assert(tok && lg && ac && mg);
	e->tokens = tok->data;
	e->logits = lg->data;
	e->act = ac->data;
	e->margin = mg->data;
	e->T = tok->shape[0];
	e->V = lg->shape[1];
	e->L = ac->shape[0];
}

typedef enum { MODE_DECODE, MODE_PREFILL, MODE_SPLIT } run_mode;

/* The fixture's tokens through a context in one mode: logits (T, V), act (L, T). */
static void run_mode_on(sb_ctx *ctx, const expected *e, run_mode mode, float *logits,
                        uint8_t *act)
{
	sb_error err = {0};
	sb_state *s = state_on(ctx);
	sb_outputs out = {.logits = logits, .act = act, .stride = e->T};
	size_t split = mode == MODE_DECODE ? 0 : mode == MODE_PREFILL ? e->T : e->T / 3;
	if (split)
		ck_assert_msg(sb_prefill(ctx, s, e->tokens, split, &out, &err) == 0, "%s", err.msg);
	for (size_t t = split; t < e->T; t++) {
		out.offset = t;
		ck_assert_msg(sb_prefill(ctx, s, e->tokens + t, 1, &out, &err) == 0, "%s", err.msg);
	}
	ck_assert_uint_eq(sb_state_n_tokens(s), e->T);
	sb_state_free(s);
}

static void check_parity(const char *name, run_mode mode)
{
	expected e;
	load_expected(name, &e);
	sb_model *m = tu_load_fixture_model(name);
	sb_ctx *gpu = ctx_on(m, "cuda", 0), *cpu = ctx_on(m, "cpu", 0);
	float *lg = calloc(e.T * e.V, sizeof(float)), *lc = calloc(e.T * e.V, sizeof(float));
	uint8_t *ag = calloc(e.L * e.T, 1), *ac = calloc(e.L * e.T, 1);
	run_mode_on(gpu, &e, mode, lg, ag);
	run_mode_on(cpu, &e, mode, lc, ac);
	double d_off = rel_diff(lg, e.logits, e.T, e.V), d_cpu = rel_diff(lg, lc, e.T, e.V);
	fprintf(stderr, "%s mode %d: logits vs official %.3g, vs cpu %.3g (relative to the row's largest)\n",
	        name, mode, d_off, d_cpu);
	ck_assert_msg(d_off <= REL_TOL, "%s mode %d: logits differ from the fixture by %g", name, mode,
	              d_off);
	ck_assert_msg(d_cpu <= REL_TOL, "%s mode %d: logits differ from the cpu by %g", name, mode,
	              d_cpu);
	size_t fired = 0;
	for (size_t i = 0; i < e.L * e.T; i++) {
		if (e.margin[i] > 1e-4)
			ck_assert_msg(ag[i] == e.act[i],
			              "%s mode %d: act[layer %zu][t %zu] = %d, expected %d", name, mode,
			              i / e.T, i % e.T, ag[i], e.act[i]);
		ck_assert_msg(ag[i] == ac[i], "%s mode %d: act[%zu] differs from the cpu", name, mode, i);
		fired += ag[i];
	}
	ck_assert(fired > 0 && fired < e.L * e.T);
	free(lg);
	free(lc);
	free(ag);
	free(ac);
	sb_ctx_free(gpu);
	sb_ctx_free(cpu);
	sb_model_free(m);
	sb_st_close(e.f);
}

START_TEST(cuda_parity_decode) { check_parity(cases[_i], MODE_DECODE); }
END_TEST
START_TEST(cuda_parity_prefill) { check_parity(cases[_i], MODE_PREFILL); }
END_TEST
START_TEST(cuda_parity_split) { check_parity(cases[_i], MODE_SPLIT); }
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

/* Long inputs (several 512-row blocks, the ring wrapping many times):
 * prefill on the GPU equals decode on the GPU and prefill on the CPU. */
static void check_long(const sb_model *m, const char *label)
{
	const sb_config *c = sb_model_config(m);
	const size_t T = 1300, V = (size_t)c->vocab_size, L = (size_t)c->layers;
	int32_t *tok = random_tokens(T, c->vocab_size, 11);
	sb_ctx *gpu = ctx_on(m, "cuda", 0), *cpu = ctx_on(m, "cpu", 0);
	float *lp = calloc(T * V, sizeof(float)), *ld = calloc(T * V, sizeof(float)),
	      *lc = calloc(T * V, sizeof(float));
	uint8_t *ap = calloc(L * T, 1), *ad = calloc(L * T, 1), *acp = calloc(L * T, 1);
	sb_error err = {0};
	sb_state *a = state_on(gpu), *b = state_on(gpu), *h = state_on(cpu);
	sb_outputs op = {.logits = lp, .act = ap, .stride = T};
	ck_assert_msg(sb_prefill(gpu, a, tok, T, &op, &err) == 0, "%s", err.msg);
	sb_outputs oc = {.logits = lc, .act = acp, .stride = T};
	ck_assert_msg(sb_prefill(cpu, h, tok, T, &oc, &err) == 0, "%s", err.msg);
	for (size_t t = 0; t < T; t++) {
		sb_outputs od = {.logits = ld, .act = ad, .stride = T, .offset = t};
		ck_assert_msg(sb_prefill(gpu, b, tok + t, 1, &od, &err) == 0, "%s", err.msg);
	}
	double dpd = rel_diff(lp, ld, T, V), dpc = rel_diff(lp, lc, T, V);
	fprintf(stderr, "%s T=%zu: gpu prefill vs gpu decode %.3g, vs cpu prefill %.3g\n", label, T,
	        dpd, dpc);
	ck_assert_msg(dpd <= REL_TOL, "prefill vs decode: %g", dpd);
	ck_assert_msg(dpc <= REL_TOL, "gpu vs cpu: %g", dpc);
	ck_assert(memcmp(ap, ad, L * T) == 0);
	ck_assert(memcmp(ap, acp, L * T) == 0);
	for (size_t l = 0; l < L; l++) {
		ck_assert_uint_eq(sb_state_n_activated(a, (int)l), sb_state_n_activated(h, (int)l));
		ck_assert_uint_eq(sb_state_n_activated(b, (int)l), sb_state_n_activated(h, (int)l));
	}
	sb_state_free(a);
	sb_state_free(b);
	sb_state_free(h);
	free(lp);
	free(ld);
	free(lc);
	free(ap);
	free(ad);
	free(acp);
	free(tok);
	sb_ctx_free(gpu);
	sb_ctx_free(cpu);
}

START_TEST(cuda_long_prefill_matches_decode_and_cpu)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	check_long(m, cases[_i]);
	sb_model_free(m);
}
END_TEST

/* A batch of B states with different histories: one sb_decode_batch on
 * the GPU equals each state decoded alone on the CPU; for B = 3 (the
 * matrix-vector path), 20 (cuBLAS) and with a state named twice. */
static void check_batch_on(const sb_model *m, const char *name, size_t B, bool twice)
{
	const sb_config *c = sb_model_config(m);
	const size_t V = (size_t)c->vocab_size;
	sb_ctx *gpu = ctx_on(m, "cuda", 64), *cpu = ctx_on(m, "cpu", 64);
	sb_error err = {0};
	sb_state **gs = calloc(B, sizeof *gs), **cs = calloc(B, sizeof *cs);
	int32_t *next = calloc(B, sizeof *next);
	for (size_t b = 0; b < B; b++) {
		gs[b] = state_on(gpu);
		cs[b] = state_on(cpu);
		const size_t n = 3 + 7 * b;
		int32_t *tok = random_tokens(n, c->vocab_size, (unsigned)(100 + b));
		ck_assert_int_eq(sb_prefill(gpu, gs[b], tok, n, NULL, &err), 0);
		ck_assert_int_eq(sb_prefill(cpu, cs[b], tok, n, NULL, &err), 0);
		next[b] = tok[0];
		free(tok);
	}
	if (twice) {
		/* rows 0 and B-1 read the same state: in order, as two decodes */
		sb_state_free(gs[B - 1]);
		sb_state_free(cs[B - 1]);
		gs[B - 1] = gs[0];
		cs[B - 1] = cs[0];
	}
	float *lg = calloc(B * V, sizeof(float)), *lc = calloc(B * V, sizeof(float));
	for (int step = 0; step < 5; step++) {
		ck_assert_msg(sb_decode_batch(gpu, gs, next, B, lg, &err) == 0, "%s", err.msg);
		for (size_t b = 0; b < B; b++)
			ck_assert_int_eq(sb_decode(cpu, cs[b], next[b], lc + b * V, &err), 0);
		double d = rel_diff(lg, lc, B, V);
		ck_assert_msg(d <= REL_TOL, "%s B=%zu step %d: batch differs from single cpu by %g",
		              name, B, step, d);
		for (size_t b = 0; b < B; b++)
			next[b] = (int32_t)((next[b] + 5 + (int32_t)b) % c->vocab_size);
	}
	for (size_t b = 0; b < B; b++)
		ck_assert_uint_eq(sb_state_n_tokens(gs[b]), sb_state_n_tokens(cs[b]));
	for (size_t b = 0; b < (twice ? B - 1 : B); b++) {
		sb_state_free(gs[b]);
		sb_state_free(cs[b]);
	}
	free(gs);
	free(cs);
	free(next);
	free(lg);
	free(lc);
	sb_ctx_free(gpu);
	sb_ctx_free(cpu);
}

static void check_batch(const char *name, size_t B, bool twice)
{
	sb_model *m = tu_load_fixture_model(name);
	check_batch_on(m, name, B, twice);
	sb_model_free(m);
}

/* The fixture model `name` rewritten with other weights (quant) into the
 * test directory's folder `tag`, loaded. */
static sb_model *fixture_as(const char *name, sb_quant_type quant, const char *tag)
{
	sb_model *m = tu_load_fixture_model(name);
	char dir[4200];
	snprintf(dir, sizeof dir, "%s/%s", tu_tmpdir(), tag);
	sb_error err = {0};
	ck_assert_msg(sb_model_quantize(m, dir, quant, &err) == 0, "%s", err.msg);
	sb_model *h = sb_model_load(dir, &err);
	ck_assert_msg(h != NULL, "%s", err.msg);
	sb_model_free(m);
	return h;
}

/* The fixture model rewritten with other weights (quant), checked as
 * F32 is: long prefills (blocks of 512 rows, the ring wrapping) and a
 * batch of 20 decode rows, against the CPU on the same weights. */
static void check_weights(const char *name, sb_quant_type quant, sb_dtype dt, const char *tag)
{
	sb_model *h = fixture_as(name, quant, tag);
	ck_assert_int_eq(sb_model_weight_dtype(h), dt);
	char label[64];
	snprintf(label, sizeof label, "%s %s", name, tag);
	check_long(h, label);
	check_batch_on(h, label, 20, false);
	sb_model_free(h);
}

/* F16 weights take the split tensor-core products (lib/cuda/gemm.cuh)
 * where F32 ones take SGEMM. */
START_TEST(cuda_f16_products_match_cpu)
{
	check_weights(cases[_i], SB_QUANT_F16, SB_DTYPE_F16, "f16");
}
END_TEST

/* BF16 and q8 weights are widened to float32 copies on the GPU when the
 * context is made (SGEMM products), and read as they are by the decode
 * kernels: each context below uploads them anew. */
START_TEST(cuda_bf16_and_q8_match_cpu)
{
	if (_i % 2 == 0)
		check_weights(cases[_i / 2], SB_QUANT_BF16, SB_DTYPE_BF16, "bf16");
	else
		check_weights(cases[_i / 2], SB_QUANT_Q8, SB_DTYPE_I8, "q8");
}
END_TEST

START_TEST(cuda_batch_small_matches_cpu) { check_batch(cases[_i], 3, false); }
END_TEST
START_TEST(cuda_batch_large_matches_cpu) { check_batch(cases[_i], 20, false); }
END_TEST
START_TEST(cuda_batch_same_state_twice) { check_batch(cases[_i], 5, true); }
END_TEST

/* A context made with the environment variable var set to value (NULL:
 * unset), the variable put back as it was. */
static sb_ctx *ctx_with(sb_model *m, int rows, const char *var, const char *value)
{
	const char *was = getenv(var);
	char *keep = was ? strdup(was) : NULL;
	if (value)
		setenv(var, value, 1);
	else
		unsetenv(var);
	sb_ctx *c = ctx_on(m, "cuda", rows);
	if (keep)
		setenv(var, keep, 1);
	else
		unsetenv(var);
	free(keep);
	return c;
}

/* A context made with SEQBOAT_CUDA_FUSED set to fused (NULL: unset). */
static sb_ctx *ctx_fused(sb_model *m, int rows, const char *fused)
{
	return ctx_with(m, rows, "SEQBOAT_CUDA_FUSED", fused);
}

/* One-row decode steps of the fixture rewritten in F32, F16, BF16 and q8,
 * on the fused kernel compiled for the model's kind and dtype where there
 * is one (rotary-softmax has SeqBoat's defaults: lib/cuda/step.cu's
 * kind_seqboat) and on the generic one (SEQBOAT_CUDA_KIND=any): the same
 * logits but for rounding and the same decisions, and the CPU's logits
 * and decisions on the same weights, while the ring wraps. */
START_TEST(cuda_fused_kinds_match)
{
	const sb_quant_type q = (sb_quant_type)(_i % 4);
	const char *name = cases[_i / 4], *tag = sb_quant_type_name(q);
	char sub[64];
	snprintf(sub, sizeof sub, "kind-%s", tag);
	sb_model *m = fixture_as(name, q, sub);
	sb_error err = {0};
	const sb_config *c = sb_model_config(m);
	const size_t V = (size_t)c->vocab_size, T = 3 * (size_t)c->window + 20;
	sb_ctx *k = ctx_with(m, 0, "SEQBOAT_CUDA_KIND", NULL);
	sb_ctx *g = ctx_with(m, 0, "SEQBOAT_CUDA_KIND", "any");
	sb_ctx *cpu = ctx_on(m, "cpu", 0);
	sb_state *sk = state_on(k), *sg = state_on(g), *sc = state_on(cpu);
	float *a = calloc(V, sizeof(float)), *e = calloc(V, sizeof(float)),
	      *h = calloc(V, sizeof(float));
	int32_t *tok = random_tokens(T, c->vocab_size, 91);
	double worst_kind = 0, worst_cpu = 0;
	for (size_t t = 0; t < T; t++) {
		ck_assert_msg(sb_decode(k, sk, tok[t], a, &err) == 0, "%s", err.msg);
		ck_assert_msg(sb_decode(g, sg, tok[t], e, &err) == 0, "%s", err.msg);
		ck_assert_msg(sb_decode(cpu, sc, tok[t], h, &err) == 0, "%s", err.msg);
		worst_kind = fmax(worst_kind, rel_diff(a, e, 1, V));
		worst_cpu = fmax(worst_cpu, rel_diff(a, h, 1, V));
		for (int l = 0; l < c->layers; l++) {
			ck_assert_msg(sb_state_n_activated(sk, l) == sb_state_n_activated(sg, l),
			              "%s %s token %zu layer %d: the kinds' decisions differ", name, tag, t,
			              l);
			ck_assert_msg(sb_state_n_activated(sk, l) == sb_state_n_activated(sc, l),
			              "%s %s token %zu layer %d: decisions differ from the cpu's", name,
			              tag, t, l);
		}
	}
	fprintf(stderr, "%s %s: fused kinds differ by %.3g, from the cpu by %.3g\n", name, tag,
	        worst_kind, worst_cpu);
	ck_assert_msg(worst_kind <= 1e-5, "%s %s: kind vs generic kernel: %g", name, tag, worst_kind);
	ck_assert_msg(worst_cpu <= REL_TOL, "%s %s: gpu vs cpu: %g", name, tag, worst_cpu);
	sb_state_free(sk);
	sb_state_free(sg);
	sb_state_free(sc);
	free(a);
	free(e);
	free(h);
	free(tok);
	sb_ctx_free(k);
	sb_ctx_free(g);
	sb_ctx_free(cpu);
	sb_model_free(m);
}
END_TEST

/* Decode steps replayed from a CUDA graph compute what plain launches do. */
START_TEST(cuda_graphs_match_plain_launches)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	const sb_config *c = sb_model_config(m);
	const size_t V = (size_t)c->vocab_size, T = 60;
	int32_t *tok = random_tokens(T, c->vocab_size, 5);
	/* both on the per-op kernels */
	sb_ctx *g = ctx_fused(m, 0, "0");
	setenv("SEQBOAT_CUDA_GRAPHS", "0", 1);
	sb_ctx *p = ctx_fused(m, 0, "0");
	unsetenv("SEQBOAT_CUDA_GRAPHS");
	sb_state *sg = state_on(g), *sp = state_on(p);
	float *a = calloc(V, sizeof(float)), *b = calloc(V, sizeof(float));
	sb_error err = {0};
	double worst = 0;
	for (size_t t = 0; t < T; t++) {
		ck_assert_int_eq(sb_decode(g, sg, tok[t], a, &err), 0);
		ck_assert_int_eq(sb_decode(p, sp, tok[t], b, &err), 0);
		worst = fmax(worst, rel_diff(a, b, 1, V));
	}
	ck_assert_msg(worst <= 1e-6, "graph vs plain: %g", worst);
	free(a);
	free(b);
	free(tok);
	sb_state_free(sg);
	sb_state_free(sp);
	sb_ctx_free(g);
	sb_ctx_free(p);
	sb_model_free(m);
}
END_TEST

/* The fused decode step (one cooperative kernel, lib/cuda/step.cu)
 * computes what the per-op kernels do, for batches of 1, 2 and 5 rows,
 * over enough tokens to wrap the ring: logits within 1e-5 of the largest
 * and, after every step, the same activation counts in every layer of
 * every state (so every router decision equal). */
START_TEST(cuda_fused_step_matches_per_op)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	const sb_config *c = sb_model_config(m);
	const size_t V = (size_t)c->vocab_size, B = 5, T = 3 * (size_t)c->window + 20;
	sb_ctx *f = ctx_fused(m, 8, "1");
	sb_ctx *p = ctx_fused(m, 8, "0");
	sb_state *sf[5], *sp[5];
	for (size_t b = 0; b < B; b++) {
		sf[b] = state_on(f);
		sp[b] = state_on(p);
	}
	float *a = calloc(B * V, sizeof(float)), *e = calloc(B * V, sizeof(float));
	int32_t *tok = random_tokens(T * B, c->vocab_size, 77);
	sb_error err = {0};
	double worst = 0;
	for (size_t t = 0; t < T; t++) {
		/* 1, 2 or 5 rows a step: three of the kernel's row counts */
		const size_t n = t % 3 == 0 ? 1 : t % 3 == 1 ? 2 : B;
		ck_assert_msg(sb_decode_batch(f, sf, tok + t * B, n, a, &err) == 0, "%s", err.msg);
		ck_assert_msg(sb_decode_batch(p, sp, tok + t * B, n, e, &err) == 0, "%s", err.msg);
		worst = fmax(worst, rel_diff(a, e, n, V));
		for (size_t b = 0; b < n; b++)
			for (int l = 0; l < c->layers; l++)
				ck_assert_msg(sb_state_n_activated(sf[b], l) == sb_state_n_activated(sp[b], l),
				              "%s token %zu row %zu layer %d: router decisions differ",
				              cases[_i], t, b, l);
	}
	ck_assert_msg(worst <= 1e-5, "%s: fused vs per-op: %g", cases[_i], worst);
	for (size_t b = 0; b < B; b++) {
		sb_state_free(sf[b]);
		sb_state_free(sp[b]);
	}
	free(a);
	free(e);
	free(tok);
	sb_ctx_free(f);
	sb_ctx_free(p);
	sb_model_free(m);
}
END_TEST

/* A state moves host -> device and back (sb_state_copy), and saves and
 * loads from a device: each continuation computes what staying put does. */
START_TEST(cuda_state_moves_between_host_and_device)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	const sb_config *c = sb_model_config(m);
	const size_t V = (size_t)c->vocab_size, T = 40;
	int32_t *tok = random_tokens(T + 10, c->vocab_size, 9);
	sb_ctx *gpu = ctx_on(m, "cuda", 0), *cpu = ctx_on(m, "cpu", 0);
	sb_error err = {0};
	sb_state *h = state_on(cpu), *d = state_on(gpu), *d2 = state_on(gpu), *h2 = state_on(cpu);
	ck_assert_str_eq(sb_state_device(d), "cuda:0");
	ck_assert_int_eq(sb_prefill(cpu, h, tok, T, NULL, &err), 0);
	/* host -> device, continue on the GPU; the host copy continues on the CPU */
	ck_assert_int_eq(sb_state_copy(d, h), 0);
	ck_assert_uint_eq(sb_state_n_tokens(d), T);
	float *a = calloc(V, sizeof(float)), *b = calloc(V, sizeof(float));
	for (size_t t = T; t < T + 10; t++) {
		ck_assert_int_eq(sb_decode(gpu, d, tok[t], a, &err), 0);
		ck_assert_int_eq(sb_decode(cpu, h, tok[t], b, &err), 0);
		ck_assert_msg(rel_diff(a, b, 1, V) <= REL_TOL, "after host->device: %g",
		              rel_diff(a, b, 1, V));
	}
	for (int l = 0; l < c->layers; l++)
		ck_assert_uint_eq(sb_state_n_activated(d, l), sb_state_n_activated(h, l));
	/* device -> host */
	ck_assert_int_eq(sb_state_copy(h2, d), 0);
	ck_assert_int_eq(sb_decode(cpu, h2, 3, a, &err), 0);
	ck_assert_int_eq(sb_decode(cpu, h, 3, b, &err), 0);
	ck_assert_msg(rel_diff(a, b, 1, V) <= REL_TOL, "after device->host: %g", rel_diff(a, b, 1, V));
	/* save on the device, load into another device state: the same bytes */
	const char *path = tu_write_file(tu_tmpdir(), "s.state", "", 0);
	ck_assert_msg(sb_state_save(d, path, &err) == 0, "%s", err.msg);
	ck_assert_msg(sb_state_load(d2, path, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(sb_state_n_tokens(d2), sb_state_n_tokens(d));
	ck_assert_int_eq(sb_decode(gpu, d, 4, a, &err), 0);
	ck_assert_int_eq(sb_decode(gpu, d2, 4, b, &err), 0);
	ck_assert(memcmp(a, b, V * sizeof(float)) == 0);
	/* reset empties a device state */
	sb_state_reset(d2);
	ck_assert_uint_eq(sb_state_n_tokens(d2), 0);
	for (int l = 0; l < c->layers; l++)
		ck_assert_uint_eq(sb_state_n_activated(d2, l), 0);
	free(a);
	free(b);
	free(tok);
	sb_state_free(h);
	sb_state_free(h2);
	sb_state_free(d);
	sb_state_free(d2);
	sb_ctx_free(gpu);
	sb_ctx_free(cpu);
	sb_model_free(m);
}
END_TEST

/* act_bias moves the GPU's routers as it moves the CPU's. */
START_TEST(cuda_act_bias_matches_cpu)
{
	sb_model *m = tu_load_fixture_model(cases[_i]);
	const sb_config *c = sb_model_config(m);
	const size_t T = 200, L = (size_t)c->layers;
	int32_t *tok = random_tokens(T, c->vocab_size, 21);
	const float biases[] = {-0.3f, 0.3f};
	for (int k = 0; k < 2; k++) {
		sb_ctx *gpu = ctx_on(m, "cuda", 0), *cpu = ctx_on(m, "cpu", 0);
		sb_ctx_set_act_bias(gpu, biases[k]);
		sb_ctx_set_act_bias(cpu, biases[k]);
		sb_state *d = state_on(gpu), *h = state_on(cpu);
		uint8_t *ag = calloc(L * T, 1), *ac = calloc(L * T, 1);
		sb_outputs og = {.act = ag, .stride = T}, oc = {.act = ac, .stride = T};
		sb_error err = {0};
		ck_assert_int_eq(sb_prefill(gpu, d, tok, T, &og, &err), 0);
		ck_assert_int_eq(sb_prefill(cpu, h, tok, T, &oc, &err), 0);
		size_t same = 0, fired = 0;
		for (size_t i = 0; i < L * T; i++) {
			same += ag[i] == ac[i];
			fired += ag[i];
		}
		fprintf(stderr, "%s act_bias %g: %zu of %zu decisions equal to the cpu, %zu fired\n",
		        cases[_i], biases[k], same, L * T, fired);
		/* no fixture margins here: allow the odd near-tie */
		ck_assert_msg(same >= L * T - 2, "act_bias %g: %zu of %zu equal", biases[k], same, L * T);
		free(ag);
		free(ac);
		sb_state_free(d);
		sb_state_free(h);
		sb_ctx_free(gpu);
		sb_ctx_free(cpu);
	}
	free(tok);
	sb_model_free(m);
}
END_TEST

/* Whether this machine can run the CUDA backend at all (a GPU and a
 * driver). Asked in a child process: a process that has initialized CUDA
 * cannot hand it to the children Check forks for the tests. */
static bool have_gpu_here(void)
{
	sb_error err = {0};
	sb_model *m = sb_model_load(tu_fixture_model_dir(cases[0]), &err);
	if (!m) {
		fprintf(stderr, "test-cuda: %s\n", err.msg);
		return true; /* let the tests fail on it */
	}
	sb_ctx_params p = sb_ctx_default_params();
	p.device = "cuda";
	sb_ctx *c = sb_ctx_new(m, &p, &err);
	bool ok = c != NULL || err.code != SB_ERR_DEVICE;
	if (!c)
		fprintf(stderr, "test-cuda: %s\n", err.msg);
	sb_ctx_free(c);
	sb_model_free(m);
	return ok;
}

static bool have_gpu(void)
{
	pid_t pid = fork();
	if (pid == 0)
		_exit(have_gpu_here() ? 0 : 1);
	int st = 0;
	if (pid < 0 || waitpid(pid, &st, 0) != pid)
		return true;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* --fused: every decode step of up to 8 rows on the fused kernel
 * (SEQBOAT_CUDA_FUSED=1), so the fixtures check that path too. */
int main(int argc, char **argv)
{
	const bool fused = argc > 1 && !strcmp(argv[1], "--fused");
	if (fused)
		setenv("SEQBOAT_CUDA_FUSED", "1", 1);
	if (!have_gpu()) {
		fprintf(stderr, "test-cuda: no usable GPU, skipped\n");
		return 77;
	}
	Suite *s = suite_create("cuda");
	TCase *tc = tcase_create("cuda");
	tcase_set_timeout(tc, 600);
	tcase_add_loop_test(tc, cuda_parity_decode, 0, N_CASES);
	tcase_add_loop_test(tc, cuda_parity_prefill, 0, N_CASES);
	tcase_add_loop_test(tc, cuda_parity_split, 0, N_CASES);
	tcase_add_loop_test(tc, cuda_long_prefill_matches_decode_and_cpu, 0, N_CASES);
	tcase_add_loop_test(tc, cuda_f16_products_match_cpu, 0, N_CASES);
	tcase_add_loop_test(tc, cuda_bf16_and_q8_match_cpu, 0, 2 * N_CASES);
	tcase_add_loop_test(tc, cuda_batch_small_matches_cpu, 0, N_CASES);
	tcase_add_loop_test(tc, cuda_batch_large_matches_cpu, 0, N_CASES);
	tcase_add_loop_test(tc, cuda_batch_same_state_twice, 0, N_CASES);
	if (!fused)
		tcase_add_loop_test(tc, cuda_fused_step_matches_per_op, 0, N_CASES);
	tcase_add_loop_test(tc, cuda_fused_kinds_match, 0, 4 * N_CASES);
	tcase_add_loop_test(tc, cuda_graphs_match_plain_launches, 0, N_CASES);
	tcase_add_loop_test(tc, cuda_state_moves_between_host_and_device, 0, N_CASES);
	tcase_add_loop_test(tc, cuda_act_bias_matches_cpu, 0, N_CASES);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
