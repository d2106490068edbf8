/* test-serve-cache.c - the server's state cache (cmd/serve_cache.c): the
 * longest cached prefix wins and its tokens are compared, LRU eviction
 * within the byte bound, reply tokens, and the cache directory (read back
 * by the same model, ignored by another). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "serve_cache.h"
#include "testutil.h"

static sb_model *model, *other;
static sb_ctx *ctx;

static const char *fixture_model(const char *name)
{
	static char path[4096];
	const char *dir = getenv("SB_FIXTURE_MODELS");
	snprintf(path, sizeof path, "%s/%s", dir ? dir : "tests/models", name);
	return path;
}

static void setup(void)
{
	sb_error err = {0};
	model = sb_model_load(fixture_model("rotary-softmax"), &err);
	ck_assert_msg(model, "%s", err.msg);
	other = sb_model_load(fixture_model("simple-relu2-ffn"), &err);
	ck_assert_msg(other, "%s", err.msg);
	ctx = tu_ctx_new(model, 1, &err);
	ck_assert_msg(ctx, "%s", err.msg);
}

static void teardown(void)
{
	sb_ctx_free(ctx);
	sb_model_free(model);
	sb_model_free(other);
}

/* The state after tokens (a real prefill, so n_tokens is n). */
static sb_state *state_after(const int32_t *tokens, size_t n)
{
	sb_error err = {0};
	sb_state *s = sb_state_new(model, &err);
	ck_assert_msg(s, "%s", err.msg);
	ck_assert_int_eq(sb_prefill(ctx, s, tokens, n, NULL, &err), 0);
	return s;
}

static void store(serve_cache *c, const int32_t *tokens, size_t n)
{
	serve_cache_entry *e = serve_cache_store(c, tokens, n, state_after(tokens, n), 0, "", 0, false);
	serve_cache_persist(c, e);
}

static void note_len(const sb_state *st, size_t n, void *arg)
{
	ck_assert_uint_eq(sb_state_n_tokens(st), n);
	*(size_t *)arg = n;
}

static size_t lookup(serve_cache *c, const int32_t *tokens, size_t n)
{
	size_t seen = 0;
	size_t got = serve_cache_use_prefix(c, tokens, n, note_len, &seen);
	ck_assert_uint_eq(got, seen);
	return got;
}

START_TEST(serve_cache_longest_prefix_wins)
{
	sb_error err = {0};
	serve_cache *c = serve_cache_new(model, 64u << 20, NULL, &err);
	ck_assert_msg(c, "%s", err.msg);
	const int32_t a[] = {2, 4, 5, 6}, b[] = {2, 4, 5, 6, 7, 8}, q[] = {2, 4, 5, 6, 7, 8, 9};
	store(c, a, 4);
	store(c, b, 6);
	ck_assert_uint_eq(lookup(c, q, 7), 6);
	ck_assert_uint_eq(lookup(c, q, 6), 6);
	ck_assert_uint_eq(lookup(c, q, 5), 4);   /* b is longer than the limit */
	ck_assert_uint_eq(lookup(c, q, 3), 0);
	const int32_t d[] = {2, 4, 5, 9, 7, 8, 9}; /* differs inside both */
	ck_assert_uint_eq(lookup(c, d, 7), 0);
	const int32_t e[] = {2, 4, 5, 6, 9, 9}; /* extends a, not b */
	ck_assert_uint_eq(lookup(c, e, 6), 4);
	serve_cache_stats st;
	serve_cache_stats_get(c, &st);
	ck_assert_uint_eq(st.entries, 2);
	ck_assert_uint_eq(st.hits, 4);
	ck_assert_uint_eq(st.misses, 2);
	serve_cache_free(c);
}
END_TEST

START_TEST(serve_cache_evicts_least_recent_within_bytes)
{
	sb_error err = {0};
	/* Room for two entries of this model, not three. */
	size_t one = sb_state_bytes(model) + 4096;
	serve_cache *c = serve_cache_new(model, 2 * one + one / 2, NULL, &err);
	ck_assert_msg(c, "%s", err.msg);
	const int32_t a[] = {2, 10, 11}, b[] = {2, 20, 21}, d[] = {2, 30, 31};
	store(c, a, 3);
	store(c, b, 3);
	ck_assert_uint_eq(lookup(c, a, 3), 3); /* a is now the most recent */
	store(c, d, 3);
	ck_assert_uint_eq(lookup(c, b, 3), 0);  /* b was evicted */
	ck_assert_uint_eq(lookup(c, a, 3), 3);
	ck_assert_uint_eq(lookup(c, d, 3), 3);
	serve_cache_stats st;
	serve_cache_stats_get(c, &st);
	ck_assert_uint_eq(st.entries, 2);
	ck_assert_uint_eq(st.evictions, 1);
	ck_assert_uint_le(st.bytes, st.max_bytes);
	serve_cache_free(c);

	/* A bound smaller than one state keeps nothing. */
	c = serve_cache_new(model, 1, NULL, &err);
	store(c, a, 3);
	ck_assert_uint_eq(lookup(c, a, 3), 0);
	serve_cache_free(c);
}
END_TEST

START_TEST(serve_cache_reply_tokens_need_the_same_prefix_and_text)
{
	sb_error err = {0};
	serve_cache *c = serve_cache_new(model, 64u << 20, NULL, &err);
	const int32_t t[] = {2, 4, 5, 6, 7};
	serve_cache_store(c, t, 5, state_after(t, 5), 2, "w6 w7", 5, true);
	int32_t *r = NULL;
	size_t n = 0;
	bool open = false;
	ck_assert(serve_cache_reply_tokens(c, t, 3, "w6 w7", 5, &r, &n, &open));
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(r[0], 6);
	ck_assert_int_eq(r[1], 7);
	ck_assert(open);
	free(r);
	const int32_t other_prefix[] = {2, 4, 9};
	ck_assert(!serve_cache_reply_tokens(c, other_prefix, 3, "w6 w7", 5, &r, &n, &open));
	ck_assert(!serve_cache_reply_tokens(c, t, 3, "w6 w8", 5, &r, &n, &open));
	ck_assert(!serve_cache_reply_tokens(c, t, 2, "w6 w7", 5, &r, &n, &open));
	serve_cache_free(c);
}
END_TEST

START_TEST(serve_cache_dir_is_read_back_by_its_model_only)
{
	sb_error err = {0};
	const char *dir = tu_tmpdir();
	serve_cache *c = serve_cache_new(model, 64u << 20, dir, &err);
	ck_assert_msg(c, "%s", err.msg);
	const int32_t t[] = {2, 4, 5, 6, 7, 8};
	store(c, t, 6);
	serve_cache_free(c);

	c = serve_cache_new(model, 64u << 20, dir, &err);
	ck_assert_msg(c, "%s", err.msg);
	ck_assert_uint_eq(lookup(c, t, 6), 6);
	serve_cache_free(c);

	/* Another model ignores (and keeps) the files. */
	c = serve_cache_new(other, 64u << 20, dir, &err);
	ck_assert_msg(c, "%s", err.msg);
	serve_cache_stats st;
	serve_cache_stats_get(c, &st);
	ck_assert_uint_eq(st.entries, 0);
	serve_cache_free(c);
	c = serve_cache_new(model, 64u << 20, dir, &err);
	ck_assert_uint_eq(lookup(c, t, 6), 6);
	serve_cache_free(c);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("serve-cache");
	TCase *tc = tcase_create("core");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, serve_cache_longest_prefix_wins);
	tcase_add_test(tc, serve_cache_evicts_least_recent_within_bytes);
	tcase_add_test(tc, serve_cache_reply_tokens_need_the_same_prefix_and_text);
	tcase_add_test(tc, serve_cache_dir_is_read_back_by_its_model_only);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
