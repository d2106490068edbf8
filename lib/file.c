/*
 * file.c - whole-file reads with a limit, and files replaced atomically
 * (a temporary file next to the target, fsync, rename) after checking what
 * the target is: a symbolic link is followed to the regular file it names,
 * anything else that is not a regular file (a directory, a FIFO, a device,
 * a socket) is refused, and a replaced file keeps its mode.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "seqboat.h"

/* What a non-regular file is, for messages. */
static const char *kind_of(mode_t m)
{
	if (S_ISDIR(m))
		return "a directory";
	if (S_ISFIFO(m))
		return "a FIFO (named pipe)";
	if (S_ISCHR(m))
		return "a character device";
	if (S_ISBLK(m))
		return "a block device";
	if (S_ISSOCK(m))
		return "a socket";
	return "not a regular file";
}

int sb_file_read_fd(int fd, const char *label, size_t limit, const char *what,
                    char **buf, size_t *len, sb_error *err)
{
	struct stat st;
	if (fstat(fd, &st) == 0) {
		if (S_ISDIR(st.st_mode))
			return sb_error_set(err, SB_ERR_IO, "%s: is a directory, expected %s", label, what);
		if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > limit)
			return sb_error_set(err, SB_ERR_FORMAT,
			                    "%s: %llu bytes, larger than %zu bytes (the limit for %s)",
			                    label, (unsigned long long)st.st_size, limit, what);
	}
	/* Grow by doubling up to one byte past the limit: reading that byte
	 * means the file is too long, whatever fstat said (a pipe, /dev/zero,
	 * a file that grew). */
	size_t cap = 1 << 16, n = 0;
	if (cap > limit + 1)
		cap = limit + 1;
	char *p = malloc(cap + 1);
	if (!p)
		return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory reading the file", label);
	for (;;) {
		if (n == cap) {
			if (n > limit) {
				free(p);
				return sb_error_set(err, SB_ERR_FORMAT,
				                    "%s: larger than %zu bytes (the limit for %s)",
				                    label, limit, what);
			}
			size_t ncap = cap > (limit + 1) / 2 ? limit + 1 : cap * 2;
			char *q = realloc(p, ncap + 1);
			if (!q) {
				free(p);
				return sb_error_set(err, SB_ERR_NOMEM,
				                    "%s: out of memory reading the file (%zu bytes)", label, ncap);
			}
			p = q;
			cap = ncap;
		}
		ssize_t got = read(fd, p + n, cap - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			int e = errno;
			free(p);
			if (e == EISDIR)
				return sb_error_set(err, SB_ERR_IO, "%s: is a directory, expected %s", label, what);
			return sb_error_set(err, SB_ERR_IO, "%s: read error: %s", label, strerror(e));
		}
		if (got == 0)
			break;
		n += (size_t)got;
	}
	if (n > limit) {
		free(p);
		return sb_error_set(err, SB_ERR_FORMAT, "%s: larger than %zu bytes (the limit for %s)",
		                    label, limit, what);
	}
	p[n] = 0;
	*buf = p;
	*len = n;
	return 0;
}

int sb_file_read(const char *path, size_t limit, const char *what, char **buf, size_t *len,
                 sb_error *err)
{
	if (!path || !*path)
		return sb_error_set(err, SB_ERR_ARG, "empty file name, expected %s", what);
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return sb_error_set(err, SB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
	int rc = sb_file_read_fd(fd, path, limit, what, buf, len, err);
	close(fd);
	return rc;
}

int sb_file_target(const char *path, bool dir, char **target, sb_error *err)
{
	*target = NULL;
	if (!path || !*path)
		return sb_error_set(err, SB_ERR_ARG, "empty output file name");
	const char *want = dir ? "a directory" : "a regular file";
	struct stat st;
	if (lstat(path, &st) != 0) {
		if (errno != ENOENT)
			return sb_error_set(err, SB_ERR_IO, "%s: cannot write there: %s", path,
			                    strerror(errno));
		*target = strdup(path);
	} else if (S_ISLNK(st.st_mode)) {
		char *real = realpath(path, NULL);
		if (!real)
			return sb_error_set(err, SB_ERR_IO,
			                    "%s: a symbolic link that cannot be followed (%s); not replacing it",
			                    path, strerror(errno));
		const char *what = NULL;
		if (stat(real, &st) != 0)
			what = strerror(errno);
		else if (dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode))
			what = S_ISREG(st.st_mode) ? "a regular file" : kind_of(st.st_mode);
		if (what) {
			sb_error_set(err, SB_ERR_IO,
			             "%s: a symbolic link to %s, which is %s; expected %s, not replacing it",
			             path, real, what, want);
			free(real);
			return SB_ERR_IO;
		}
		*target = real;
	} else if (dir ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode)) {
		*target = strdup(path);
	} else {
		return sb_error_set(err, SB_ERR_IO, "%s: is %s, expected %s; not replacing it", path,
		                    S_ISREG(st.st_mode) ? "a regular file" : kind_of(st.st_mode), want);
	}
	if (!*target)
		return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", path);
	return 0;
}

int sb_file_out_open(sb_file_out *o, const char *path, sb_error *err)
{
	memset(o, 0, sizeof *o);
	int rc = sb_file_target(path, false, &o->target, err);
	if (rc)
		return rc;
	struct stat st;
	bool keep_mode = stat(o->target, &st) == 0;
	size_t n = strlen(o->target) + 40;
	o->label = strdup(path);
	o->tmp = malloc(n);
	if (!o->label || !o->tmp) {
		sb_file_out_abort(o);
		return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", path);
	}
	/* O_EXCL with mode 0666 lets the umask decide a new file's mode, as a
	 * plain fopen would; an existing file's mode is copied below. */
	int fd = -1;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	unsigned long salt = (unsigned long)ts.tv_nsec ^ ((unsigned long)getpid() << 16);
	for (int tries = 0; fd < 0 && tries < 100; tries++) {
		snprintf(o->tmp, n, "%s.tmp-%lx", o->target, salt + (unsigned long)tries * 7919u);
		fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
		if (fd < 0 && errno != EEXIST)
			break;
	}
	if (fd < 0) {
		rc = sb_error_set(err, SB_ERR_IO, "%s: cannot create a temporary file next to it: %s",
		                  path, strerror(errno));
		free(o->tmp);
		o->tmp = NULL;
		sb_file_out_abort(o);
		return rc;
	}
	if (keep_mode)
		(void)fchmod(fd, st.st_mode & 07777);
	if (!(o->f = fdopen(fd, "wb"))) {
		rc = sb_error_set(err, SB_ERR_IO, "%s: cannot open: %s", o->tmp, strerror(errno));
		close(fd);
		sb_file_out_abort(o);
		return rc;
	}
	return 0;
}

int sb_file_out_commit(sb_file_out *o, sb_error *err)
{
	int rc = 0;
	if (fflush(o->f) != 0 || ferror(o->f) || fsync(fileno(o->f)) != 0)
		rc = sb_error_set(err, SB_ERR_IO, "%s: write error: %s", o->label,
		                  errno ? strerror(errno) : "unknown");
	if (fclose(o->f) != 0 && !rc)
		rc = sb_error_set(err, SB_ERR_IO, "%s: write error: %s", o->label, strerror(errno));
	o->f = NULL;
	if (!rc && rename(o->tmp, o->target) != 0)
		rc = sb_error_set(err, SB_ERR_IO, "%s: cannot rename %s over it: %s", o->label, o->tmp,
		                  strerror(errno));
	if (!rc) {
		/* The rename is durable once the directory is synced. */
		char *slash = strrchr(o->target, '/');
		char dir[PATH_MAX];
		if (!slash)
			snprintf(dir, sizeof dir, ".");
		else
			snprintf(dir, sizeof dir, "%.*s", (int)(slash == o->target ? 1 : slash - o->target),
			         o->target);
		int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd >= 0) {
			(void)fsync(dfd);
			close(dfd);
		}
		free(o->tmp);
		o->tmp = NULL;
	}
	sb_file_out_abort(o);
	return rc;
}

void sb_file_out_abort(sb_file_out *o)
{
	if (o->f)
		fclose(o->f);
	if (o->tmp)
		unlink(o->tmp);
	free(o->tmp);
	free(o->target);
	free(o->label);
	memset(o, 0, sizeof *o);
}

int sb_file_write(const char *path, const void *data, size_t len, sb_error *err)
{
	sb_file_out o;
	int rc = sb_file_out_open(&o, path, err);
	if (rc)
		return rc;
	if (len && fwrite(data, 1, len, o.f) != len) {
		rc = sb_error_set(err, SB_ERR_IO, "%s: write error: %s", path, strerror(errno));
		sb_file_out_abort(&o);
		return rc;
	}
	return sb_file_out_commit(&o, err);
}
