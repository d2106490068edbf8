/*
 * replay.c - runs a fuzz target over files without libFuzzer: each argument
 * is a file or a directory of files (a corpus), and every file is one input.
 * Built with any compiler, so CI replays the corpora on every run; a crash
 * or a broken invariant aborts and fails the test.
 */
#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

static int replay_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "%s: cannot open: %s\n", path, strerror(errno));
		return 1;
	}
	size_t cap = 4096, n = 0;
	uint8_t *buf = malloc(cap);
	int rc = 0;
	for (;;) {
		if (!buf) {
			rc = 1;
			break;
		}
		n += fread(buf + n, 1, cap - n, f);
		if (n < cap)
			break;
		uint8_t *q = realloc(buf, cap * 2);
		if (!q) {
			free(buf);
			buf = NULL;
			continue;
		}
		buf = q;
		cap *= 2;
	}
	if (ferror(f)) {
		fprintf(stderr, "%s: read error\n", path);
		rc = 1;
	}
	fclose(f);
	if (!rc) {
		/* An exact-size copy, so the sanitizers see reads past the end. */
		uint8_t *exact = malloc(n ? n : 1);
		if (!exact) {
			rc = 1;
		} else {
			memcpy(exact, buf, n);
			LLVMFuzzerTestOneInput(exact, n);
			free(exact);
		}
	}
	free(buf);
	return rc;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int replay_dir(const char *dir, size_t *count)
{
	DIR *d = opendir(dir);
	if (!d) {
		fprintf(stderr, "%s: cannot open: %s\n", dir, strerror(errno));
		return 1;
	}
	char **names = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			char **q = realloc(names, cap * sizeof *q);
			if (!q) {
				rc = 1;
				break;
			}
			names = q;
		}
		size_t len = strlen(dir) + strlen(e->d_name) + 2;
		if (!(names[n] = malloc(len))) {
			rc = 1;
			break;
		}
		snprintf(names[n++], len, "%s/%s", dir, e->d_name);
	}
	closedir(d);
	if (names)
		qsort(names, n, sizeof *names, cmp_names);
	for (size_t i = 0; i < n; i++) {
		if (!rc)
			rc = replay_file(names[i]);
		free(names[i]);
	}
	free(names);
	*count += n;
	return rc;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
		return 2;
	}
	size_t count = 0;
	for (int i = 1; i < argc; i++) {
		struct stat st;
		if (stat(argv[i], &st) < 0) {
			fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
			return 1;
		}
		int rc = S_ISDIR(st.st_mode) ? replay_dir(argv[i], &count)
		                             : (count++, replay_file(argv[i]));
		if (rc)
			return rc;
	}
	if (!count) {
		fprintf(stderr, "no inputs to replay\n");
		return 1;
	}
	printf("replayed %zu inputs\n", count);
	return 0;
}
