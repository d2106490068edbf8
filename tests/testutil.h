/* testutil.h - helpers shared by the Check executables. */
#ifndef SB_TESTUTIL_H
#define SB_TESTUTIL_H

#include <check.h>
#include <stddef.h>

#include "seqboat.h"

/* $SB_FIXTURES/<rel> (the official parity fixtures), in a static buffer. */
const char *tu_fixture(const char *rel);
/* $SB_SRCDIR/<rel>. */
const char *tu_src(const char *rel);
/* A fresh empty directory under $TMPDIR; the caller may leave it. */
const char *tu_tmpdir(void);
/* Writes len bytes to dir/name; returns the full path (static buffer). */
const char *tu_write_file(const char *dir, const char *name, const void *buf,
                          size_t len);
/* The converted fixture model <name> ($SB_FIXTURE_MODELS/<name>, else
 * $SB_BUILDDIR/tests/models/<name>), in a static buffer; and the model
 * loaded from there (a failed load fails the test). */
const char *tu_fixture_model_dir(const char *name);
sb_model *tu_load_fixture_model(const char *name);
/* A context of n_threads threads on $SB_TEST_DEVICE (unset: the CPU). */
sb_ctx *tu_ctx_new(const sb_model *m, int n_threads, sb_error *err);
/* Runs a Suite with the usual runner; returns the process exit status. */
int tu_run(Suite *s);

#endif
