/* testutil.c - see testutil.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

static const char *env_or(const char *name, const char *fallback)
{
	const char *v = getenv(name);
	return v && *v ? v : fallback;
}

const char *tu_fixture(const char *rel)
{
	static char buf[4096];
	snprintf(buf, sizeof buf, "%s/%s", env_or("SB_FIXTURES", "tests/fixtures"), rel);
	return buf;
}

const char *tu_src(const char *rel)
{
	static char buf[4096];
	snprintf(buf, sizeof buf, "%s/%s", env_or("SB_SRCDIR", "."), rel);
	return buf;
}

const char *tu_tmpdir(void)
{
	static char buf[4096];
	snprintf(buf, sizeof buf, "%s/sbtest-XXXXXX", env_or("TMPDIR", "/tmp"));
	if (!mkdtemp(buf))
		ck_abort_msg("mkdtemp failed");
	return buf;
}

const char *tu_write_file(const char *dir, const char *name, const void *buf,
                          size_t len)
{
	static char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	ck_assert_msg(f != NULL, "cannot create %s", path);
	ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
	ck_assert_int_eq(fclose(f), 0);
	return path;
}

int tu_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

sb_ctx *tu_ctx_new(const sb_model *m, int n_threads, sb_error *err)
{
	sb_ctx_params p = sb_ctx_default_params();
	p.n_threads = n_threads;
	p.device = getenv("SB_TEST_DEVICE");
	return sb_ctx_new(m, &p, err);
}

const char *tu_fixture_model_dir(const char *name)
{
	static char buf[4096];
	const char *env = getenv("SB_FIXTURE_MODELS");
	if (env && *env)
		snprintf(buf, sizeof buf, "%s/%s", env, name);
	else
		snprintf(buf, sizeof buf, "%s/tests/models/%s",
		         getenv("SB_BUILDDIR") ? getenv("SB_BUILDDIR") : "build", name);
	return buf;
}

sb_model *tu_load_fixture_model(const char *name)
{
	sb_error err = {0};
	sb_model *m = sb_model_load(tu_fixture_model_dir(name), &err);
	ck_assert_msg(m != NULL, "load %s: %s", name, err.msg);
	return m;
}
