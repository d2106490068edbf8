/*
 * test-quantize.c - sb_model_quantize: each weight type loads back with
 * its dtype, F32 and F16 of an F32 model compute what they should, q8
 * stays close, and an existing target is refused with nothing written.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"

static const char *fixture_model(void)
{
	static char buf[4096];
	const char *env = getenv("SB_FIXTURE_MODELS");
	snprintf(buf, sizeof buf, "%s/rotary-softmax", env && *env ? env : "build/tests/models");
	return buf;
}

/* Logits after 40 fixed tokens. */
static float *run(const sb_model *m)
{
	const sb_config *c = sb_model_config(m);
	sb_error err = {0};
	sb_ctx *ctx = tu_ctx_new(m, 1, &err);
	ck_assert_msg(ctx != NULL, "%s", err.msg);
	sb_state *s = sb_ctx_state_new(ctx, &err);
	int32_t tok[40];
	for (int i = 0; i < 40; i++)
		tok[i] = (int32_t)((i * 7 + 3) % c->vocab_size);
	float *lg = malloc((size_t)c->vocab_size * sizeof(float));
	sb_outputs o = {.last_logits = lg};
	ck_assert_int_eq(sb_prefill(ctx, s, tok, 40, &o, &err), 0);
	sb_state_free(s);
	sb_ctx_free(ctx);
	return lg;
}

START_TEST(quantize_types_load_back)
{
	sb_error err = {0};
	sb_model *m = sb_model_load(fixture_model(), &err);
	ck_assert_msg(m != NULL, "%s", err.msg);
	const int V = sb_model_config(m)->vocab_size;
	float *ref = run(m);
	const sb_dtype want[] = {SB_DTYPE_F32, SB_DTYPE_F16, SB_DTYPE_BF16, SB_DTYPE_I8};
	const double tol[] = {0.0, 2e-2, 1e-1, 1e-1};
	const char *dir = tu_tmpdir();
	for (int t = SB_QUANT_F32; t <= SB_QUANT_Q8; t++) {
		sb_quant_type parsed;
		ck_assert(sb_quant_type_parse(sb_quant_type_name((sb_quant_type)t), &parsed));
		ck_assert_int_eq(parsed, t);
		char out[4200];
		snprintf(out, sizeof out, "%s/%s", dir, sb_quant_type_name((sb_quant_type)t));
		ck_assert_msg(sb_model_quantize(m, out, (sb_quant_type)t, &err) == 0, "%s", err.msg);
		sb_model *q = sb_model_load(out, &err);
		ck_assert_msg(q != NULL, "%s", err.msg);
		ck_assert_int_eq(sb_model_weight_dtype(q), want[t]);
		ck_assert_uint_eq(sb_model_n_params(q), sb_model_n_params(m));
		float *lg = run(q);
		double worst = 0;
		for (int v = 0; v < V; v++)
			worst = fmax(worst, fabs((double)lg[v] - ref[v]));
		ck_assert_msg(worst <= tol[t], "%s: logits differ by %g", sb_quant_type_name((sb_quant_type)t),
		              worst);
		free(lg);
		sb_model_free(q);
		/* A second run onto the same directory is refused. */
		ck_assert_int_eq(sb_model_quantize(m, out, (sb_quant_type)t, &err), SB_ERR_ARG);
		ck_assert_msg(strstr(err.msg, "already exists") != NULL, "%s", err.msg);
	}
	sb_quant_type dummy;
	ck_assert(!sb_quant_type_parse("q4", &dummy));
	ck_assert(!sb_quant_type_parse(NULL, &dummy));
	/* A failure leaves no directory behind. */
	char bad[4200];
	snprintf(bad, sizeof bad, "%s/no/such/parent", dir);
	ck_assert_int_eq(sb_model_quantize(m, bad, SB_QUANT_Q8, &err), SB_ERR_IO);
	struct stat sb;
	ck_assert_int_ne(stat(bad, &sb), 0);
	free(ref);
	sb_model_free(m);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("quantize");
	TCase *tc = tcase_create("quantize");
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, quantize_types_load_back);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
