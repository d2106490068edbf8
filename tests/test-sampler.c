/* test-sampler.c - the sampling chain and the stop-string matcher. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "testutil.h"

/* Params with every truncation and penalty off. */
static sb_sampler_params plain(float temp)
{
	sb_sampler_params p = sb_sampler_default_params();
	p.temp = temp;
	p.top_k = 0;
	p.top_p = 1.0f;
	p.min_p = 0.0f;
	p.repeat_penalty = 1.0f;
	p.presence_penalty = 0.0f;
	p.frequency_penalty = 0.0f;
	return p;
}

static sb_sampler *make(const sb_sampler_params *p, int n_vocab)
{
	sb_error err = {0};
	sb_sampler *s = sb_sampler_new(p, n_vocab, &err);
	ck_assert_msg(s != NULL, "sb_sampler_new: %s", err.msg);
	return s;
}

/* Draws `draws` tokens from fresh copies of logits, counting each id. */
static void histogram(sb_sampler *s, const float *logits, int n, int draws,
                      int *counts)
{
	float work[64];
	ck_assert_int_le(n, 64);
	memset(counts, 0, (size_t)n * sizeof *counts);
	for (int i = 0; i < draws; i++) {
		memcpy(work, logits, (size_t)n * sizeof *work);
		int32_t t = sb_sampler_sample(s, work);
		ck_assert_int_ge(t, 0);
		ck_assert_int_lt(t, n);
		counts[t]++;
	}
}

/* log of a probability table, shifted so the logits are not already
 * normalized (the sampler must not rely on that). */
static void logits_from_probs(const double *probs, int n, float *logits)
{
	for (int i = 0; i < n; i++)
		logits[i] = (float)(log(probs[i]) + 3.0);
}

START_TEST(sampler_greedy_is_argmax)
{
	sb_sampler_params p = plain(0.0f);
	sb_sampler *s = make(&p, 50);
	uint64_t x = 12345;
	for (int round = 0; round < 100; round++) {
		float logits[50];
		int best = 0;
		for (int i = 0; i < 50; i++) {
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
			logits[i] = (float)((x >> 33) % 10000) / 100.0f - 50.0f;
			if (logits[i] > logits[best])
				best = i;
		}
		ck_assert_int_eq(sb_sampler_sample(s, logits), best);
	}
	sb_sampler_free(s);
	/* Ties go to the lower id. */
	s = make(&p, 5);
	float tie[5] = {1, 3, 2, 3, 0};
	ck_assert_int_eq(sb_sampler_sample(s, tie), 1);
	sb_sampler_free(s);
	/* NaN never wins; the first of equal maxima wins wherever they fall
	 * (in the same or other lanes of 8, or in the tail); -inf or NaN
	 * everywhere gives id 0. */
	s = make(&p, 37);
	float l[37];
	for (int i = 0; i < 37; i++)
		l[i] = i % 5 == 0 ? NAN : (float)(i % 7) - 3.0f;
	l[19] = 9.0f;
	l[27] = 9.0f;
	l[35] = 9.0f;
	ck_assert_int_eq(sb_sampler_sample(s, l), 19);
	l[19] = NAN;
	ck_assert_int_eq(sb_sampler_sample(s, l), 27);
	l[27] = 8.0f;
	ck_assert_int_eq(sb_sampler_sample(s, l), 35);
	l[36] = INFINITY;
	ck_assert_int_eq(sb_sampler_sample(s, l), 36);
	for (int i = 0; i < 37; i++)
		l[i] = i % 2 ? NAN : -INFINITY;
	ck_assert_int_eq(sb_sampler_sample(s, l), 0);
	l[0] = NAN;
	ck_assert_int_eq(sb_sampler_sample(s, l), 0);
	l[33] = -1e30f;
	ck_assert_int_eq(sb_sampler_sample(s, l), 33);
	sb_sampler_free(s);
}
END_TEST

START_TEST(sampler_unrestricted_draw_follows_softmax)
{
	const double probs[4] = {0.4, 0.3, 0.2, 0.1};
	float logits[4];
	logits_from_probs(probs, 4, logits);
	sb_sampler_params p = plain(1.0f);
	p.seed = 7;
	sb_sampler *s = make(&p, 4);
	int counts[4];
	const int draws = 40000;
	histogram(s, logits, 4, draws, counts);
	/* Standard error of each frequency is below 0.0025; 0.015 is six of them. */
	for (int i = 0; i < 4; i++)
		ck_assert_double_eq_tol((double)counts[i] / draws, probs[i], 0.015);
	sb_sampler_free(s);

	/* Temperature 0.5 squares the probabilities before renormalizing. */
	p.temp = 0.5f;
	s = make(&p, 4);
	histogram(s, logits, 4, draws, counts);
	double z = 0;
	for (int i = 0; i < 4; i++)
		z += probs[i] * probs[i];
	for (int i = 0; i < 4; i++)
		ck_assert_double_eq_tol((double)counts[i] / draws, probs[i] * probs[i] / z, 0.015);
	sb_sampler_free(s);
}
END_TEST

START_TEST(sampler_top_k_keeps_the_k_best)
{
	float logits[8] = {0.5f, 2.0f, -1.0f, 1.9f, 1.8f, 0.0f, 1.7f, -3.0f};
	sb_sampler_params p = plain(1.0f);
	p.top_k = 3;
	p.seed = 3;
	sb_sampler *s = make(&p, 8);
	int counts[8];
	histogram(s, logits, 8, 6000, counts);
	for (int i = 0; i < 8; i++) {
		bool in = i == 1 || i == 3 || i == 4;
		if (in)
			ck_assert_int_gt(counts[i], 0);
		else
			ck_assert_int_eq(counts[i], 0);
	}
	sb_sampler_free(s);

	/* top_k 1 is greedy whatever the temperature. */
	p.top_k = 1;
	p.temp = 5.0f;
	s = make(&p, 8);
	histogram(s, logits, 8, 500, counts);
	ck_assert_int_eq(counts[1], 500);
	sb_sampler_free(s);

	/* top_k larger than the vocabulary keeps everything. */
	p.top_k = 100;
	p.temp = 1.0f;
	s = make(&p, 8);
	histogram(s, logits, 8, 20000, counts);
	for (int i = 0; i < 8; i++)
		ck_assert_int_gt(counts[i], 0);
	sb_sampler_free(s);
}
END_TEST

START_TEST(sampler_top_p_keeps_the_smallest_prefix)
{
	const double probs[5] = {0.1, 0.45, 0.05, 0.3, 0.1};
	float logits[5];
	logits_from_probs(probs, 5, logits);
	/* Sorted: 0.45 (id 1), 0.3 (id 3), then 0.1 ... ; 0.7 needs ids 1 and 3. */
	sb_sampler_params p = plain(1.0f);
	p.top_p = 0.7f;
	p.seed = 11;
	sb_sampler *s = make(&p, 5);
	int counts[5];
	const int draws = 20000;
	histogram(s, logits, 5, draws, counts);
	ck_assert_int_eq(counts[0] + counts[2] + counts[4], 0);
	/* Renormalized over the kept set: 0.45 / 0.75 = 0.6. */
	ck_assert_double_eq_tol((double)counts[1] / draws, 0.6, 0.02);
	sb_sampler_free(s);

	/* A tiny top_p still keeps the most likely token. */
	p.top_p = 1e-6f;
	s = make(&p, 5);
	histogram(s, logits, 5, 500, counts);
	ck_assert_int_eq(counts[1], 500);
	sb_sampler_free(s);
}
END_TEST

START_TEST(sampler_min_p_keeps_tokens_near_the_best)
{
	const double probs[5] = {0.05, 0.5, 0.15, 0.3, 1.0};
	float logits[5];
	logits_from_probs(probs, 5, logits);
	logits[4] = -INFINITY; /* an impossible token is never drawn */
	/* min_p 0.25 of 0.5 = 0.125: keeps ids 1, 3, 2; drops id 0. */
	sb_sampler_params p = plain(1.0f);
	p.min_p = 0.25f;
	p.seed = 5;
	sb_sampler *s = make(&p, 5);
	int counts[5];
	histogram(s, logits, 5, 20000, counts);
	ck_assert_int_eq(counts[0], 0);
	ck_assert_int_eq(counts[4], 0);
	ck_assert_int_gt(counts[1], 0);
	ck_assert_int_gt(counts[2], 0);
	ck_assert_int_gt(counts[3], 0);
	sb_sampler_free(s);

	/* min_p 1 keeps only the best. */
	p.min_p = 1.0f;
	s = make(&p, 5);
	histogram(s, logits, 5, 500, counts);
	ck_assert_int_eq(counts[1], 500);
	sb_sampler_free(s);
}
END_TEST

START_TEST(sampler_repeat_penalty_divides_positive_multiplies_negative)
{
	sb_sampler_params p = plain(0.0f);
	p.repeat_penalty = 2.0f;
	p.repeat_last_n = 8;
	sb_sampler *s = make(&p, 4);
	sb_sampler_accept(s, 0);
	sb_sampler_accept(s, 1);
	sb_sampler_accept(s, 0); /* repeated: still penalized once */
	float logits[4] = {2.0f, -1.0f, 1.5f, 0.25f};
	ck_assert_int_eq(sb_sampler_sample(s, logits), 2);
	ck_assert_float_eq(logits[0], 1.0f);
	ck_assert_float_eq(logits[1], -2.0f);
	ck_assert_float_eq(logits[2], 1.5f);
	ck_assert_float_eq(logits[3], 0.25f);
	sb_sampler_free(s);
}
END_TEST

START_TEST(sampler_penalties_see_only_the_last_n)
{
	sb_sampler_params p = plain(0.0f);
	p.repeat_penalty = 4.0f;
	p.repeat_last_n = 2;
	sb_sampler *s = make(&p, 4);
	sb_sampler_accept(s, 0);
	sb_sampler_accept(s, 1);
	sb_sampler_accept(s, 2); /* pushes 0 out of the window */
	float logits[4] = {1.0f, 1.0f, 1.0f, 1.0f};
	ck_assert_int_eq(sb_sampler_sample(s, logits), 0);
	ck_assert_float_eq(logits[0], 1.0f);
	ck_assert_float_eq(logits[1], 0.25f);
	ck_assert_float_eq(logits[2], 0.25f);
	sb_sampler_free(s);

	/* repeat_last_n 0 switches the penalties off. */
	p.repeat_last_n = 0;
	s = make(&p, 4);
	sb_sampler_accept(s, 0);
	float l2[4] = {1.0f, 0.5f, 0.0f, 0.0f};
	ck_assert_int_eq(sb_sampler_sample(s, l2), 0);
	ck_assert_float_eq(l2[0], 1.0f);
	sb_sampler_free(s);
}
END_TEST

START_TEST(sampler_presence_and_frequency_penalties)
{
	sb_sampler_params p = plain(0.0f);
	p.presence_penalty = 0.5f;
	p.frequency_penalty = 0.25f;
	p.repeat_last_n = 16;
	sb_sampler *s = make(&p, 4);
	sb_sampler_accept(s, 0);
	sb_sampler_accept(s, 0);
	sb_sampler_accept(s, 1);
	float logits[4] = {3.0f, 2.0f, 1.0f, 1.9f};
	/* id 0: 3 - 0.5 - 2*0.25 = 2.0; id 1: 2 - 0.5 - 0.25 = 1.25 */
	ck_assert_int_eq(sb_sampler_sample(s, logits), 0);
	ck_assert_float_eq_tol(logits[0], 2.0f, 1e-6f);
	ck_assert_float_eq_tol(logits[1], 1.25f, 1e-6f);
	ck_assert_float_eq(logits[2], 1.0f);
	ck_assert_float_eq(logits[3], 1.9f);
	/* reset forgets the history. */
	sb_sampler_reset(s, 0);
	float l2[4] = {3.0f, 2.0f, 1.0f, 1.9f};
	sb_sampler_sample(s, l2);
	ck_assert_float_eq(l2[0], 3.0f);
	sb_sampler_free(s);
}
END_TEST

START_TEST(sampler_logit_bias)
{
	int32_t ids[2] = {2, 0};
	float vals[2] = {10.0f, -INFINITY};
	sb_sampler_params p = plain(0.0f);
	p.bias_ids = ids;
	p.bias_values = vals;
	p.n_bias = 2;
	sb_sampler *s = make(&p, 4);
	/* The sampler copied the bias: changing the caller's arrays is harmless. */
	ids[0] = 3;
	float logits[4] = {5.0f, 4.0f, -4.0f, 0.0f};
	ck_assert_int_eq(sb_sampler_sample(s, logits), 2);
	ck_assert_float_eq(logits[2], 6.0f);
	sb_sampler_free(s);

	/* -inf bans a token even when sampling at a high temperature. */
	int32_t ban[1] = {0};
	float neg[1] = {-INFINITY};
	p = plain(3.0f);
	p.bias_ids = ban;
	p.bias_values = neg;
	p.n_bias = 1;
	p.seed = 9;
	s = make(&p, 3);
	int counts[3];
	histogram(s, (const float[]){10.0f, 0.0f, 0.0f}, 3, 2000, counts);
	ck_assert_int_eq(counts[0], 0);
	ck_assert_int_gt(counts[1], 0);
	ck_assert_int_gt(counts[2], 0);
	sb_sampler_free(s);
}
END_TEST

static void draw_sequence(sb_sampler *s, int32_t *out, int n)
{
	float logits[32];
	for (int i = 0; i < n; i++) {
		for (int v = 0; v < 32; v++)
			logits[v] = (float)((v * 7 + i * 3) % 11) * 0.3f;
		out[i] = sb_sampler_sample(s, logits);
		sb_sampler_accept(s, out[i]);
	}
}

START_TEST(sampler_same_seed_same_tokens)
{
	sb_sampler_params p = sb_sampler_default_params();
	p.temp = 1.5f;
	p.repeat_penalty = 1.1f;
	p.seed = 42;
	int32_t a[200], b[200], c[200], d[200];
	sb_sampler *s1 = make(&p, 32);
	sb_sampler *s2 = make(&p, 32);
	draw_sequence(s1, a, 200);
	draw_sequence(s2, b, 200);
	ck_assert_mem_eq(a, b, sizeof a);
	/* reset with the same seed replays the sequence. */
	sb_sampler_reset(s1, 42);
	draw_sequence(s1, c, 200);
	ck_assert_mem_eq(a, c, sizeof a);
	/* Another seed gives another sequence. */
	sb_sampler_reset(s2, 43);
	draw_sequence(s2, d, 200);
	ck_assert(memcmp(a, d, sizeof a) != 0);
	sb_sampler_free(s1);
	sb_sampler_free(s2);
}
END_TEST

static void expect_rejected(const sb_sampler_params *p, int n_vocab, const char *field)
{
	sb_error err = {0};
	sb_sampler *s = sb_sampler_new(p, n_vocab, &err);
	ck_assert_ptr_null(s);
	ck_assert_int_eq(err.code, SB_ERR_ARG);
	ck_assert_msg(strstr(err.msg, field) != NULL, "'%s' does not name %s", err.msg, field);
}

START_TEST(sampler_invalid_params_rejected)
{
	sb_sampler_params p;
	p = plain(-0.5f);
	expect_rejected(&p, 10, "temp");
	p = plain(NAN);
	expect_rejected(&p, 10, "temp");
	p = plain(1.0f);
	p.top_p = 0.0f;
	expect_rejected(&p, 10, "top_p");
	p = plain(1.0f);
	p.top_p = 1.5f;
	expect_rejected(&p, 10, "top_p");
	p = plain(1.0f);
	p.min_p = -0.1f;
	expect_rejected(&p, 10, "min_p");
	p = plain(1.0f);
	p.repeat_penalty = 0.0f;
	expect_rejected(&p, 10, "repeat_penalty");
	p = plain(1.0f);
	p.repeat_last_n = -1;
	expect_rejected(&p, 10, "repeat_last_n");
	p = plain(1.0f);
	p.frequency_penalty = INFINITY;
	expect_rejected(&p, 10, "frequency_penalty");
	p = plain(1.0f);
	expect_rejected(&p, 0, "n_vocab");
	int32_t id = 10;
	float v = 1.0f;
	p = plain(1.0f);
	p.bias_ids = &id;
	p.bias_values = &v;
	p.n_bias = 1;
	expect_rejected(&p, 10, "bias id 10");
	id = 3;
	v = NAN;
	expect_rejected(&p, 10, "bias");
	ck_assert_ptr_null(sb_sampler_new(NULL, 10, NULL));
	sb_sampler_free(NULL);
}
END_TEST

/* Pushes each piece and returns everything emitted plus the flush. */
static bool run_stop(sb_stop *st, const char *const *pieces, size_t n, char *out,
                     size_t cap, size_t *match_at)
{
	size_t len = 0;
	bool any = false;
	*match_at = SIZE_MAX;
	for (size_t i = 0; i < n; i++) {
		const char *o;
		size_t ol;
		bool m;
		ck_assert_int_eq(sb_stop_push(st, pieces[i], strlen(pieces[i]), &o, &ol, &m), 0);
		ck_assert_uint_lt(len + ol, cap);
		memcpy(out + len, o, ol);
		len += ol;
		if (m && !any) {
			any = true;
			*match_at = i;
		}
	}
	const char *o;
	size_t ol;
	sb_stop_flush(st, &o, &ol);
	ck_assert_uint_lt(len + ol, cap);
	memcpy(out + len, o, ol);
	len += ol;
	out[len] = 0;
	return any;
}

START_TEST(stop_string_split_across_tokens)
{
	const char *stops[] = {"\nUser:"};
	sb_stop *st = sb_stop_new(stops, 1, NULL);
	ck_assert_ptr_nonnull(st);
	const char *pieces[] = {"Hello", " there\nUs", "er:", " more", " text"};
	char out[128];
	size_t at;
	ck_assert(run_stop(st, pieces, 5, out, sizeof out, &at));
	ck_assert_str_eq(out, "Hello there");
	ck_assert_uint_eq(at, 2);

	/* Held-back bytes that turn out not to be a stop are released. */
	sb_stop_reset(st);
	const char *p2[] = {"a\nU", "s", "b", "\n"};
	ck_assert(!run_stop(st, p2, 4, out, sizeof out, &at));
	ck_assert_str_eq(out, "a\nUsb\n");
	sb_stop_free(st);
}
END_TEST

START_TEST(stop_holds_back_only_possible_prefixes)
{
	const char *stops[] = {"abc"};
	sb_stop *st = sb_stop_new(stops, 1, NULL);
	const char *o;
	size_t ol;
	bool m;
	sb_stop_push(st, "xyab", 4, &o, &ol, &m);
	ck_assert(!m);
	ck_assert_uint_eq(ol, 2);
	ck_assert_mem_eq(o, "xy", 2);
	sb_stop_push(st, "d", 1, &o, &ol, &m);
	ck_assert(!m);
	ck_assert_uint_eq(ol, 3);
	ck_assert_mem_eq(o, "abd", 3);
	/* Overlapping start: "aab" + "c" must still find "abc". */
	sb_stop_push(st, "aab", 3, &o, &ol, &m);
	ck_assert_uint_eq(ol, 1);
	sb_stop_push(st, "c", 1, &o, &ol, &m);
	ck_assert(m);
	ck_assert_uint_eq(ol, 0);
	/* After a match nothing more is emitted. */
	sb_stop_push(st, "zzz", 3, &o, &ol, &m);
	ck_assert(m);
	ck_assert_uint_eq(ol, 0);
	sb_stop_flush(st, &o, &ol);
	ck_assert_uint_eq(ol, 0);
	sb_stop_free(st);
}
END_TEST

START_TEST(stop_earliest_of_several_wins)
{
	const char *stops[] = {"cd", "bcde", "END"};
	sb_stop *st = sb_stop_new(stops, 3, NULL);
	const char *pieces[] = {"xab", "cdef"};
	char out[64];
	size_t at;
	ck_assert(run_stop(st, pieces, 2, out, sizeof out, &at));
	/* "bcde" starts before "cd": the text stops at "xa". */
	ck_assert_str_eq(out, "xa");
	sb_stop_free(st);

	/* Without stop strings everything passes through at once; long
	 * pieces grow the buffer. */
	st = sb_stop_new(NULL, 0, NULL);
	ck_assert_ptr_nonnull(st);
	char big[3000];
	memset(big, 'q', sizeof big - 1);
	big[sizeof big - 1] = 0;
	const char *o;
	size_t ol;
	bool m;
	sb_stop_push(st, big, strlen(big), &o, &ol, &m);
	ck_assert(!m);
	ck_assert_uint_eq(ol, strlen(big));
	ck_assert_mem_eq(o, big, ol);
	sb_stop_free(st);
}
END_TEST

START_TEST(stop_empty_string_rejected)
{
	const char *stops[] = {"ok", ""};
	sb_error err = {0};
	ck_assert_ptr_null(sb_stop_new(stops, 2, &err));
	ck_assert_int_eq(err.code, SB_ERR_ARG);
	ck_assert_ptr_nonnull(strstr(err.msg, "stop string 2"));
	sb_stop_free(NULL);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("sampler");
	TCase *tc = tcase_create("sampler");
	tcase_add_test(tc, sampler_greedy_is_argmax);
	tcase_add_test(tc, sampler_unrestricted_draw_follows_softmax);
	tcase_add_test(tc, sampler_top_k_keeps_the_k_best);
	tcase_add_test(tc, sampler_top_p_keeps_the_smallest_prefix);
	tcase_add_test(tc, sampler_min_p_keeps_tokens_near_the_best);
	tcase_add_test(tc, sampler_repeat_penalty_divides_positive_multiplies_negative);
	tcase_add_test(tc, sampler_penalties_see_only_the_last_n);
	tcase_add_test(tc, sampler_presence_and_frequency_penalties);
	tcase_add_test(tc, sampler_logit_bias);
	tcase_add_test(tc, sampler_same_seed_same_tokens);
	tcase_add_test(tc, sampler_invalid_params_rejected);
	suite_add_tcase(s, tc);
	TCase *ts = tcase_create("stop");
	tcase_add_test(ts, stop_string_split_across_tokens);
	tcase_add_test(ts, stop_holds_back_only_possible_prefixes);
	tcase_add_test(ts, stop_earliest_of_several_wins);
	tcase_add_test(ts, stop_empty_string_rejected);
	suite_add_tcase(s, ts);
	return tu_run(s);
}
