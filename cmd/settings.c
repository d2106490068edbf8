/* settings.c - see settings.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "report.h"
#include "settings.h"

char *cli_settings_path(const char *out_path)
{
	size_t n = strlen(out_path);
	char *p = malloc(n + sizeof ".settings.json");
	if (p) {
		memcpy(p, out_path, n);
		memcpy(p + n, ".settings.json", sizeof ".settings.json");
	}
	return p;
}

uint64_t cli_fnv64(uint64_t h, const void *p, size_t n)
{
	const unsigned char *s = p;
	for (size_t i = 0; i < n; i++) {
		h ^= s[i];
		h *= UINT64_C(0x100000001b3);
	}
	return h;
}

int cli_settings_write(const char *path, const json_t *settings)
{
	cli_outfile out;
	int rc = cli_outfile_open(&out, path);
	if (rc)
		return rc;
	if (json_dumpf(settings, out.f, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0 ||
	    fputc('\n', out.f) == EOF) {
		cli_error("%s: write error: %s", path, strerror(errno));
		cli_outfile_abort(&out);
		return CLI_EXIT_IO;
	}
	return cli_outfile_commit(&out);
}

/* Appends "key X (was Y)" to a message buffer. */
static void say_diff(char *msg, size_t cap, const char *key, const json_t *now, const json_t *then)
{
	char *a = now ? json_dumps(now, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
	char *b = then ? json_dumps(then, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
	size_t len = strlen(msg);
	snprintf(msg + len, cap - len, "%s%s %s (was %s)", len ? ", " : "", key, a ? a : "absent",
	         b ? b : "absent");
	free(a);
	free(b);
}

int cli_settings_check(const char *path, const json_t *settings, bool force)
{
	json_error_t je;
	FILE *f = fopen(path, "rb");
	if (!f) {
		if (errno == ENOENT)
			return 0;
		cli_error("%s: cannot open: %s", path, strerror(errno));
		return CLI_EXIT_IO;
	}
	json_t *then = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
	fclose(f);
	if (!json_is_object(then)) {
		json_decref(then);
		cli_error("%s: not the settings of a seqboat complete run (%s, line %d)", path, je.text,
		          je.line);
		return CLI_EXIT_DATA;
	}
	char msg[2048] = "";
	const char *k;
	json_t *v;
	json_object_foreach((json_t *)settings, k, v) {
		json_t *w = json_object_get(then, k);
		if (!w || !json_equal(v, w))
			say_diff(msg, sizeof msg, k, v, w);
	}
	json_object_foreach(then, k, v) {
		if (!json_object_get(settings, k))
			say_diff(msg, sizeof msg, k, NULL, v);
	}
	json_decref(then);
	if (!msg[0])
		return 0;
	if (force) {
		fprintf(stderr, "seqboat: warning: --resume-force: continuing a run with other settings: %s\n", msg);
		return 0;
	}
	cli_error("%s: --resume with other settings or input than the run that wrote the records: %s "
	          "(pass --resume-force to mix them anyway, or choose another -o)", path, msg);
	return CLI_EXIT_USAGE;
}
