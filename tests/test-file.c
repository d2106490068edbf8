/* test-file.c - whole-file reads with a limit and atomic replacement
 * (lib/file.c): what a target may be, modes, limits on files and pipes. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

static char path_buf[4][4096];

static const char *in_dir(int k, const char *dir, const char *name)
{
	snprintf(path_buf[k], sizeof path_buf[k], "%s/%s", dir, name);
	return path_buf[k];
}

static char *slurp(const char *path, size_t *len)
{
	char *buf = NULL;
	sb_error err = {0};
	ck_assert_msg(sb_file_read(path, 1 << 20, "a test file", &buf, len, &err) == 0, "%s", err.msg);
	return buf;
}

/* Nothing but the target itself may be left in dir (no temporary file). */
static int entries(const char *dir)
{
	char cmd[4200];
	snprintf(cmd, sizeof cmd, "ls -A '%s' | wc -l", dir);
	FILE *p = popen(cmd, "r");
	int n = -1;
	ck_assert(p && fscanf(p, "%d", &n) == 1);
	pclose(p);
	return n;
}

START_TEST(file_write_new_and_replace_keeps_mode)
{
	const char *dir = tu_tmpdir();
	const char *p = in_dir(0, dir, "out.bin");
	sb_error err = {0};
	ck_assert_int_eq(sb_file_write(p, "first", 5, &err), 0);
	ck_assert_int_eq(chmod(p, 0600), 0);
	ck_assert_int_eq(sb_file_write(p, "second!", 7, &err), 0);
	struct stat st;
	ck_assert_int_eq(stat(p, &st), 0);
	ck_assert_int_eq(st.st_mode & 07777, 0600);
	size_t len;
	char *got = slurp(p, &len);
	ck_assert_uint_eq(len, 7);
	ck_assert_str_eq(got, "second!");
	free(got);
	ck_assert_int_eq(entries(dir), 1);
}
END_TEST

START_TEST(file_write_follows_symlink_to_regular_file)
{
	const char *dir = tu_tmpdir();
	const char *real = in_dir(0, dir, "real.txt");
	const char *link = in_dir(1, dir, "link.txt");
	sb_error err = {0};
	ck_assert_int_eq(sb_file_write(real, "old", 3, &err), 0);
	ck_assert_int_eq(symlink("real.txt", link), 0);
	ck_assert_int_eq(sb_file_write(link, "new", 3, &err), 0);
	struct stat st;
	ck_assert_int_eq(lstat(link, &st), 0);
	ck_assert(S_ISLNK(st.st_mode));   /* the link stays a link */
	size_t len;
	char *got = slurp(real, &len);
	ck_assert_str_eq(got, "new");
	free(got);
	ck_assert_int_eq(entries(dir), 2);
}
END_TEST

/* Each refusal names the path, says what it is, and leaves it as it was. */
START_TEST(file_write_refuses_non_regular_targets)
{
	const char *dir = tu_tmpdir();
	const char *fifo = in_dir(0, dir, "fifo");
	const char *sub = in_dir(1, dir, "subdir");
	const char *dangling = in_dir(2, dir, "dangling");
	const char *to_fifo = in_dir(3, dir, "to-fifo");
	ck_assert_int_eq(mkfifo(fifo, 0644), 0);
	ck_assert_int_eq(mkdir(sub, 0755), 0);
	ck_assert_int_eq(symlink("nowhere", dangling), 0);
	ck_assert_int_eq(symlink("fifo", to_fifo), 0);
	struct { const char *path, *word; } cases[] = {
		{fifo, "FIFO"}, {sub, "directory"}, {"/dev/null", "device"},
		{dangling, "link"}, {to_fifo, "FIFO"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		sb_error err = {0};
		ck_assert_int_eq(sb_file_write(cases[i].path, "x", 1, &err), SB_ERR_IO);
		ck_assert_msg(strstr(err.msg, cases[i].path) && strstr(err.msg, cases[i].word),
		              "%s: %s", cases[i].path, err.msg);
	}
	struct stat st;
	ck_assert_int_eq(lstat(fifo, &st), 0);
	ck_assert(S_ISFIFO(st.st_mode));
	ck_assert_int_eq(lstat(dangling, &st), 0);
	ck_assert(S_ISLNK(st.st_mode));
	ck_assert_int_eq(lstat("/dev/null", &st), 0);
	ck_assert(S_ISCHR(st.st_mode));
	ck_assert_int_eq(entries(dir), 4);
	sb_error err = {0};
	ck_assert_int_eq(sb_file_write("", "x", 1, &err), SB_ERR_ARG);
	ck_assert(strstr(err.msg, "empty"));
}
END_TEST

START_TEST(file_out_abort_leaves_old_file)
{
	const char *dir = tu_tmpdir();
	const char *p = in_dir(0, dir, "keep");
	sb_error err = {0};
	ck_assert_int_eq(sb_file_write(p, "old", 3, &err), 0);
	sb_file_out o;
	ck_assert_int_eq(sb_file_out_open(&o, p, &err), 0);
	fputs("half", o.f);
	fflush(o.f);
	ck_assert_int_eq(entries(dir), 2);
	sb_file_out_abort(&o);
	sb_file_out_abort(&o);   /* released: a second abort is harmless */
	size_t len;
	char *got = slurp(p, &len);
	ck_assert_str_eq(got, "old");
	free(got);
	ck_assert_int_eq(entries(dir), 1);
}
END_TEST

START_TEST(file_read_limit_regular_and_pipe)
{
	const char *dir = tu_tmpdir();
	const char *p = in_dir(0, dir, "ten");
	sb_error err = {0};
	ck_assert_int_eq(sb_file_write(p, "0123456789", 10, &err), 0);
	char *buf = NULL;
	size_t len = 0;
	ck_assert_int_eq(sb_file_read(p, 10, "a thing", &buf, &len, &err), 0);
	ck_assert_uint_eq(len, 10);
	ck_assert_int_eq(buf[10], 0);
	free(buf);
	buf = NULL;
	ck_assert_int_eq(sb_file_read(p, 9, "a thing", &buf, &len, &err), SB_ERR_FORMAT);
	ck_assert(strstr(err.msg, p) && strstr(err.msg, "9 bytes") && strstr(err.msg, "a thing"));
	ck_assert_ptr_null(buf);
	/* An endless source stops one byte past the limit. */
	ck_assert_int_eq(sb_file_read("/dev/zero", 1 << 20, "a thing", &buf, &len, &err),
	                 SB_ERR_FORMAT);
	ck_assert(strstr(err.msg, "/dev/zero") && strstr(err.msg, "1048576"));
	int fds[2];
	ck_assert_int_eq(pipe(fds), 0);
	ck_assert_int_eq(write(fds[1], "abcdef", 6), 6);
	close(fds[1]);
	ck_assert_int_eq(sb_file_read_fd(fds[0], "pipe", 5, "a thing", &buf, &len, &err),
	                 SB_ERR_FORMAT);
	close(fds[0]);
	ck_assert_int_eq(sb_file_read(dir, 100, "a thing", &buf, &len, &err), SB_ERR_IO);
	ck_assert(strstr(err.msg, "directory"));
	ck_assert_int_eq(sb_file_read("", 100, "a thing", &buf, &len, &err), SB_ERR_ARG);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("file");
	TCase *tc = tcase_create("file");
	tcase_add_test(tc, file_write_new_and_replace_keeps_mode);
	tcase_add_test(tc, file_write_follows_symlink_to_regular_file);
	tcase_add_test(tc, file_write_refuses_non_regular_targets);
	tcase_add_test(tc, file_out_abort_leaves_old_file);
	tcase_add_test(tc, file_read_limit_regular_and_pipe);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
