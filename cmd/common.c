/* common.c - see common.h. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

/* Where the bundled model is looked for (meson sets these): the source and
 * build directories of an uninstalled build, the installed models
 * directory, and that directory relative to the installed binary's. */
#ifndef SB_SOURCE_ROOT
#define SB_SOURCE_ROOT "."
#endif
#ifndef SB_BUILD_ROOT
#define SB_BUILD_ROOT "build"
#endif
#ifndef SB_MODELS_DIR
#define SB_MODELS_DIR "/usr/local/share/seqboat/models"
#endif
#ifndef SB_MODELS_DIR_FROM_BIN
#define SB_MODELS_DIR_FROM_BIN "../share/seqboat/models"
#endif
#ifndef SB_BUNDLED_MODEL
#define SB_BUNDLED_MODEL "sotu-small"
#endif

static char exe_dir[PATH_MAX];

/* The weights stay memory-mapped; a model file truncated or rewritten in
 * place while a run reads it makes the next read of a lost page a SIGBUS.
 * The handler says which file in one line and exits with the I/O status.
 * Like a signal flag, the line it prints is process-wide: it is written
 * before the mapping exists (cli_load_model) and only read here. */
static char bus_msg[PATH_MAX + 160] =
	"seqboat: a memory-mapped model file changed while in use (truncated or rewritten)\n";

static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
	(void)sig;
	(void)si;
	(void)ctx;
	ssize_t w = write(STDERR_FILENO, bus_msg, strlen(bus_msg));
	(void)w;
	_exit(CLI_EXIT_IO);
}

void cli_init(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
	char buf[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
	if (n > 0) {
		buf[n] = 0;
		char *slash = strrchr(buf, '/');
		if (slash) {
			*slash = 0;
			snprintf(exe_dir, sizeof exe_dir, "%s", buf);
		}
	}
}

void cli_error(const char *fmt, ...)
{
	va_list ap;
	fflush(stdout);
	fputs("seqboat: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

void cli_warn(const char *fmt, ...)
{
	va_list ap;
	fflush(stdout);
	fputs("seqboat: warning: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

int cli_exit_status(int code)
{
	switch (code) {
	case SB_OK: return CLI_EXIT_OK;
	case SB_ERR_ARG: return CLI_EXIT_USAGE;
	case SB_ERR_FORMAT: return CLI_EXIT_DATA;
	case SB_ERR_UNSUPPORTED: return CLI_EXIT_DATA;
	case SB_ERR_IO: return CLI_EXIT_IO;
	default: return CLI_EXIT_SOFTWARE;
	}
}

int cli_fail(const sb_error *err)
{
	cli_error("%s", err->msg);
	return cli_exit_status(err->code);
}

bool cli_parse_long(const char *flag, const char *s, long min, long max, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (!*s || *end || errno == ERANGE) {
		cli_error("%s: expected an integer, got '%s'", flag, s);
		return false;
	}
	if (v < min || v > max) {
		cli_error("%s: %ld is out of range (expected %ld to %ld)", flag, v, min, max);
		return false;
	}
	*out = v;
	return true;
}

bool cli_parse_int(const char *flag, const char *s, int min, int max, int *out)
{
	long v;
	if (!cli_parse_long(flag, s, min, max, &v))
		return false;
	*out = (int)v;
	return true;
}

bool cli_parse_float(const char *flag, const char *s, double min, double max, float *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (!*s || *end || errno == ERANGE || !isfinite(v)) {
		cli_error("%s: expected a number, got '%s'", flag, s);
		return false;
	}
	if (v < min || v > max) {
		cli_error("%s: %g is out of range (expected %g to %g)", flag, v, min, max);
		return false;
	}
	*out = (float)v;
	return true;
}

bool cli_parse_u64(const char *flag, const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	if (!*s || *s == '-') {
		cli_error("%s: expected a non-negative integer, got '%s'", flag, s);
		return false;
	}
	unsigned long long v = strtoull(s, &end, 10);
	if (*end || errno == ERANGE) {
		cli_error("%s: expected a non-negative integer, got '%s'", flag, s);
		return false;
	}
	*out = v;
	return true;
}

int cli_cores(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
		return CPU_COUNT(&set);
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int)n : 1;
}

/* More threads than cores never helps: the pool's workers spin and
 * yield in turn, so -t 64 on 2 cores ran 100 times slower than -t 2. */
bool cli_parse_threads(const char *s, int *out)
{
	int v;
	if (!cli_parse_int("--threads", s, 0, INT_MAX, &v))
		return false;
	int cores = cli_cores();
	if (v == 0) {
		v = cores;
	} else if (v > cores) {
		cli_warn("--threads %d: this process may run on %d core%s; using %d (more threads "
		         "than cores only slow it down)", v, cores, cores == 1 ? "" : "s", cores);
		v = cores;
	}
	*out = v;
	return true;
}

bool cli_parse_act_bias(const char *s, float *out)
{
	return cli_parse_float("--act-bias", s, -1e4, 1e4, out);
}

int cli_no_operands(const char *cmd, int argc, char **argv)
{
	if (optind < argc) {
		cli_error("%s: unexpected argument '%s'", cmd, argv[optind]);
		return CLI_EXIT_USAGE;
	}
	return 0;
}

/* Whether dir holds a model (its config.yaml is readable); if so, copies
 * its canonical path into buf (size n). */
static bool model_at(const char *dir, char *buf, size_t n)
{
	char probe[PATH_MAX + 96];
	if (snprintf(probe, sizeof probe, "%s/config.yaml", dir) >= (int)sizeof probe ||
	    access(probe, R_OK) != 0)
		return false;
	/* show /x/models/m, not /x/bin/../share/seqboat/models/m */
	char *real = realpath(dir, NULL);
	snprintf(buf, n, "%s", real && strlen(real) < n ? real : dir);
	free(real);
	return true;
}

/* Whether this process runs the binary the build directory made. */
static bool running_uninstalled(void)
{
	char *build = realpath(SB_BUILD_ROOT, NULL);
	bool same = build && exe_dir[0] && strcmp(build, exe_dir) == 0;
	free(build);
	return same;
}

const char *cli_default_model_dir(void)
{
	static char buf[PATH_MAX + 64];
	const char *env = getenv("SEQBOAT_MODEL");
	if (env && *env)
		return env;
	char cand[PATH_MAX + 64];
	/* The binary in the build directory uses the source tree's model. */
	bool uninstalled = running_uninstalled();
	snprintf(cand, sizeof cand, "%s/models/" SB_BUNDLED_MODEL, SB_SOURCE_ROOT);
	if (uninstalled && model_at(cand, buf, sizeof buf))
		return buf;
	/* An installed binary: the data directory relative to the binary
	 * (an installation moved, or staged under DESTDIR), then the one it
	 * was configured for. */
	if (exe_dir[0] && SB_MODELS_DIR_FROM_BIN[0]) {
		snprintf(cand, sizeof cand, "%s/%s/" SB_BUNDLED_MODEL, exe_dir, SB_MODELS_DIR_FROM_BIN);
		if (model_at(cand, buf, sizeof buf))
			return buf;
	}
	if (model_at(SB_MODELS_DIR "/" SB_BUNDLED_MODEL, buf, sizeof buf))
		return buf;
	/* Nothing found: name the path this binary was meant to use, so that
	 * the load error says where the model was looked for. */
	if (uninstalled)
		snprintf(buf, sizeof buf, "%s/models/" SB_BUNDLED_MODEL, SB_SOURCE_ROOT);
	else
		snprintf(buf, sizeof buf, "%s", SB_MODELS_DIR "/" SB_BUNDLED_MODEL);
	return buf;
}

int cli_load_model(const char *dir, sb_model **model, sb_tokenizer **tok,
                   sb_bytes_mode bytes)
{
	sb_error err = {0};
	const char *d = dir ? dir : cli_default_model_dir();
	/* Set before the file is mapped: the SIGBUS handler reads it. */
	char one_line[PATH_MAX];
	snprintf(one_line, sizeof one_line, "%s", d);
	for (char *q = one_line; *q; q++)
		if ((unsigned char)*q < 0x20)
			*q = '?';
	snprintf(bus_msg, sizeof bus_msg,
	         "seqboat: %s/model.safetensors changed while in use (truncated or rewritten under a running seqboat)\n",
	         one_line);
	*model = sb_model_load(d, &err);
	if (!*model)
		return cli_fail(&err);
	if (tok) {
		*tok = sb_tokenizer_load_for_model(*model, bytes, &err);
		if (!*tok) {
			sb_model_free(*model);
			*model = NULL;
			return cli_fail(&err);
		}
	}
	return 0;
}

void cli_skip_bom(char *buf, size_t *len)
{
	if (*len >= 3 && !memcmp(buf, CLI_UTF8_BOM, 3)) {
		memmove(buf, buf + 3, *len - 3 + 1);
		*len -= 3;
	}
}

int cli_read_file(const char *path, size_t limit, const char *what, char **buf, size_t *len)
{
	sb_error err = {0};
	int rc = strcmp(path, "-") ? sb_file_read(path, limit, what, buf, len, &err)
	                           : sb_file_read_fd(0, "standard input", limit, what, buf, len, &err);
	if (rc)
		return cli_fail(&err);
	cli_skip_bom(*buf, len);
	return 0;
}

int cli_parse_ids(const char *flag, const char *s, int32_t **ids, size_t *n)
{
	size_t cap = 16, k = 0;
	int32_t *v = malloc(cap * sizeof *v);
	if (!v) {
		cli_error("out of memory");
		return CLI_EXIT_SOFTWARE;
	}
	const char *p = s;
	for (;;) {
		while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n')
			p++;
		if (!*p)
			break;
		char *end;
		errno = 0;
		long x = strtol(p, &end, 10);
		if (end == p || errno == ERANGE || x < 0 || x > INT32_MAX ||
		    (*end && *end != ' ' && *end != ',' && *end != '\t' && *end != '\n')) {
			cli_error("%s: expected token ids (non-negative integers separated by spaces or commas) at '%.20s'",
			          flag, p);
			free(v);
			return CLI_EXIT_USAGE;
		}
		if (k == cap) {
			int32_t *q = realloc(v, 2 * cap * sizeof *v);
			if (!q) {
				free(v);
				cli_error("out of memory");
				return CLI_EXIT_SOFTWARE;
			}
			v = q;
			cap *= 2;
		}
		v[k++] = (int32_t)x;
		p = end;
	}
	*ids = v;
	*n = k;
	return 0;
}

int cli_bad_option(const char *cmd, char **argv)
{
	/* A long option is the argument just consumed; a short one is in
	 * optopt (getopt also sets optopt for a long option lacking its value,
	 * to the option's code, so the argument text is preferred). */
	const char *arg = optind > 0 ? argv[optind - 1] : "";
	if (!strncmp(arg, "--", 2) || !optopt || optopt == '?')
		cli_error("%s: unknown option '%s' or it lacks its value (see 'seqboat %s --help')",
		          cmd, arg, cmd);
	else
		cli_error("%s: unknown option '-%c' or it lacks its value (see 'seqboat %s --help')",
		          cmd, optopt, cmd);
	return CLI_EXIT_USAGE;
}

bool cli_isatty(FILE *f)
{
	return isatty(fileno(f));
}

const char *cli_weights_name(const sb_model *m)
{
	sb_dtype dt = sb_model_weight_dtype(m);
	/* int8 weights only exist as quantize's q8 blocks (an F16 scale per
	 * SB_Q8_BLOCK weights): the name quantize --type takes. */
	return dt == SB_DTYPE_I8 ? "q8" : sb_dtype_name(dt);
}
