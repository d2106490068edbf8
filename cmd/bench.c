/* bench.c - `seqboat bench`: prefill and generation speed, and memory,
 * at any depth, in llama-bench's terms (tests ppN, tgN, "tgN @ dD"; the
 * same flags and output field names), so that its users can read the
 * numbers, plus what shows SeqBoat's constant state: the state bytes, the
 * resident memory after each test and its peak, and the routers'
 * activation rates. Depth is reached by real prefill of random tokens in
 * pieces, so a depth of a million tokens costs time, never memory. */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "build-info.h"
#include "commands.h"
#include "common.h"
#include "report.h"

static const char usage_text[] =
	"usage: seqboat bench [-m DIR] [-p N,...] [-n N,...] [-pg PP,TG] [-d N,...]\n"
	"                     [-t N,...] [-r N] [-o md|csv|json|jsonl|sql] [--plot FILE.svg]\n"
	"                     [--act-bias X] [--seed N] [--no-warmup] [--progress]\n"
	"                     [--device D]\n\n"
	"Measures tokens per second as llama-bench does: test ppN prefills N random\n"
	"tokens in one call, tgN decodes N tokens one at a time (with their logits),\n"
	"ppP+tgG (-pg P,G) prefills P tokens and then decodes G, timed together\n"
	"(t/s counts P + G tokens); with a depth D the state first reads D random\n"
	"tokens (untimed, by real prefill), written \"tgN @ dD\". Each test runs once\n"
	"to warm up, then -r times from the same starting state; results are the\n"
	"mean and standard deviation. Every row also reports the state's bytes, the\n"
	"resident memory after the test and the process's peak, which stay flat as\n"
	"the depth grows. The md table ends with the build's commit and version\n"
	"(and, on a GPU, the GPU's name).\n\n"
	"A list is values and ranges separated by commas, as llama-bench takes them:\n"
	"FIRST-LAST (step 1), FIRST-LAST+STEP or FIRST-LAST*FACTOR, so\n"
	"-p 128-512+128 is 128,256,384,512 and -d 0,1000-100000*10 is 0,1000,10000,100000.\n\n"
	"  -m, --model DIR         model directory (default: the bundled model)\n"
	"  -p, --n-prompt N,...    prefill sizes (default 512; 0 skips)\n"
	"  -n, --n-gen N,...       generation lengths (default 128; 0 skips)\n"
	"  -pg, --pg PP,TG         a prefill-then-generate test (repeatable; default none)\n"
	"  -d, --n-depth N,...     depths (default 0)\n"
	"  -t, --threads N,...     thread counts (default and 0: all cores; a count above\n"
	"                          the cores is measured as asked, with a warning)\n"
	"      --device D          compute on D: cpu (default), or cuda / cuda:N where this\n"
	"                          build has the CUDA backend (the md table's threads column\n"
	"                          then names the backend; gpu_info names the GPU)\n"
	"  -r, --repetitions N     timed runs per test (default 5)\n"
	"  -o, --output FORMAT     md (default), csv, json, jsonl or sql, on standard output\n"
	"      --plot FILE.svg     draw tokens/s and memory against depth (log scale); with\n"
	"                          one depth, a bar per test\n"
	"      --act-bias X        shift the routers: positive = fewer activations (default 0)\n"
	"      --seed N            seed of the random tokens (default 1)\n"
	"      --no-warmup         skip the warm-up run\n"
	"      --progress          print a line on standard error as each test and run\n"
	"                          starts (a terminal shows a progress line without it)\n"
	"  -h, --help              show this help\n\n"
	"Fields of csv/json/jsonl/sql: llama-bench's (build_commit, model_filename,\n"
	"model_type, model_size, model_n_params, n_threads, n_prompt, n_gen, n_depth,\n"
	"test_time, avg_ns, stddev_ns, avg_ts, stddev_ts, samples_ns, samples_ts, ...)\n"
	"and state_bytes, window, act_bias, act_rate (per layer: the fraction of the\n"
	"timed tokens each router sent to attention), rss_bytes (after the test)\n"
	"and peak_rss_bytes (the process's highest resident memory so far). sql is\n"
	"a CREATE TABLE IF NOT EXISTS test (...) and one INSERT per test, for sqlite3.\n"
	"The md table fits 120 columns: the model column holds the parameter count\n"
	"and weight type, and is shortened when the test names are long.\n";

enum { OPT_PLOT = 256, OPT_ACT_BIAS, OPT_SEED, OPT_NO_WARMUP, OPT_PG, OPT_PROGRESS, OPT_DEVICE };
enum bench_format { FMT_MD, FMT_CSV, FMT_JSON, FMT_JSONL, FMT_SQL };

/* Depth is read in pieces of this many tokens, so that the token buffer
 * does not grow with the depth. */
#define FILL_PIECE 4096

typedef struct bench_list {
	long *v;                 /* (n) */
	size_t n;
} bench_list;

typedef struct bench_result {
	bool is_tg;
	bool is_pg;              /* prefill n_prompt, then decode n_gen */
	long n_prompt, n_gen, n_depth;
	int threads;
	char test_time[32];      /* ISO 8601, UTC */
	uint64_t *samples_ns;    /* (reps) */
	double avg_ns, stddev_ns, avg_ts, stddev_ts;
	double *act_rate;        /* (L) */
	size_t rss_bytes, peak_rss_bytes;
} bench_result;

typedef struct bench {
	const sb_model *m;
	const sb_config *c;
	const char *model_path;
	char model_type[96];
	char cpu_info[256];
	const char *device;      /* --device, NULL: the CPU */
	char backend[16];        /* "CPU", "CUDA" */
	bool gpu;                /* not the CPU */
	char gpu_info[128];      /* the GPU's name, or "" */
	enum bench_format fmt;
	int reps;
	bool warmup;
	float act_bias;
	uint64_t rng;
	sb_state *st;            /* the state a test runs on */
	sb_state *snap;          /* the state after the depth, each run's start */
	int32_t *toks;           /* (cap_toks) */
	size_t cap_toks;
	float *logits;           /* (V) */
	bench_result *res;       /* (n_res) */
	size_t n_res, cap_res;
	size_t n_printed;
	cli_progress prog;
	bool progress;           /* --progress: a line per test and run */
	size_t n_tests, test_no; /* planned tests, the current one (1-based) */
	int model_w, test_w;     /* md column widths */
} bench;

/* Appends v to l (growing it). */
static bool list_push(bench_list *l, size_t *cap, long v)
{
	if (l->n == *cap) {
		size_t nc = *cap ? 2 * *cap : 8;
		long *p = realloc(l->v, nc * sizeof *p);
		if (!p)
			return false;
		l->v = p;
		*cap = nc;
	}
	l->v[l->n++] = v;
	return true;
}

/* One element of a list: N, FIRST-LAST, FIRST-LAST+STEP or
 * FIRST-LAST*FACTOR (llama-bench's syntax). */
static int parse_element(const char *flag, const char *e, long min, long max, bench_list *l,
                         size_t *cap)
{
	char first[64], last[64], step[64];
	const char *dash = strchr(e + (*e == '-'), '-');
	if (!dash) {
		long v;
		if (!cli_parse_long(flag, e, min, max, &v))
			return CLI_EXIT_USAGE;
		return list_push(l, cap, v) ? 0 : CLI_EXIT_SOFTWARE;
	}
	const char *op = strpbrk(dash + 1, "+*");
	size_t n1 = (size_t)(dash - e), n2 = op ? (size_t)(op - dash - 1) : strlen(dash + 1);
	if (n1 >= sizeof first || n2 >= sizeof last || (op && strlen(op + 1) >= sizeof step)) {
		cli_error("%s: '%.20s...' is not a number or a range", flag, e);
		return CLI_EXIT_USAGE;
	}
	memcpy(first, e, n1);
	first[n1] = 0;
	memcpy(last, dash + 1, n2);
	last[n2] = 0;
	snprintf(step, sizeof step, "%s", op ? op + 1 : "1");
	long a, b, k;
	if (!cli_parse_long(flag, first, min, max, &a) || !cli_parse_long(flag, last, min, max, &b) ||
	    !cli_parse_long(flag, step, 1, max > 1 ? max : 1, &k))
		return CLI_EXIT_USAGE;
	if (b < a) {
		cli_error("%s: range '%s': %ld is below %ld (expected FIRST-LAST with FIRST <= LAST)",
		          flag, e, b, a);
		return CLI_EXIT_USAGE;
	}
	bool mul = op && *op == '*';
	if (mul && (k < 2 || a < 1)) {
		cli_error("%s: range '%s': a factor needs FIRST >= 1 and FACTOR >= 2", flag, e);
		return CLI_EXIT_USAGE;
	}
	for (long v = a; v <= b;) {
		if (l->n >= 4096) {
			cli_error("%s: range '%s' has more than 4096 values", flag, e);
			return CLI_EXIT_USAGE;
		}
		if (!list_push(l, cap, v))
			return CLI_EXIT_SOFTWARE;
		if (mul ? v > b / k : v > b - k)
			break;
		v = mul ? v * k : v + k;
	}
	return 0;
}

static int parse_list(const char *flag, const char *s, long min, long max, bench_list *out)
{
	bench_list l = {0};
	size_t cap = 0;
	char buf[200];
	int rc = 0;
	for (const char *p = s; !rc;) {
		const char *e = strchr(p, ',');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		if (len >= sizeof buf) {
			cli_error("%s: '%.20s...' is not a number", flag, p);
			rc = CLI_EXIT_USAGE;
			break;
		}
		memcpy(buf, p, len);
		buf[len] = 0;
		rc = parse_element(flag, buf, min, max, &l, &cap);
		if (!e)
			break;
		p = e + 1;
	}
	if (rc == CLI_EXIT_SOFTWARE)
		cli_error("out of memory");
	if (rc) {
		free(l.v);
		return rc;
	}
	free(out->v);
	*out = l;
	return 0;
}

static long list_max(const bench_list *l)
{
	long m = 0;
	for (size_t i = 0; i < l->n; i++)
		m = l->v[i] > m ? l->v[i] : m;
	return m;
}

/* xorshift64*: the random tokens only need to be cheap and reproducible. */
static void random_tokens(bench *b, int32_t *out, size_t n)
{
	const uint64_t V = (uint64_t)b->c->vocab_size;
	for (size_t i = 0; i < n; i++) {
		b->rng ^= b->rng >> 12;
		b->rng ^= b->rng << 25;
		b->rng ^= b->rng >> 27;
		out[i] = (int32_t)(((b->rng * 0x2545F4914F6CDD1Dull) >> 32) % V);
	}
}

static void read_cpu_info(char *out, size_t cap)
{
	snprintf(out, cap, "unknown");
	FILE *f = fopen("/proc/cpuinfo", "r");
	if (!f)
		return;
	char line[512];
	while (fgets(line, sizeof line, f)) {
		if (strncmp(line, "model name", 10))
			continue;
		char *v = strchr(line, ':');
		if (!v)
			break;
		v++;
		while (*v == ' ' || *v == '\t')
			v++;
		v[strcspn(v, "\n")] = 0;
		snprintf(out, cap, "%s", v);
		break;
	}
	fclose(f);
}

/* "6.74 B", "125.00 M", "36.20 K": llama-bench's params column, scaled. */
static void fmt_count(char *out, size_t cap, double v)
{
	if (v >= 1e9)
		snprintf(out, cap, "%.2f B", v / 1e9);
	else if (v >= 1e6)
		snprintf(out, cap, "%.2f M", v / 1e6);
	else if (v >= 1e3)
		snprintf(out, cap, "%.2f K", v / 1e3);
	else
		snprintf(out, cap, "%.0f", v);
}

static void fmt_bytes(char *out, size_t cap, double v)
{
	if (v >= 1024.0 * 1024 * 1024)
		snprintf(out, cap, "%.2f GiB", v / (1024.0 * 1024 * 1024));
	else if (v >= 1024.0 * 1024)
		snprintf(out, cap, "%.2f MiB", v / (1024.0 * 1024));
	else if (v >= 1024.0)
		snprintf(out, cap, "%.2f KiB", v / 1024.0);
	else
		snprintf(out, cap, "%.0f B", v);
}

static void test_name(const bench_result *r, char *out, size_t cap)
{
	int n = r->is_pg ? snprintf(out, cap, "pp%ld+tg%ld", r->n_prompt, r->n_gen)
	                 : snprintf(out, cap, "%s%ld", r->is_tg ? "tg" : "pp",
	                            r->is_tg ? r->n_gen : r->n_prompt);
	if (r->n_depth > 0 && n > 0 && (size_t)n < cap)
		snprintf(out + n, cap - (size_t)n, " @ d%ld", r->n_depth);
}

/* Mean and sample standard deviation (n - 1), as llama-bench computes. */
static void mean_sd(const double *x, int n, double *mean, double *sd)
{
	double s = 0, ss = 0;
	for (int i = 0; i < n; i++)
		s += x[i];
	*mean = s / n;
	for (int i = 0; i < n; i++)
		ss += (x[i] - *mean) * (x[i] - *mean);
	*sd = n > 1 ? sqrt(ss / (n - 1)) : 0.0;
}

static json_t *result_json(const bench *b, const bench_result *r)
{
	const size_t L = (size_t)b->c->layers;
	json_t *o = json_object(), *sns = json_array(), *sts = json_array(), *act = json_array();
	if (!o || !sns || !sts || !act) {
		json_decref(o);
		json_decref(sns);
		json_decref(sts);
		json_decref(act);
		return NULL;
	}
	const double n = (double)(r->n_gen + r->n_prompt);
	for (int i = 0; i < b->reps; i++) {
		json_array_append_new(sns, json_integer((json_int_t)r->samples_ns[i]));
		json_array_append_new(sts, json_real(n * 1e9 / (double)r->samples_ns[i]));
	}
	for (size_t l = 0; l < L; l++)
		json_array_append_new(act, json_real(r->act_rate[l]));
	json_object_set_new(o, "build_commit", json_string(SB_BUILD_COMMIT));
	json_object_set_new(o, "build_version", json_string(SB_VERSION));
	json_object_set_new(o, "cpu_info", json_string(b->cpu_info));
	json_object_set_new(o, "gpu_info", json_string(b->gpu_info));
	json_object_set_new(o, "backends", json_string(b->backend));
	json_object_set_new(o, "model_filename", json_string(b->model_path));
	json_object_set_new(o, "model_type", json_string(b->model_type));
	json_object_set_new(o, "model_size", json_integer((json_int_t)sb_model_file_bytes(b->m)));
	json_object_set_new(o, "model_n_params", json_integer((json_int_t)sb_model_n_params(b->m)));
	json_object_set_new(o, "type_weights", json_string(cli_weights_name(b->m)));
	json_object_set_new(o, "n_threads", json_integer(r->threads));
	json_object_set_new(o, "use_mmap", json_true());
	json_object_set_new(o, "n_prompt", json_integer(r->n_prompt));
	json_object_set_new(o, "n_gen", json_integer(r->n_gen));
	json_object_set_new(o, "n_depth", json_integer(r->n_depth));
	json_object_set_new(o, "test_time", json_string(r->test_time));
	json_object_set_new(o, "avg_ns", json_integer((json_int_t)llround(r->avg_ns)));
	json_object_set_new(o, "stddev_ns", json_integer((json_int_t)llround(r->stddev_ns)));
	json_object_set_new(o, "avg_ts", json_real(r->avg_ts));
	json_object_set_new(o, "stddev_ts", json_real(r->stddev_ts));
	json_object_set_new(o, "samples_ns", sns);
	json_object_set_new(o, "samples_ts", sts);
	json_object_set_new(o, "state_bytes", json_integer((json_int_t)sb_state_bytes(b->m)));
	json_object_set_new(o, "window", json_integer(b->c->window));
	json_object_set_new(o, "act_bias", json_real(b->act_bias));
	json_object_set_new(o, "act_rate", act);
	json_object_set_new(o, "rss_bytes", json_integer((json_int_t)r->rss_bytes));
	json_object_set_new(o, "peak_rss_bytes", json_integer((json_int_t)r->peak_rss_bytes));
	return o;
}

static const char *const csv_fields[] = {
	"build_commit", "build_version", "cpu_info", "gpu_info", "backends",
	"model_filename", "model_type", "model_size", "model_n_params", "type_weights",
	"n_threads", "use_mmap", "n_prompt", "n_gen", "n_depth", "test_time", "avg_ns",
	"stddev_ns", "avg_ts", "stddev_ts", "samples_ns", "samples_ts", "state_bytes",
	"window", "act_bias", "act_rate", "rss_bytes", "peak_rss_bytes",
};
#define N_CSV_FIELDS (sizeof csv_fields / sizeof csv_fields[0])

/* A JSON value as one CSV cell: quoted (doubling quotes), arrays joined
 * by spaces as llama-bench's samples are. */
static void csv_value(FILE *f, const json_t *v)
{
	fputc('"', f);
	if (json_is_array(v)) {
		for (size_t i = 0; i < json_array_size(v); i++) {
			const json_t *x = json_array_get(v, i);
			if (i)
				fputc(' ', f);
			if (json_is_integer(x))
				fprintf(f, "%lld", (long long)json_integer_value(x));
			else
				fprintf(f, "%.6g", json_real_value(x));
		}
	} else if (json_is_string(v)) {
		for (const char *s = json_string_value(v); *s; s++) {
			if (*s == '"')
				fputc('"', f);
			fputc(*s, f);
		}
	} else if (json_is_integer(v)) {
		fprintf(f, "%lld", (long long)json_integer_value(v));
	} else if (json_is_real(v)) {
		fprintf(f, "%.6f", json_real_value(v));
	} else if (json_is_boolean(v)) {
		fputs(json_is_true(v) ? "1" : "0", f);
	}
	fputc('"', f);
}

/* sqlite3 column types of csv_fields, in order: Text, Integer or Real
 * (arrays are text, as llama-bench's samples are). */
static const char csv_types[] = "TTTTTTTIITIIIIITIIRRTTIIRTII";
_Static_assert(sizeof csv_types - 1 == N_CSV_FIELDS, "a type per field");

/* A JSON value as one SQL literal. */
static void sql_value(FILE *f, const json_t *v)
{
	if (json_is_integer(v)) {
		fprintf(f, "%lld", (long long)json_integer_value(v));
	} else if (json_is_real(v)) {
		fprintf(f, "%.17g", json_real_value(v));
	} else if (json_is_boolean(v)) {
		fputs(json_is_true(v) ? "1" : "0", f);
	} else if (json_is_string(v)) {
		fputc('\'', f);
		for (const char *s = json_string_value(v); *s; s++) {
			if (*s == '\'')
				fputc('\'', f);
			fputc(*s, f);
		}
		fputc('\'', f);
	} else if (json_is_array(v)) {
		fputc('\'', f);
		for (size_t i = 0; i < json_array_size(v); i++) {
			const json_t *x = json_array_get(v, i);
			if (i)
				fputc(' ', f);
			if (json_is_integer(x))
				fprintf(f, "%lld", (long long)json_integer_value(x));
			else
				fprintf(f, "%.6g", json_real_value(x));
		}
		fputc('\'', f);
	} else {
		fputs("NULL", f);
	}
}

/* md columns after model and test: fixed widths that, with the model and
 * test columns, keep a row within 120 columns. */
#define MD_SIZE_W 10
#define MD_THREADS_W 7
#define MD_TS_W 17
#define MD_STATE_W 9
#define MD_PEAK_W 10
#define MD_ACT_W 6
#define MD_MAX_COLS 120
#define MD_MIN_MODEL_W 12

static void md_rule(int w, bool right)
{
	printf(" ");
	for (int i = 0; i < w - (right ? 1 : 0); i++)
		putchar('-');
	printf("%s |", right ? ":" : "");
}

static void print_header(bench *b)
{
	switch (b->fmt) {
	case FMT_MD: {
		/* 8 columns: "| " before each, " |" after the last, " | " between */
		int fixed = MD_SIZE_W + MD_THREADS_W + MD_TS_W + MD_STATE_W + MD_PEAK_W + MD_ACT_W + 8 * 3 + 1;
		b->test_w = b->test_w < 16 ? 16 : b->test_w;
		b->model_w = MD_MAX_COLS - fixed - b->test_w;
		b->model_w = b->model_w < MD_MIN_MODEL_W ? MD_MIN_MODEL_W : b->model_w;
		/* on a GPU the threads column names the backend, as llama-bench's does */
		printf("| %-*s | %*s | %*s | %*s | %*s | %*s | %*s | %*s |\n", b->model_w, "model",
		       MD_SIZE_W, "size", MD_THREADS_W, b->gpu ? "backend" : "threads", b->test_w,
		       "test", MD_TS_W, "t/s",
		       MD_STATE_W, "state", MD_PEAK_W, "peak RSS", MD_ACT_W, "act");
		printf("|");
		md_rule(b->model_w, false);
		md_rule(MD_SIZE_W, true);
		md_rule(MD_THREADS_W, true);
		md_rule(b->test_w, true);
		md_rule(MD_TS_W, true);
		md_rule(MD_STATE_W, true);
		md_rule(MD_PEAK_W, true);
		md_rule(MD_ACT_W, true);
		putchar('\n');
		break;
	}
	case FMT_CSV:
		for (size_t i = 0; i < N_CSV_FIELDS; i++)
			printf("%s%s", i ? "," : "", csv_fields[i]);
		putchar('\n');
		break;
	case FMT_JSON:
		printf("[\n");
		break;
	case FMT_JSONL:
		break;
	case FMT_SQL:
		printf("CREATE TABLE IF NOT EXISTS test (\n");
		for (size_t i = 0; i < N_CSV_FIELDS; i++)
			printf("  %s %s%s\n", csv_fields[i],
			       csv_types[i] == 'I' ? "INTEGER" : csv_types[i] == 'R' ? "REAL" : "TEXT",
			       i + 1 < N_CSV_FIELDS ? "," : "");
		printf(");\n\n");
		break;
	}
}

static int print_result(bench *b, const bench_result *r)
{
	json_t *o = result_json(b, r);
	if (!o) {
		cli_error("bench: out of memory formatting a result");
		return CLI_EXIT_SOFTWARE;
	}
	cli_progress_clear(&b->prog);
	int rc = 0;
	switch (b->fmt) {
	case FMT_MD: {
		char size[32], test[48], ts[48], state[32], peak[32], act[16];
		fmt_bytes(size, sizeof size, (double)sb_model_file_bytes(b->m));
		test_name(r, test, sizeof test);
		snprintf(ts, sizeof ts, "%.2f \xc2\xb1 %.2f", r->avg_ts, r->stddev_ts);
		fmt_bytes(state, sizeof state, (double)sb_state_bytes(b->m));
		fmt_bytes(peak, sizeof peak, (double)r->peak_rss_bytes);
		double mean_act = 0;
		for (int l = 0; l < b->c->layers; l++)
			mean_act += r->act_rate[l] / b->c->layers;
		snprintf(act, sizeof act, "%.1f%%", 100.0 * mean_act);
		/* The ± takes two bytes and one column. */
		char thr[16];
		if (b->gpu)
			snprintf(thr, sizeof thr, "%s", b->backend);
		else
			snprintf(thr, sizeof thr, "%d", r->threads);
		printf("| %-*.*s | %*s | %*s | %*s | %*s | %*s | %*s | %*s |\n", b->model_w, b->model_w,
		       b->model_type, MD_SIZE_W, size, MD_THREADS_W, thr, b->test_w, test,
		       MD_TS_W + 1, ts, MD_STATE_W, state, MD_PEAK_W, peak, MD_ACT_W, act);
		break;
	}
	case FMT_CSV:
		for (size_t i = 0; i < N_CSV_FIELDS; i++) {
			if (i)
				putchar(',');
			csv_value(stdout, json_object_get(o, csv_fields[i]));
		}
		putchar('\n');
		break;
	case FMT_JSON:
		if (b->n_printed)
			printf(",\n");
		rc = json_dumpf(o, stdout, JSON_INDENT(2));
		break;
	case FMT_JSONL:
		rc = json_dumpf(o, stdout, JSON_COMPACT);
		putchar('\n');
		break;
	case FMT_SQL:
		printf("INSERT INTO test (");
		for (size_t i = 0; i < N_CSV_FIELDS; i++)
			printf("%s%s", i ? ", " : "", csv_fields[i]);
		printf(") VALUES (");
		for (size_t i = 0; i < N_CSV_FIELDS; i++) {
			if (i)
				printf(", ");
			sql_value(stdout, json_object_get(o, csv_fields[i]));
		}
		printf(");\n");
		break;
	}
	json_decref(o);
	fflush(stdout);
	b->n_printed++;
	if (rc) {
		cli_error("bench: cannot write JSON");
		return CLI_EXIT_IO;
	}
	return 0;
}

/* Reads `depth` random tokens into b->snap (from an empty state). */
static int fill_depth(bench *b, sb_ctx *ctx, long depth, sb_error *err)
{
	sb_state_reset(b->st);
	char label[64];
	snprintf(label, sizeof label, "bench: filling depth %ld", depth);
	if (b->progress && depth > 0)
		fprintf(stderr, "%s (untimed)\n", label);
	cli_progress_start(&b->prog);
	for (long done = 0; done < depth;) {
		size_t n = (size_t)(depth - done) < FILL_PIECE ? (size_t)(depth - done) : FILL_PIECE;
		random_tokens(b, b->toks, n);
		int rc = sb_prefill(ctx, b->st, b->toks, n, NULL, err);
		if (rc < 0)
			return rc;
		done += (long)n;
		if (!b->progress)
			cli_progress_update(&b->prog, label, (uint64_t)done, (uint64_t)depth, "tok", NULL);
	}
	cli_progress_clear(&b->prog);
	sb_state_copy(b->snap, b->st);
	return 0;
}

/* One run of the test from the depth's state; *ns gets the time. */
static int run_once(bench *b, sb_ctx *ctx, const bench_result *r, uint64_t *ns, sb_error *err)
{
	sb_state_copy(b->st, b->snap);
	int rc = 0;
	uint64_t t0 = cli_clock_ns();
	/* pp and the first part of pp+tg: one prefill call; tg and the rest
	 * of pp+tg: a decode per token. */
	if (r->n_prompt > 0) {
		sb_outputs out = {.last_logits = b->logits};
		rc = sb_prefill(ctx, b->st, b->toks, (size_t)r->n_prompt, &out, err);
	}
	for (long i = 0; i < r->n_gen && rc >= 0; i++)
		rc = sb_decode(ctx, b->st, b->toks[r->n_prompt + i], b->logits, err);
	*ns = cli_clock_ns() - t0;
	if (*ns == 0)
		*ns = 1;
	return rc;
}

static int run_test(bench *b, sb_ctx *ctx, bench_result *r, sb_error *err)
{
	const int L = b->c->layers;
	const long n = r->n_gen + r->n_prompt;
	random_tokens(b, b->toks, (size_t)n);
	time_t now = time(NULL);
	struct tm tmv;
	strftime(r->test_time, sizeof r->test_time, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tmv));
	uint64_t ns;
	int rc;
	char name[48];
	test_name(r, name, sizeof name);
	if (b->progress)
		fprintf(stderr, "bench: test %zu/%zu: %s, %d thread%s%s\n", b->test_no, b->n_tests,
		        name, r->threads, r->threads == 1 ? "" : "s", b->warmup ? ": warm-up run" : "");
	if (b->warmup && (rc = run_once(b, ctx, r, &ns, err)) < 0)
		return rc;
	double *ts = malloc((size_t)b->reps * sizeof *ts), *nsd = malloc((size_t)b->reps * sizeof *nsd);
	if (!ts || !nsd) {
		free(ts);
		free(nsd);
		return sb_error_set(err, SB_ERR_NOMEM, "out of memory");
	}
	for (int l = 0; l < L; l++)
		r->act_rate[l] = 0;
	char label[80];
	snprintf(label, sizeof label, "bench: %s, %d threads", name, r->threads);
	cli_progress_start(&b->prog);
	rc = 0;
	for (int i = 0; i < b->reps; i++) {
		if (b->progress)
			fprintf(stderr, "bench: test %zu/%zu: %s: run %d/%d\n", b->test_no, b->n_tests,
			        name, i + 1, b->reps);
		else
			cli_progress_update(&b->prog, label, (uint64_t)i, (uint64_t)b->reps, "runs", NULL);
		if ((rc = run_once(b, ctx, r, &r->samples_ns[i], err)) < 0)
			break;
		nsd[i] = (double)r->samples_ns[i];
		ts[i] = (double)n * 1e9 / nsd[i];
		for (int l = 0; l < L; l++)
			r->act_rate[l] += (double)(sb_state_n_activated(b->st, l) -
			                           sb_state_n_activated(b->snap, l));
	}
	if (rc >= 0) {
		for (int l = 0; l < L; l++)
			r->act_rate[l] /= (double)n * b->reps;
		mean_sd(nsd, b->reps, &r->avg_ns, &r->stddev_ns);
		mean_sd(ts, b->reps, &r->avg_ts, &r->stddev_ts);
		r->rss_bytes = cli_rss_bytes();
		r->peak_rss_bytes = cli_peak_rss_bytes();
	}
	free(ts);
	free(nsd);
	return rc;
}

static bench_result *new_result(bench *b)
{
	if (b->n_res == b->cap_res) {
		size_t cap = b->cap_res ? 2 * b->cap_res : 16;
		bench_result *p = realloc(b->res, cap * sizeof *p);
		if (!p)
			return NULL;
		b->res = p;
		b->cap_res = cap;
	}
	bench_result *r = &b->res[b->n_res];
	memset(r, 0, sizeof *r);
	r->samples_ns = calloc((size_t)b->reps, sizeof *r->samples_ns);
	r->act_rate = calloc((size_t)b->c->layers, sizeof *r->act_rate);
	if (!r->samples_ns || !r->act_rate) {
		free(r->samples_ns);
		free(r->act_rate);
		return NULL;
	}
	b->n_res++;
	return r;
}

/* ------------------------------------------------------------------ plot */

#define PLOT_W 860
#define PLOT_PANEL_H 250
#define PLOT_LEFT 90
#define PLOT_RIGHT 200
#define PLOT_TOP 70
#define PLOT_GAP 80

static const char *const plot_colors[] = {
	"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
};
#define N_PLOT_COLORS (sizeof plot_colors / sizeof plot_colors[0])

typedef struct plot_axis {
	double lo_dec, hi_dec;   /* log10 range of the positive depths */
	bool has_zero;           /* depth 0 drawn one decade left of lo_dec */
	bool any_pos;
} plot_axis;

static double plot_x(const plot_axis *a, long depth)
{
	const double w = PLOT_W - PLOT_LEFT - PLOT_RIGHT;
	if (!a->any_pos)
		return PLOT_LEFT + w / 2;
	double lo = a->lo_dec - (a->has_zero ? 1 : 0);
	double span = a->hi_dec - lo;
	double v = depth > 0 ? log10((double)depth) : lo;
	return PLOT_LEFT + (span > 0 ? (v - lo) / span * w : w / 2);
}

/* A tick step of 1, 2 or 5 times a power of ten giving about 5 ticks. */
static double nice_step(double max)
{
	double raw = max / 5, p = pow(10, floor(log10(raw))), f = raw / p;
	return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

/* A panel's frame, its value grid and the y label. */
static void plot_frame(FILE *f, double y0, const char *ylabel, double ymax)
{
	const double x0 = PLOT_LEFT, x1 = PLOT_W - PLOT_RIGHT, h = PLOT_PANEL_H;
	double step = nice_step(ymax);
	double top = ceil(ymax / step) * step;
	fprintf(f, "<rect x=\"%g\" y=\"%g\" width=\"%g\" height=\"%g\" fill=\"#fbfbfb\" stroke=\"#888\"/>\n",
	        x0, y0, x1 - x0, h);
	for (double v = 0; v <= top * 1.0001; v += step) {
		double y = y0 + h - v / top * h;
		fprintf(f, "<line x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n", x0, y, x1, y);
		double av = fabs(v);
		fprintf(f, "<text x=\"%g\" y=\"%.1f\" text-anchor=\"end\" dominant-baseline=\"middle\">%g%s</text>\n",
		        x0 - 6, y, av >= 1e6 ? v / 1e6 : av >= 1e4 ? v / 1e3 : v,
		        av >= 1e6 ? "M" : av >= 1e4 ? "k" : "");
	}
	fprintf(f, "<text transform=\"translate(%g %g) rotate(-90)\" text-anchor=\"middle\">",
	        x0 - 58, y0 + h / 2);
	cli_xml_escape(f, ylabel, strlen(ylabel));
	fprintf(f, "</text>\n");
}

/* A panel over depth: the frame, then the depth axis. */
static void plot_panel(FILE *f, const plot_axis *a, double y0, const char *ylabel, double ymax,
                       const long *depths, size_t n_depths)
{
	const double x0 = PLOT_LEFT, x1 = PLOT_W - PLOT_RIGHT, h = PLOT_PANEL_H;
	plot_frame(f, y0, ylabel, ymax);
	if (a->any_pos)
		for (double d = a->lo_dec; d <= a->hi_dec + 1e-9; d += 1) {
			double x = plot_x(a, (long)llround(pow(10, d)));
			fprintf(f, "<line x1=\"%.1f\" y1=\"%g\" x2=\"%.1f\" y2=\"%g\" stroke=\"#e4e4e4\"/>\n", x, y0, x, y0 + h);
			fprintf(f, "<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">10<tspan dy=\"-6\" font-size=\"9\">%d</tspan></text>\n",
			        x, y0 + h + 16, (int)d);
		}
	if (a->has_zero || !a->any_pos) {
		double x = plot_x(a, 0);
		fprintf(f, "<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">0</text>\n", x, y0 + h + 16);
		if (a->any_pos) {
			/* An axis break: the log scale has no place for 0. */
			double xb = (x + plot_x(a, (long)llround(pow(10, a->lo_dec)))) / 2;
			fprintf(f, "<path d=\"M%.1f %g l-4 8 M%.1f %g l-4 8\" stroke=\"#888\"/>\n",
			        xb - 2, y0 + h - 4, xb + 3, y0 + h - 4);
		}
	}
	for (size_t i = 0; i < n_depths; i++)
		fprintf(f, "<line x1=\"%.1f\" y1=\"%g\" x2=\"%.1f\" y2=\"%g\" stroke=\"#888\"/>\n",
		        plot_x(a, depths[i]), y0 + h, plot_x(a, depths[i]), y0 + h + 4);
	fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">depth (tokens already read, log scale)</text>\n",
	        (x0 + x1) / 2, y0 + h + 36);
}

static double plot_y(double y0, double v, double ymax)
{
	double step = nice_step(ymax), top = ceil(ymax / step) * step;
	return y0 + PLOT_PANEL_H - v / top * PLOT_PANEL_H;
}

/* Series are tests that differ only by depth: the same kind, size and
 * thread count. */
static bool same_series(const bench_result *a, const bench_result *b)
{
	return a->is_tg == b->is_tg && a->is_pg == b->is_pg && a->n_prompt == b->n_prompt && a->n_gen == b->n_gen &&
	       a->threads == b->threads;
}

static void plot_series_line(FILE *f, const char *color, const char *dash, const double *xs,
                             const double *ys, size_t n)
{
	fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s%s%s points=\"", color,
	        dash ? " stroke-dasharray=\"" : "", dash ? dash : "", dash ? "\"" : "");
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%s%.1f,%.1f", i ? " " : "", xs[i], ys[i]);
	fprintf(f, "\"/>\n");
	for (size_t i = 0; i < n; i++)
		fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"/>\n", xs[i], ys[i], color);
}

/* The plot of a single depth: for each test (in run order) a bar of its
 * tokens/s with a +-1 sd whisker, and a pair of bars of its peak RSS and
 * RSS after it, each labelled with its value. */
static void plot_bars(FILE *f, const bench *b, double y_ts, double y_mem, double ts_max,
                      double mem_max)
{
	const double x0 = PLOT_LEFT, x1 = PLOT_W - PLOT_RIGHT, h = PLOT_PANEL_H;
	const double slot = (x1 - x0) / (double)b->n_res, bw = fmin(slot * 0.6, 80);
	plot_frame(f, y_ts, "tokens / second", ts_max);
	plot_frame(f, y_mem, "resident memory (MiB)", mem_max);
	for (size_t i = 0; i < b->n_res; i++) {
		const bench_result *r = &b->res[i];
		const char *color = plot_colors[i % N_PLOT_COLORS];
		double cx = x0 + slot * ((double)i + 0.5);
		double y = plot_y(y_ts, r->avg_ts, ts_max);
		fprintf(f, "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n",
		        cx - bw / 2, y, bw, y_ts + h - y, color);
		fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#222\"/>\n", cx,
		        plot_y(y_ts, fmax(0, r->avg_ts - r->stddev_ts), ts_max), cx,
		        plot_y(y_ts, r->avg_ts + r->stddev_ts, ts_max));
		fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"10\">%.1f</text>\n",
		        cx, fmax(y_ts + 10, y - 4), r->avg_ts);
		char name[48];
		test_name(r, name, sizeof name);
		for (int panel = 0; panel < 2; panel++)
			fprintf(f, "<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">%s, %d thr</text>\n", cx,
			        (panel ? y_mem : y_ts) + h + 16, name, r->threads);
		for (int which = 0; which < 2; which++) {
			double mib = (double)(which ? r->rss_bytes : r->peak_rss_bytes) / (1024.0 * 1024);
			double my = plot_y(y_mem, mib, mem_max), w = bw / 2;
			fprintf(f, "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n",
			        cx - w + w * which, my, w, y_mem + h - my, which ? "#2ca02c" : "#d62728");
			fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"10\">%.1f</text>\n",
			        cx - w / 2 + w * which, fmax(y_mem + 10, my - 4), mib);
		}
	}
	for (int panel = 0; panel < 2; panel++)
		fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">test at depth %ld (tokens already read)</text>\n",
		        (x0 + x1) / 2, (panel ? y_mem : y_ts) + h + 36, b->res[0].n_depth);
	for (int which = 0; which < 2; which++) {
		double ly = y_mem + 10 + 18.0 * which;
		fprintf(f, "<rect x=\"%d\" y=\"%.1f\" width=\"24\" height=\"10\" fill=\"%s\"/>\n"
		           "<text x=\"%d\" y=\"%.1f\" dominant-baseline=\"middle\">%s</text>\n",
		        PLOT_W - PLOT_RIGHT + 12, ly - 5, which ? "#2ca02c" : "#d62728",
		        PLOT_W - PLOT_RIGHT + 42, ly, which ? "RSS after the test" : "peak RSS so far");
	}
}

static int write_plot(const bench *b, const char *path)
{
	int rc = 0;
	long *depths = malloc(b->n_res * sizeof *depths);
	size_t *order = malloc(b->n_res * sizeof *order);
	double *xs = malloc(b->n_res * sizeof *xs), *ys = malloc(b->n_res * sizeof *ys);
	bool *done = calloc(b->n_res, 1);
	cli_outfile out = {0};
	if (!depths || !order || !xs || !ys || !done) {
		cli_error("bench: out of memory drawing the plot");
		rc = CLI_EXIT_SOFTWARE;
		goto out;
	}
	plot_axis a = {.lo_dec = 1e300, .hi_dec = -1e300};
	size_t n_depths = 0;
	double ts_max = 0, mem_max = 0;
	for (size_t i = 0; i < b->n_res; i++) {
		const bench_result *r = &b->res[i];
		bool seen = false;
		for (size_t j = 0; j < n_depths; j++)
			seen |= depths[j] == r->n_depth;
		if (!seen)
			depths[n_depths++] = r->n_depth;
		if (r->n_depth == 0) {
			a.has_zero = true;
		} else {
			a.any_pos = true;
			a.lo_dec = fmin(a.lo_dec, floor(log10((double)r->n_depth)));
			a.hi_dec = fmax(a.hi_dec, ceil(log10((double)r->n_depth)));
		}
		ts_max = fmax(ts_max, r->avg_ts + r->stddev_ts);
		mem_max = fmax(mem_max, (double)r->peak_rss_bytes / (1024.0 * 1024));
	}
	if (a.any_pos && a.hi_dec <= a.lo_dec)
		a.hi_dec = a.lo_dec + 1;
	ts_max = ts_max > 0 ? ts_max * 1.1 : 1;
	mem_max = mem_max > 0 ? mem_max * 1.25 : 1;

	if ((rc = cli_outfile_open(&out, path)))
		goto out;
	FILE *f = out.f;
	const double y_ts = PLOT_TOP, y_mem = PLOT_TOP + PLOT_PANEL_H + PLOT_GAP;
	const int H = (int)(y_mem + PLOT_PANEL_H + 60);
	fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	           "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
	           "font-family=\"sans-serif\" font-size=\"12\">\n"
	           "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
	           PLOT_W, H, PLOT_W, H);
	fprintf(f, "<text x=\"%d\" y=\"24\" font-size=\"16\" font-weight=\"bold\">seqboat bench: ", PLOT_LEFT);
	cli_xml_escape(f, b->model_type, strlen(b->model_type));
	fprintf(f, "</text>\n<text x=\"%d\" y=\"44\" fill=\"#444\">", PLOT_LEFT);
	char state[32], fsize[32];
	fmt_bytes(state, sizeof state, (double)sb_state_bytes(b->m));
	fmt_bytes(fsize, sizeof fsize, (double)sb_model_file_bytes(b->m));
	fprintf(f, "state %s per sequence at every depth; weights %s; window %d; mean of %d runs, bars: \xc2\xb1 1 sd</text>\n",
	        state, fsize, b->c->window, b->reps);
	if (n_depths == 1) {
		/* One depth: a line would be one dot per test, so a bar per test. */
		plot_bars(f, b, y_ts, y_mem, ts_max, mem_max);
		fprintf(f, "</svg>\n");
		rc = cli_outfile_commit(&out);
		goto out;
	}
	plot_panel(f, &a, y_ts, "tokens / second", ts_max, depths, n_depths);
	plot_panel(f, &a, y_mem, "resident memory (MiB)", mem_max, depths, n_depths);

	/* Tokens/s: one line per series, points sorted by depth. */
	size_t n_series = 0;
	for (size_t i = 0; i < b->n_res; i++) {
		if (done[i])
			continue;
		size_t n = 0;
		for (size_t j = i; j < b->n_res; j++)
			if (!done[j] && same_series(&b->res[i], &b->res[j])) {
				order[n++] = j;
				done[j] = true;
			}
		for (size_t p = 1; p < n; p++)
			for (size_t q = p; q > 0 && b->res[order[q]].n_depth < b->res[order[q - 1]].n_depth; q--) {
				size_t t = order[q];
				order[q] = order[q - 1];
				order[q - 1] = t;
			}
		const char *color = plot_colors[n_series % N_PLOT_COLORS];
		for (size_t p = 0; p < n; p++) {
			const bench_result *r = &b->res[order[p]];
			xs[p] = plot_x(&a, r->n_depth);
			ys[p] = plot_y(y_ts, r->avg_ts, ts_max);
			fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n", xs[p],
			        plot_y(y_ts, fmax(0, r->avg_ts - r->stddev_ts), ts_max), xs[p],
			        plot_y(y_ts, r->avg_ts + r->stddev_ts, ts_max), color);
		}
		plot_series_line(f, color, NULL, xs, ys, n);
		char name[48];
		bench_result key = b->res[i];
		key.n_depth = 0;
		test_name(&key, name, sizeof name);
		double ly = y_ts + 10 + 18.0 * (double)n_series;
		fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>\n"
		           "<text x=\"%d\" y=\"%.1f\" dominant-baseline=\"middle\">%s, %d thr</text>\n",
		        PLOT_W - PLOT_RIGHT + 12, ly, PLOT_W - PLOT_RIGHT + 36, ly, color,
		        PLOT_W - PLOT_RIGHT + 42, ly, name, b->res[i].threads);
		n_series++;
	}

	/* Memory: at each depth the highest values over its tests. */
	for (int which = 0; which < 2; which++) {
		for (size_t p = 0; p < n_depths; p++)
			order[p] = p;
		for (size_t p = 1; p < n_depths; p++)
			for (size_t q = p; q > 0 && depths[order[q]] < depths[order[q - 1]]; q--) {
				size_t t = order[q];
				order[q] = order[q - 1];
				order[q - 1] = t;
			}
		for (size_t p = 0; p < n_depths; p++) {
			double v = 0;
			for (size_t i = 0; i < b->n_res; i++)
				if (b->res[i].n_depth == depths[order[p]])
					v = fmax(v, (double)(which ? b->res[i].rss_bytes : b->res[i].peak_rss_bytes));
			xs[p] = plot_x(&a, depths[order[p]]);
			ys[p] = plot_y(y_mem, v / (1024.0 * 1024), mem_max);
		}
		const char *color = which ? "#2ca02c" : "#d62728";
		plot_series_line(f, color, which ? "6 4" : NULL, xs, ys, n_depths);
		double ly = y_mem + 10 + 18.0 * which;
		fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"%s/>\n"
		           "<text x=\"%d\" y=\"%.1f\" dominant-baseline=\"middle\">%s</text>\n",
		        PLOT_W - PLOT_RIGHT + 12, ly, PLOT_W - PLOT_RIGHT + 36, ly, color,
		        which ? " stroke-dasharray=\"6 4\"" : "", PLOT_W - PLOT_RIGHT + 42, ly,
		        which ? "RSS after the test" : "peak RSS so far");
	}
	fprintf(f, "</svg>\n");
	rc = cli_outfile_commit(&out);
out:
	if (rc)
		cli_outfile_abort(&out);
	free(depths);
	free(order);
	free(xs);
	free(ys);
	free(done);
	return rc;
}

/* ------------------------------------------------------------------ main */

int cmd_bench(int argc, char **argv)
{
	static const struct option opts[] = {
		{"model", required_argument, 0, 'm'},
		{"n-prompt", required_argument, 0, 'p'},
		{"n-gen", required_argument, 0, 'n'},
		{"n-depth", required_argument, 0, 'd'},
		{"threads", required_argument, 0, 't'},
		{"repetitions", required_argument, 0, 'r'},
		{"output", required_argument, 0, 'o'},
		{"plot", required_argument, 0, OPT_PLOT},
		{"act-bias", required_argument, 0, OPT_ACT_BIAS},
		{"seed", required_argument, 0, OPT_SEED},
		{"no-warmup", no_argument, 0, OPT_NO_WARMUP},
		{"pg", required_argument, 0, OPT_PG},
		{"progress", no_argument, 0, OPT_PROGRESS},
		{"device", required_argument, 0, OPT_DEVICE},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	bench b = {.fmt = FMT_MD, .reps = 5, .warmup = true, .rng = 1};
	bench_list pp = {0}, tg = {0}, depth = {0}, threads = {0}, pg = {0};
	size_t pg_cap = 0;
	char **args = NULL;
	const char *dir = NULL, *plot = NULL;
	sb_model *m = NULL;
	sb_ctx *ctx = NULL;
	sb_error err = {0};
	int rc = 0, o;
	bool json_open = false;
	uint64_t seed = 1;
	const long MAXN = 1L << 40;
	/* llama-bench spells it -pg: one dash, two letters. */
	if (!(args = malloc(((size_t)argc + 1) * sizeof *args))) {
		cli_error("out of memory");
		return CLI_EXIT_SOFTWARE;
	}
	for (int i = 0; i < argc; i++)
		args[i] = !strcmp(argv[i], "-pg") ? "--pg" : argv[i];
	args[argc] = NULL;
	argv = args;
	while (!rc && (o = getopt_long(argc, argv, "m:p:n:d:t:r:o:h", opts, NULL)) != -1) {
		switch (o) {
		case 'm': dir = optarg; break;
		case 'p': rc = parse_list("--n-prompt", optarg, 0, 1L << 30, &pp); break;
		case 'n': rc = parse_list("--n-gen", optarg, 0, 1L << 30, &tg); break;
		case 'd': rc = parse_list("--n-depth", optarg, 0, MAXN, &depth); break;
		case 't': rc = parse_list("--threads", optarg, 0, 1024, &threads); break;
		case OPT_PG: {
			bench_list two = {0};
			if (!(rc = parse_list("-pg", optarg, 0, 1L << 30, &two)) &&
			    (two.n != 2 || two.v[0] + two.v[1] == 0)) {
				cli_error("-pg: expected PP,TG (two sizes, not both 0), got '%s'", optarg);
				rc = CLI_EXIT_USAGE;
			}
			if (!rc && (!list_push(&pg, &pg_cap, two.v[0]) || !list_push(&pg, &pg_cap, two.v[1]))) {
				cli_error("out of memory");
				rc = CLI_EXIT_SOFTWARE;
			}
			free(two.v);
			break;
		}
		case OPT_PROGRESS: b.progress = true; break;
		case OPT_DEVICE: b.device = optarg; break;
		case 'r':
			if (!cli_parse_int("--repetitions", optarg, 1, 1000000, &b.reps))
				rc = CLI_EXIT_USAGE;
			break;
		case 'o':
			if (!strcmp(optarg, "md"))
				b.fmt = FMT_MD;
			else if (!strcmp(optarg, "csv"))
				b.fmt = FMT_CSV;
			else if (!strcmp(optarg, "json"))
				b.fmt = FMT_JSON;
			else if (!strcmp(optarg, "jsonl"))
				b.fmt = FMT_JSONL;
			else if (!strcmp(optarg, "sql"))
				b.fmt = FMT_SQL;
			else {
				cli_error("--output: expected md, csv, json, jsonl or sql, got '%s'", optarg);
				rc = CLI_EXIT_USAGE;
			}
			break;
		case OPT_PLOT: plot = optarg; break;
		case OPT_ACT_BIAS:
			if (!cli_parse_act_bias(optarg, &b.act_bias))
				rc = CLI_EXIT_USAGE;
			break;
		case OPT_SEED:
			if (!cli_parse_u64("--seed", optarg, &seed))
				rc = CLI_EXIT_USAGE;
			break;
		case OPT_NO_WARMUP: b.warmup = false; break;
		case 'h': fputs(usage_text, stdout); goto out;
		default: rc = cli_bad_option("bench", argv); break;
		}
	}
	if (rc)
		goto out;
	if ((rc = cli_no_operands("bench", argc, argv)))
		goto out;
	/* xorshift must not start at 0. */
	b.rng = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
	if (!b.rng)
		b.rng = 1;
	long def_pp = 512, def_tg = 128, def_depth = 0;
	bench_list dpp = {&def_pp, 1}, dtg = {&def_tg, 1}, ddepth = {&def_depth, 1};
	const bench_list *P = pp.n ? &pp : &dpp, *G = tg.n ? &tg : &dtg,
	                 *Dl = depth.n ? &depth : &ddepth;
	long def_threads = cli_cores();
	bench_list dthreads = {&def_threads, 1};
	const bench_list *Tl = threads.n ? &threads : &dthreads;
	/* 0 is all cores; more than the cores is what the user asked to
	 * measure, so it is kept, but said. */
	for (size_t i = 0; i < threads.n; i++) {
		if (threads.v[i] == 0)
			threads.v[i] = def_threads;
		else if (threads.v[i] > def_threads)
			cli_warn("--threads %ld: this process may run on %ld core%s; measuring %ld threads "
			         "as asked (more threads than cores only slow it down)", threads.v[i],
			         def_threads, def_threads == 1 ? "" : "s", threads.v[i]);
	}
	if (list_max(P) == 0 && list_max(G) == 0 && pg.n == 0) {
		cli_error("bench: no tests to run (every -p and -n size is 0)");
		rc = CLI_EXIT_USAGE;
		goto out;
	}
	/* The planned tests: their count for --progress, their longest name
	 * for the md table. */
	for (size_t kind = 0; kind < 3; kind++) {
		const bench_list *sizes = kind == 0 ? P : kind == 1 ? G : &pg;
		for (size_t si = 0; si < sizes->n; si += kind == 2 ? 2 : 1) {
			if (kind < 2 && sizes->v[si] == 0)
				continue;
			for (size_t di = 0; di < Dl->n; di++) {
				bench_result t = {.is_tg = kind == 1, .is_pg = kind == 2, .n_depth = Dl->v[di],
				                  .n_prompt = kind == 1 ? 0 : sizes->v[si],
				                  .n_gen = kind == 0 ? 0 : kind == 1 ? sizes->v[si] : sizes->v[si + 1]};
				char name[48];
				test_name(&t, name, sizeof name);
				b.test_w = (int)strlen(name) > b.test_w ? (int)strlen(name) : b.test_w;
				b.n_tests += Tl->n;
			}
		}
	}

	if ((rc = cli_load_model(dir, &m, NULL, SB_BYTES_AUTO)))
		goto out;
	b.m = m;
	b.c = sb_model_config(m);
	b.model_path = sb_model_dir(m);
	char params[32];
	fmt_count(params, sizeof params, (double)sb_model_n_params(m));
	snprintf(b.model_type, sizeof b.model_type, "seqboat %s %s", params,
	         cli_weights_name(m));
	read_cpu_info(b.cpu_info, sizeof b.cpu_info);
	long maxn = list_max(P) > list_max(G) ? list_max(P) : list_max(G);
	for (size_t i = 0; i < pg.n; i += 2)
		maxn = pg.v[i] + pg.v[i + 1] > maxn ? pg.v[i] + pg.v[i + 1] : maxn;
	b.cap_toks = (size_t)(maxn > FILL_PIECE ? maxn : FILL_PIECE);
	size_t tok_bytes;
	if (!sb_size_mul(b.cap_toks, sizeof *b.toks, &tok_bytes) || !(b.toks = malloc(tok_bytes)) ||
	    !(b.logits = malloc((size_t)b.c->vocab_size * sizeof *b.logits))) {
		cli_error("bench: out of memory for %zu tokens", b.cap_toks);
		rc = CLI_EXIT_SOFTWARE;
		goto out;
	}
	b.gpu = b.device && !strncmp(b.device, "cuda", 4);
	snprintf(b.backend, sizeof b.backend, "%s", b.gpu ? "CUDA" : "CPU");

	print_header(&b);
	json_open = b.fmt == FMT_JSON;
	for (size_t di = 0; di < Dl->n; di++) {
		for (size_t ti = 0; ti < Tl->n; ti++) {
			/* The BLAS thread count is process-wide, so one context
			 * at a time. */
			sb_ctx_params cp = sb_ctx_default_params();
			cp.n_threads = (int)Tl->v[ti];
			cp.act_bias = b.act_bias;
			cp.device = b.device;
			if (!(ctx = sb_ctx_new(m, &cp, &err))) {
				rc = cli_fail(&err);
				goto out;
			}
			/* The states live where the contexts compute (all on one
			 * device), made with the first context. */
			if (!b.st && (!(b.st = sb_ctx_state_new(ctx, &err)) ||
			              !(b.snap = sb_ctx_state_new(ctx, &err)))) {
				rc = cli_fail(&err);
				goto out;
			}
			snprintf(b.gpu_info, sizeof b.gpu_info, "%s", sb_ctx_device_name(ctx));
			if (ti == 0 && fill_depth(&b, ctx, Dl->v[di], &err) < 0) {
				rc = cli_fail(&err);
				goto out;
			}
			/* pp sizes, then tg sizes, then pp+tg pairs, as llama-bench
			 * orders them */
			for (int kind = 0; kind < 3; kind++) {
				const bench_list *sizes = kind == 0 ? P : kind == 1 ? G : &pg;
				for (size_t si = 0; si < sizes->n; si += kind == 2 ? 2 : 1) {
					if (kind < 2 && sizes->v[si] == 0)
						continue;
					bench_result *r = new_result(&b);
					if (!r) {
						cli_error("bench: out of memory");
						rc = CLI_EXIT_SOFTWARE;
						goto out;
					}
					b.test_no++;
					r->is_tg = kind == 1;
					r->is_pg = kind == 2;
					r->n_prompt = kind == 1 ? 0 : sizes->v[si];
					r->n_gen = kind == 0 ? 0 : kind == 1 ? sizes->v[si] : sizes->v[si + 1];
					r->n_depth = Dl->v[di];
					r->threads = (int)Tl->v[ti];
					if (run_test(&b, ctx, r, &err) < 0) {
						rc = cli_fail(&err);
						goto out;
					}
					if ((rc = print_result(&b, r)))
						goto out;
				}
			}
			sb_ctx_free(ctx);
			ctx = NULL;
		}
	}
	json_open = false;
	if (b.fmt == FMT_JSON)
		printf("\n]\n");
	if (b.fmt == FMT_MD) {
		printf("\nbuild: %s (%s)\n", SB_BUILD_COMMIT, SB_VERSION);
		if (b.gpu_info[0])
			printf("gpu: %s\n", b.gpu_info);
	}
	if (fflush(stdout) != 0 || ferror(stdout)) {
		cli_error("standard output: write error");
		rc = CLI_EXIT_IO;
		goto out;
	}
	if (plot)
		rc = write_plot(&b, plot);
out:
	cli_progress_clear(&b.prog);
	/* Keep the output parseable up to the failed test. */
	if (json_open)
		printf("\n]\n");
	for (size_t i = 0; i < b.n_res; i++) {
		free(b.res[i].samples_ns);
		free(b.res[i].act_rate);
	}
	free(b.res);
	free(b.toks);
	free(b.logits);
	sb_state_free(b.st);
	sb_state_free(b.snap);
	sb_ctx_free(ctx);
	sb_model_free(m);
	free(pp.v);
	free(tg.v);
	free(depth.v);
	free(threads.v);
	free(pg.v);
	free(args);
	return rc;
}
