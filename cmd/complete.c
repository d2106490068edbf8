/* complete.c - `seqboat complete`: batch completion of prompts.
 *
 * Items come from -p (repeatable), -f FILE or stdin: plain text (one prompt
 * per line) or JSONL ({"id":..., "prompt":..., optional settings}). Each
 * item yields one record, written in input order; a line that cannot be
 * used yields an error record and the batch goes on. With -o the records
 * are appended and flushed as they finish, and --resume skips the ids the
 * file already holds, so an interrupted run continues to exactly the
 * output an uninterrupted one gives: every item's seed is derived from the
 * base seed and the item's id, never from the items before it.
 *
 * Items are decoded in groups with sb_decode_batch; each keeps its own
 * state, sampler and stop matcher, so the grouping does not change what an
 * item produces. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include "gen.h"
#include "keyset.h"
#include "lines.h"
#include "scheduler.h"

/* The one global the conventions allow: how many SIGINTs arrived. */
static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
	(void)sig;
	interrupted = 1;
}

/* Derived seeds stay below 2^53 so that every JSON reader keeps them exact. */
#define SEED_MASK ((UINT64_C(1) << 53) - 1)

typedef struct item {
	json_t *id;              /* as given, or the line number */
	char *key;               /* compact JSON of id: resume and seed key */
	char *prompt;
	char *error;             /* set: the line could not be used */
	sb_sampler_params sp;
	long max_tokens;
	uint64_t seed;
	bool seed_given;         /* the record set "seed" */
	const char **stops;      /* (n_stops) owned by stop_json or the run */
	size_t n_stops;
	json_t *stop_json;       /* keeps per-item stop strings alive */
	size_t index;            /* position in the whole input, 1-based */
	bool done;               /* --resume found it in the output file */
	char *record;            /* the finished record, until written */
} item;

typedef struct buf {
	char *p;
	size_t len, cap;
} buf;

static int buf_add(buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *q = realloc(b->p, cap);
		if (!q)
			return -1;
		b->p = q;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
	return 0;
}

typedef enum { FMT_AUTO, FMT_TEXT, FMT_JSONL } fmt;

typedef struct run {
	cli_gen g;
	fmt out_fmt, in_fmt;
	const char **prompts;    /* (n_prompts) -p values */
	size_t n_prompts;
	const char *in_path;     /* -f */
	const char *out_path;    /* -o */
	bool resume;
	bool timings;
	const char *system;      /* --system */
	const char *prefix_file; /* --prefix-file */
	int batch;               /* 0: automatic */
	size_t shard_k, shard_n; /* --shard K/N; shard_n 0: every item */

	item *items;
	size_t n_items;
	sb_model *model;
	sb_tokenizer *tok;
	sb_ctx *ctx;
	int V;
	int32_t eos;
	sb_state *base;          /* the state after the shared prefix, or NULL */
	float *base_logits;      /* (V) prediction after the prefix */
	int32_t *prefix_ids;     /* (n_prefix) */
	size_t n_prefix;
	FILE *out;
	bool text;               /* plain streamed text rather than records */
	bool escape;             /* text to a terminal: escape control bytes */
	bool progress;
	size_t n_errors;
	uint64_t gen_tokens;
	double t_start;
	bool echo;               /* --echo: text output shows the prompt first */
	/* the generation: */
	sb_sched *sched;
	size_t nslots, live;     /* slots; items submitted and not yet done */
	size_t next;             /* the next item to submit */
	size_t next_write, written, total;
	double last_progress;
	int rc;                  /* a write failed: the exit status */
} run;

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: seqboat complete [options] [-p PROMPT]... [-f FILE]\n\n"
	        "Completes prompts: from -p (repeatable), -f FILE, or standard input.\n"
	        "A file holds one prompt per line, or JSONL records\n"
	        "  {\"id\": ..., \"prompt\": ..., \"temp\": ..., \"max_tokens\": ..., \"seed\": ..., \"stop\": ...}\n"
	        "(also top_k, top_p, min_p, repeat_penalty, repeat_last_n, presence_penalty,\n"
	        "frequency_penalty). Blank lines are skipped; an item without an id is\n"
	        "given its line number.\n\n"
	        "Output: a single -p prompt streams its completion as text to standard\n"
	        "output (a terminal, a pipe or a file alike), flushed per token and ended\n"
	        "with a newline; the prompt is not repeated unless --echo is given.\n"
	        "Several -p, a file of prompts, -o or --format jsonl give one JSON record\n"
	        "per item, in input order: id, completion, finish_reason (stop, length,\n"
	        "error), prompt_tokens, completion_tokens, seed, timings, error.\n\n"
	        "options:\n"
	        "  -p, --prompt TEXT        a prompt (repeatable)\n"
	        "  -f, --file FILE          prompts from FILE ('-' for standard input)\n"
	        "      --format-in F        auto (default), text or jsonl\n"
	        "      --format F           auto (default: text for one -p, else jsonl), text or jsonl\n"
	        "      --echo               text output: print the prompt before its completion\n"
	        "  -o, --output FILE        append records to FILE, flushed as each finishes\n"
	        "      --resume             skip the ids FILE (-o) already holds\n"
	        "      --no-timings         leave timings out of the records\n"
	        "      --system TEXT        a prefix read once before every prompt\n"
	        "      --prefix-file FILE   the same, from a file\n"
	        "      --batch N            decode up to N items together (default: automatic)\n"
	        "      --shard K/N          only the items whose position among the input's\n"
	        "                           items is K mod N (0 <= K < N); records and seeds are\n"
	        "                           those of the whole run ('seqboat merge' joins shards)\n"
	        "%s\n"
	        "Without --seed the base seed is 0, so runs repeat; each item's seed is\n"
	        "derived from the base seed and its id (a record's \"seed\" overrides it).\n"
	        "Ctrl-C finishes the items under way, writes them and stops; a second\n"
	        "Ctrl-C aborts. Exit status: 0, 65 if some record is an error, 130 if\n"
	        "interrupted.\n",
	        cli_gen_help);
}

static void item_free(item *it)
{
	if (it->stop_json)
		free(it->stops);
	json_decref(it->stop_json);
	json_decref(it->id);
	free(it->key);
	free(it->prompt);
	free(it->error);
	free(it->record);
}

static char *xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = malloc(n);
	if (p)
		memcpy(p, s, n);
	return p;
}

static char *xprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xprintf(const char *fmt, ...)
{
	char tmp[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	return xstrdup(tmp);
}

/* Settings a JSONL record may carry besides id and prompt. */
static const char *const item_keys =
	"id, prompt, temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, "
	"presence_penalty, frequency_penalty, seed, max_tokens, stop";

static bool json_num(json_t *v, double *out)
{
	if (!json_is_number(v))
		return false;
	*out = json_number_value(v);
	return true;
}

/* Reads the optional settings of one JSONL object into it; returns an
 * error message (malloc'd) or NULL. */
static char *item_settings(item *it, json_t *obj)
{
	const char *k;
	json_t *v;
	double x;
	json_object_foreach(obj, k, v) {
		if (!strcmp(k, "id") || !strcmp(k, "prompt"))
			continue;
#define NUM(name, field, lo, hi)                                                     \
	if (!strcmp(k, name)) {                                                      \
		if (!json_num(v, &x) || x < (lo) || x > (hi))                        \
			return xprintf("field '%s': expected a number from %g to %g", \
			               name, (double)(lo), (double)(hi));            \
		field = x;                                                           \
		continue;                                                            \
	}
#define INT(name, field, lo, hi)                                                          \
	if (!strcmp(k, name)) {                                                           \
		if (!json_is_integer(v) || json_integer_value(v) < (lo) ||                \
		    json_integer_value(v) > (hi))                                         \
			return xprintf("field '%s': expected an integer from %lld to %lld", \
			               name, (long long)(lo), (long long)(hi));           \
		field = json_integer_value(v);                                            \
		continue;                                                                 \
	}
		NUM("temp", it->sp.temp, 0, 1e6)
		NUM("top_p", it->sp.top_p, 1e-9, 1)
		NUM("min_p", it->sp.min_p, 0, 1)
		NUM("repeat_penalty", it->sp.repeat_penalty, 1e-6, 1e6)
		NUM("presence_penalty", it->sp.presence_penalty, -1e6, 1e6)
		NUM("frequency_penalty", it->sp.frequency_penalty, -1e6, 1e6)
		INT("top_k", it->sp.top_k, 0, INT_MAX)
		INT("repeat_last_n", it->sp.repeat_last_n, 0, 1 << 20)
		INT("max_tokens", it->max_tokens, -1, INT_MAX)
		if (!strcmp(k, "seed")) {
			if (!json_is_integer(v) || json_integer_value(v) < 0)
				return xprintf("field 'seed': expected a non-negative integer");
			it->seed = (uint64_t)json_integer_value(v);
			it->seed_given = true;
			continue;
		}
#undef NUM
#undef INT
		if (!strcmp(k, "stop")) {
			json_t *arr = json_is_string(v) ? json_pack("[O]", v) : json_incref(v);
			if (!json_is_array(arr)) {
				json_decref(arr);
				return xprintf("field 'stop': expected a string or an array of strings");
			}
			size_t n = json_array_size(arr);
			const char **s = n ? calloc(n, sizeof *s) : NULL;
			if (n && !s) {
				json_decref(arr);
				return xprintf("out of memory");
			}
			for (size_t i = 0; i < n; i++) {
				json_t *e = json_array_get(arr, i);
				if (!json_is_string(e) || !json_string_length(e) ||
				    strlen(json_string_value(e)) != json_string_length(e)) {
					free(s);
					json_decref(arr);
					return xprintf("field 'stop': element %zu is not a non-empty string", i + 1);
				}
				s[i] = json_string_value(e);
			}
			if (it->stop_json)
				free(it->stops);
			json_decref(it->stop_json);
			it->stop_json = arr;
			it->stops = s;
			it->n_stops = n;
			continue;
		}
		return xprintf("unknown field '%s' (expected one of: %s)", k, item_keys);
	}
	return NULL;
}

/* Parses one JSONL line into it (id defaults to the line number). */
static void item_from_json(item *it, const char *line, size_t len, size_t lineno)
{
	json_error_t je;
	json_t *obj = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
	if (!obj) {
		it->error = xprintf("line %zu: not valid JSON: %s (column %d)", lineno, je.text, je.column);
		return;
	}
	if (!json_is_object(obj)) {
		it->error = xprintf("line %zu: expected a JSON object", lineno);
		goto done;
	}
	json_t *id = json_object_get(obj, "id");
	if (id && !json_is_string(id) && !json_is_integer(id)) {
		it->error = xprintf("line %zu: field 'id': expected a string or an integer", lineno);
		goto done;
	}
	json_decref(it->id);
	it->id = cli_item_id(obj, lineno);
	json_t *p = json_object_get(obj, "prompt");
	if (!json_is_string(p)) {
		it->error = xprintf("line %zu: field 'prompt': expected a string", lineno);
		goto done;
	}
	if (strlen(json_string_value(p)) != json_string_length(p)) {
		it->error = xprintf("line %zu: field 'prompt': contains a NUL character", lineno);
		goto done;
	}
	it->prompt = xstrdup(json_string_value(p));
	char *msg = item_settings(it, obj);
	if (msg) {
		it->error = xprintf("line %zu: %s", lineno, msg);
		free(msg);
	}
done:
	json_decref(obj);
}

/* True if the item at this position (0-based, among all items of the
 * input) belongs to the run's shard. */
static bool in_shard(const run *r, size_t index)
{
	return !r->shard_n || index % r->shard_n == r->shard_k;
}

/* Appends an item, the index-th (1-based) of the whole input. */
static int add_item(run *r, size_t *cap, size_t index)
{
	if (r->n_items == *cap) {
		size_t nc = *cap ? *cap * 2 : 64;
		item *p = realloc(r->items, nc * sizeof *p);
		if (!p)
			return -1;
		r->items = p;
		*cap = nc;
	}
	item *it = &r->items[r->n_items++];
	memset(it, 0, sizeof *it);
	it->sp = r->g.sp;
	it->max_tokens = r->g.max_tokens;
	it->stops = r->g.stops;
	it->n_stops = r->g.n_stops;
	it->index = index;
	it->id = json_integer((json_int_t)index);
	return 0;
}

/* Splits the input into items, one per non-blank line (with --shard,
 * only those whose position among the items is K mod N). Returns 0 or an
 * exit status. */
static int load_items(run *r, FILE *in, const char *path)
{
	size_t cap = 0, index = 0;
	fmt f = r->in_fmt;
	int rc = 0, got;
	const char *line;
	size_t n;
	bool too_long;
	cli_lines *rd = cli_lines_new(in);
	if (!rd)
		goto nomem;
	while ((got = cli_lines_next(rd, &line, &n, &too_long)) > 0) {
		size_t lineno = cli_lines_number(rd);
		if (!too_long && cli_line_blank(line, n))
			continue;
		if (f == FMT_AUTO)
			f = cli_line_is_json(line, n) ? FMT_JSONL : FMT_TEXT;
		if (!in_shard(r, index++))
			continue;
		if (add_item(r, &cap, index) < 0)
			goto nomem;
		item *it = &r->items[r->n_items - 1];
		json_decref(it->id);
		it->id = json_integer((json_int_t)lineno);
		if (too_long) {
			it->error = xprintf("line %zu: longer than %zu bytes (the limit for one input line)",
			                    lineno, CLI_LINE_MAX);
		} else if (f == FMT_JSONL) {
			item_from_json(it, line, n, lineno);
		} else if (memchr(line, 0, n)) {
			it->error = xprintf("line %zu: contains a NUL byte", lineno);
		} else if (!(it->prompt = malloc(n + 1))) {
			goto nomem;
		} else {
			memcpy(it->prompt, line, n);
			it->prompt[n] = 0;
		}
	}
	rc = cli_lines_fail(got, path);
	goto done;
nomem:
	cli_error("out of memory reading the prompts");
	rc = CLI_EXIT_SOFTWARE;
done:
	cli_lines_free(rd);
	return rc;
}

typedef struct key_ref {
	const char *key;
	size_t idx;
} key_ref;

static int cmp_key_ref(const void *a, const void *b)
{
	const key_ref *x = a, *y = b;
	int c = strcmp(x->key, y->key);
	return c ? c : (x->idx > y->idx) - (x->idx < y->idx);
}

/* Keys, duplicate ids, seeds. Duplicates are found by sorting the keys, so
 * a batch of a million items costs n log n, not n^2. */
static int finish_items(run *r)
{
	key_ref *refs = calloc(r->n_items ? r->n_items : 1, sizeof *refs);
	if (!refs) {
		cli_error("out of memory");
		return CLI_EXIT_SOFTWARE;
	}
	for (size_t i = 0; i < r->n_items; i++) {
		item *it = &r->items[i];
		it->key = json_dumps(it->id, JSON_COMPACT | JSON_ENCODE_ANY);
		if (!it->key) {
			free(refs);
			cli_error("out of memory");
			return CLI_EXIT_SOFTWARE;
		}
		if (!it->seed_given)
			it->seed = cli_seed_derive(r->g.sp.seed, it->key, strlen(it->key)) & SEED_MASK;
		it->sp.seed = it->seed;
		refs[i] = (key_ref){it->key, i};
	}
	qsort(refs, r->n_items, sizeof *refs, cmp_key_ref);
	for (size_t i = 1; i < r->n_items; i++) {
		size_t first = i - 1;
		while (i < r->n_items && !strcmp(refs[i].key, refs[first].key)) {
			item *it = &r->items[refs[i].idx];
			if (!it->error)
				it->error = xprintf("duplicate id %s (first used by item %zu)", it->key,
				                    r->items[refs[first].idx].index);
			i++;
		}
	}
	free(refs);
	return 0;
}

/* How every record make_record() writes begins. */
#define RECORD_START "{\"id\":"

/* A torn last line is what a run killed while writing leaves: the start of
 * a record, cut anywhere. */
static bool torn_record(const char *s, size_t n)
{
	size_t k = strlen(RECORD_START);
	if (memcmp(s, RECORD_START, n < k ? n : k) != 0)
		return false;
	return !memchr(s, 0, n);
}

/* Reads the records already in the output file and marks their ids done.
 * The file is read as a stream, and nothing is removed from it until every
 * line has been recognized as a record of this command: then, and only
 * then, a torn last line (a run killed while writing) is cut off. Anything
 * else is refused with the file untouched. Matching is by hashed id, so a
 * million records cost a million lookups. */
static int resume_from(run *r)
{
	struct stat sb;
	if (stat(r->out_path, &sb) < 0) {
		if (errno == ENOENT)
			return 0; /* nothing written yet: start from the beginning */
		cli_error("%s: cannot read the records to resume: %s", r->out_path, strerror(errno));
		return CLI_EXIT_IO;
	}
	if (!S_ISREG(sb.st_mode)) {
		cli_error("%s: --resume needs a regular file of records, not %s", r->out_path,
		          S_ISDIR(sb.st_mode) ? "a directory" : S_ISFIFO(sb.st_mode) ? "a FIFO" : "a special file");
		return CLI_EXIT_USAGE;
	}
	FILE *f = fopen(r->out_path, "rb");
	if (!f) {
		cli_error("%s: cannot open: %s", r->out_path, strerror(errno));
		return CLI_EXIT_IO;
	}
	int rc = 0, got;
	cli_lines *rd = cli_lines_new(f);
	cli_keyset done = {0};
	const char *line;
	size_t len;
	bool too_long;
	unsigned long long keep = 0, total = 0;   /* bytes of whole records, of the file */
	if (!rd)
		goto nomem;
	while ((got = cli_lines_next(rd, &line, &len, &too_long)) > 0) {
		size_t lineno = cli_lines_number(rd);
		total = cli_lines_offset(rd);
		if (!cli_lines_ended(rd) && !too_long) {
			/* the last line, without its newline */
			if (!torn_record(line, len)) {
				cli_error("%s: line %zu: expected a record of seqboat complete (is this its output?); the file is left as it is",
				          r->out_path, lineno);
				rc = CLI_EXIT_DATA;
				goto done;
			}
			break;
		}
		json_error_t je;
		json_t *rec = too_long ? NULL : json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
		json_t *id = json_is_object(rec) ? json_object_get(rec, "id") : NULL;
		if (!id || !json_is_string(json_object_get(rec, "finish_reason"))) {
			json_decref(rec);
			cli_error("%s: line %zu: expected a record with 'id' and 'finish_reason' (is this the output of seqboat complete?); the file is left as it is",
			          r->out_path, lineno);
			rc = CLI_EXIT_DATA;
			goto done;
		}
		char *key = json_dumps(id, JSON_COMPACT | JSON_ENCODE_ANY);
		int added = key ? cli_keyset_add(&done, key, strlen(key)) : -1;
		free(key);
		json_decref(rec);
		if (added < 0)
			goto nomem;
		keep = total;
	}
	if (got == -1) {
		cli_error("%s: read error: %s", r->out_path, strerror(errno));
		rc = CLI_EXIT_IO;
		goto done;
	}
	if (got == -2)
		goto nomem;
	if (total != keep) {
		if (truncate(r->out_path, (off_t)keep) < 0) {
			cli_error("%s: cannot repair the torn last line: %s", r->out_path, strerror(errno));
			rc = CLI_EXIT_IO;
			goto done;
		}
		fprintf(stderr, "seqboat: %s: removed a torn last line of %llu bytes\n", r->out_path,
		        total - keep);
	}
	for (size_t i = 0; i < r->n_items; i++)
		if (cli_keyset_has(&done, r->items[i].key, strlen(r->items[i].key)))
			r->items[i].done = true;
	goto done;
nomem:
	cli_error("%s: out of memory reading the records", r->out_path);
	rc = CLI_EXIT_SOFTWARE;
done:
	cli_keyset_free(&done);
	cli_lines_free(rd);
	fclose(f);
	return rc;
}

/* Valid UTF-8 for jansson: invalid bytes become '?' (error messages may
 * quote input bytes). */
static json_t *json_text(const char *s, size_t n)
{
	json_t *j = json_stringn(s, n);
	if (j)
		return j;
	char *c = malloc(n + 1);
	if (!c)
		return NULL;
	memcpy(c, s, n);
	for (size_t at = 0; at < n;) {
		size_t ok = sb_utf8_valid(c + at, n - at);
		at += ok;
		if (at < n)
			c[at++] = '?';
	}
	j = json_stringn(c, n);
	free(c);
	return j;
}

typedef struct result {
	const char *finish;      /* "stop", "length", "error" */
	const char *text;
	size_t text_len;
	size_t prompt_tokens, completion_tokens;
	double prompt_s, gen_s;
	const char *error;
} result;

static char *make_record(const run *r, const item *it, const result *res)
{
	json_t *o = json_object();
	json_object_set(o, "id", it->id);
	json_object_set_new(o, "completion", json_text(res->text ? res->text : "", res->text_len));
	json_object_set_new(o, "finish_reason", json_string(res->finish));
	json_object_set_new(o, "prompt_tokens", json_integer((json_int_t)res->prompt_tokens));
	json_object_set_new(o, "completion_tokens", json_integer((json_int_t)res->completion_tokens));
	json_object_set_new(o, "seed", json_integer((json_int_t)it->seed));
	if (r->timings && !res->error) {
		double tps = res->gen_s > 0 ? (double)res->completion_tokens / res->gen_s : 0;
		json_t *t = json_object();
		json_object_set_new(t, "prompt_ms", json_real(res->prompt_s * 1e3));
		json_object_set_new(t, "generation_ms", json_real(res->gen_s * 1e3));
		json_object_set_new(t, "tokens_per_s", json_real(tps));
		json_object_set_new(o, "timings", t);
	}
	if (res->error)
		json_object_set_new(o, "error", json_text(res->error, strlen(res->error)));
	char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
	json_decref(o);
	return s;
}

static void error_record(run *r, item *it, const char *msg)
{
	result res = {.finish = "error", .error = msg};
	it->record = make_record(r, it, &res);
	r->n_errors++;
}

static void fmt_duration(char *b, size_t n, double s)
{
	if (s < 0 || s > 1e8)
		snprintf(b, n, "?");
	else if (s < 60)
		snprintf(b, n, "%.0fs", s);
	else if (s < 3600)
		snprintf(b, n, "%dm%02ds", (int)s / 60, (int)s % 60);
	else
		snprintf(b, n, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
}

static void show_progress(run *r, size_t done, size_t total, bool final)
{
	double el = cli_now() - r->t_start;
	double tps = el > 0 ? (double)r->gen_tokens / el : 0;
	char eta[32];
	fmt_duration(eta, sizeof eta, done ? el / (double)done * (double)(total - done) : -1);
	fprintf(stderr, "\r\033[Kcomplete: %zu/%zu items, %.1f tokens/s, eta %s%s", done, total,
	        tps, eta, final ? "\n" : "");
	fflush(stderr);
}

/* Writes the finished records that come next in input order. Returns 0 or
 * an exit status. */
static int write_ready(run *r, size_t *next_write, size_t admitted, size_t *written)
{
	while (*next_write < admitted) {
		item *it = &r->items[*next_write];
		if (!it->done && !it->record)
			break;
		if (it->record && !r->text) {
			size_t n = strlen(it->record);
			it->record[n] = '\n';
			/* One write per record keeps a kill from splitting it
			 * anywhere but at the end, which --resume repairs. */
			if (fwrite(it->record, 1, n + 1, r->out) != n + 1 || fflush(r->out) == EOF) {
				cli_error("%s: write failed: %s", r->out_path ? r->out_path : "standard output",
				          strerror(errno));
				return CLI_EXIT_IO;
			}
			it->record[n] = 0;
		}
		if (!it->done)
			(*written)++;
		free(it->record);
		it->record = NULL;
		it->done = true;
		(*next_write)++;
	}
	return 0;
}

static int prefill_prefix(run *r)
{
	char *text = NULL;
	size_t len = 0;
	int rc = 0;
	sb_error err = {0};
	if (r->prefix_file) {
		if ((rc = cli_read_file(r->prefix_file, CLI_LIMIT_PROMPT, "a prompt prefix", &text, &len)))
			return rc;
	} else if (r->system) {
		len = strlen(r->system);
		if (!(text = malloc(len + 1)))
			goto nomem;
		memcpy(text, r->system, len + 1);
	} else {
		return 0;
	}
	if (sb_tokenizer_encode(r->tok, text, len, true, &r->prefix_ids, &r->n_prefix, &err) < 0) {
		sb_error_prefix(&err, r->prefix_file ? r->prefix_file : "--system");
		rc = cli_fail(&err);
		goto done;
	}
	if (!r->n_prefix)
		goto done;
	if (!(r->base = sb_ctx_state_new(r->ctx, &err))) {
		rc = cli_fail(&err);
		goto done;
	}
	if (!(r->base_logits = malloc((size_t)r->V * sizeof *r->base_logits)))
		goto nomem;
	sb_outputs o = {.last_logits = r->base_logits};
	if (sb_prefill(r->ctx, r->base, r->prefix_ids, r->n_prefix, &o, &err) < 0)
		rc = cli_fail(&err);
	goto done;
nomem:
	cli_error("out of memory");
	rc = CLI_EXIT_SOFTWARE;
done:
	free(text);
	return rc;
}

/* One item on the scheduler: its text as it streams, for the record. */
typedef struct job {
	run *r;
	item *it;
	buf out;
	cli_escaper esc;
	bool oom;                /* the text did not fit in memory */
} job;

static int on_token(const sb_seq_token *t)
{
	job *j = t->user;
	run *r = j->r;
	if (t->token >= 0)
		r->gen_tokens++;
	if (t->text_len) {
		if (buf_add(&j->out, t->text, t->text_len) < 0)
			j->oom = true;
		if (r->text) {
			if (r->escape)
				cli_write_escaped(r->out, &j->esc, t->text, t->text_len);
			else
				fwrite(t->text, 1, t->text_len, r->out);
			fflush(r->out);
		}
	}
	/* Ctrl-C ends a streamed text; a batch finishes what is under way. */
	return r->text && interrupted;
}

static void submit_more(run *r);

static void on_done(const sb_seq_result *res)
{
	job *j = res->user;
	run *r = j->r;
	item *it = j->it;
	if (r->text) {
		cli_escaper_finish(r->out, &j->esc);
		fputc('\n', r->out);
		fflush(r->out);
	}
	if (res->finish == SB_FINISH_ERROR || j->oom) {
		const char *msg = j->oom ? "out of memory" : res->error->msg;
		if (r->text)
			cli_error("item %s: %s", it->key, msg);
		error_record(r, it, msg);
	} else {
		result rr = {
			/* A cancelled item is one a Ctrl-C cut short. */
			.finish = res->finish == SB_FINISH_LENGTH || res->finish == SB_FINISH_CANCELLED
			                  ? "length" : "stop",
			.text = j->out.p,
			.text_len = j->out.len,
			.prompt_tokens = res->prompt_tokens,
			.completion_tokens = res->completion_tokens,
			.prompt_s = res->prompt_s,
			.gen_s = res->gen_s,
		};
		it->record = make_record(r, it, &rr);
		if (!it->record)
			r->n_errors++;
	}
	r->live--;
	free(j->out.p);
	free(j);
	submit_more(r);
}

/* Hands the next item to the scheduler. Returns false if it did not become
 * a sequence (its error record is made). */
static bool submit_item(run *r, item *it)
{
	sb_error err = {0};
	int32_t *ids = NULL;
	size_t n = 0;
	job *j = NULL;
	if (sb_tokenizer_encode(r->tok, it->prompt, strlen(it->prompt), r->base == NULL,
	                        &ids, &n, &err) < 0)
		goto fail;
	if (!n && !r->base) {
		sb_error_set(&err, SB_ERR_ARG, "the prompt is empty and the model has no beginning-of-sequence token");
		goto fail;
	}
	if (!(j = calloc(1, sizeof *j))) {
		sb_error_set(&err, SB_ERR_NOMEM, "out of memory");
		goto fail;
	}
	j->r = r;
	j->it = it;
	if (r->echo) {
		if (r->escape)
			cli_write_escaped(r->out, &j->esc, it->prompt, strlen(it->prompt));
		else
			fputs(it->prompt, r->out);
		fflush(r->out);
	}
	sb_seq_params p = sb_seq_default_params();
	p.tokens = ids;
	p.n_tokens = n;
	p.start = r->base;
	p.start_logits = r->base_logits;
	p.history = r->prefix_ids;
	p.n_history = r->n_prefix;
	p.sampler = it->sp;
	p.max_tokens = it->max_tokens;
	p.stops = it->stops;
	p.n_stops = it->n_stops;
	/* A completion continues its prompt: keep its first space. */
	p.text_at_start = false;
	p.on_token = on_token;
	p.on_done = on_done;
	p.user = j;
	if (sb_sched_submit(r->sched, &p, NULL, &err) < 0)
		goto fail;
	free(ids);
	r->live++;
	return true;
fail:
	free(ids);
	if (j) {
		free(j->out.p);
		free(j);
	}
	if (r->text)
		cli_error("item %s: %s", it->key, err.msg);
	error_record(r, it, err.msg);
	return false;
}

/* Keeps every slot busy: as one item finishes the next one is submitted,
 * so it takes the freed slot at the next step. Also writes the records
 * that are ready and shows the progress. */
static void submit_more(run *r)
{
	while (r->live < r->nslots && r->next < r->n_items && !interrupted && !r->rc) {
		item *it = &r->items[r->next++];
		if (it->done)
			continue;
		if (it->error) {
			if (r->text)
				cli_error("%s", it->error);
			error_record(r, it, it->error);
			continue;
		}
		submit_item(r, it);
	}
	if (!r->rc && (r->rc = write_ready(r, &r->next_write, r->next, &r->written)))
		sb_sched_cancel_all(r->sched);
	if (r->progress && cli_now() - r->last_progress > 0.25) {
		r->last_progress = cli_now();
		show_progress(r, r->written, r->total, false);
	}
}

static int generate(run *r)
{
	sb_error err = {0};
	size_t nslots = 1;
	if (!r->text) {
		size_t cap = sb_ctx_max_batch(r->ctx);
		nslots = r->batch > 0 ? (size_t)r->batch : 8;
		if (nslots > cap)
			nslots = cap ? cap : 1;
	}
	if (nslots > r->n_items && r->n_items)
		nslots = r->n_items;
	sb_sched_params sp = sb_sched_default_params();
	sp.max_batch = nslots;
	sp.eos_id = r->eos;
	sp.text = sb_tokenizer_sched_text(r->tok);
	if (!(r->sched = sb_sched_new(r->ctx, &sp, &err)))
		return cli_fail(&err);
	r->nslots = nslots;
	for (size_t i = 0; i < r->n_items; i++)
		r->total += !r->items[i].done;
	r->t_start = cli_now();
	submit_more(r);
	int rc = sb_sched_run(r->sched, &err);
	sb_sched_free(r->sched);
	r->sched = NULL;
	if (rc < 0)
		return cli_fail(&err);
	if (r->rc)
		return r->rc;
	rc = write_ready(r, &r->next_write, r->next, &r->written);
	if (r->progress)
		show_progress(r, r->written, r->total, true);
	return rc;
}

static bool same_file(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

static int parse_fmt(const char *flag, const char *v, fmt *out)
{
	if (!strcmp(v, "auto"))
		*out = FMT_AUTO;
	else if (!strcmp(v, "text"))
		*out = FMT_TEXT;
	else if (!strcmp(v, "jsonl") || !strcmp(v, "json"))
		*out = FMT_JSONL;
	else {
		cli_error("%s: expected auto, text or jsonl, got '%s'", flag, v);
		return CLI_EXIT_USAGE;
	}
	return 0;
}

/* --shard K/N: 0 <= K < N. */
static int parse_shard(const char *v, size_t *k, size_t *n)
{
	const char *slash = strchr(v, '/');
	char kbuf[32];
	long kk, nn;
	if (!slash || (size_t)(slash - v) >= sizeof kbuf) {
		cli_error("--shard: expected K/N (this task's number K from 0 to N-1, of N shards), got '%s'", v);
		return CLI_EXIT_USAGE;
	}
	memcpy(kbuf, v, (size_t)(slash - v));
	kbuf[slash - v] = 0;
	if (!cli_parse_long("--shard (N)", slash + 1, 1, 1L << 30, &nn) ||
	    !cli_parse_long("--shard (K)", kbuf, 0, nn - 1, &kk))
		return CLI_EXIT_USAGE;
	*k = (size_t)kk;
	*n = (size_t)nn;
	return 0;
}

static int parse_args(run *r, int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = NULL;
		int st = 0;
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return -1;
		}
		int g = cli_gen_parse(&r->g, argc, argv, &i);
		if (g < 0)
			return -g;
		if (g > 0)
			continue;
#define FLAG(s, l) cli_flag_value(argc, argv, &i, s, l, &v, &st)
		if (FLAG("-p", "--prompt")) {
			if (st)
				return st;
			const char **p = realloc(r->prompts, (r->n_prompts + 1) * sizeof *p);
			if (!p) {
				cli_error("out of memory");
				return CLI_EXIT_SOFTWARE;
			}
			p[r->n_prompts++] = v;
			r->prompts = p;
		} else if (FLAG("-f", "--file")) {
			if (st)
				return st;
			r->in_path = v;
		} else if (FLAG("-o", "--output")) {
			if (st)
				return st;
			r->out_path = v;
		} else if (FLAG(NULL, "--format")) {
			if (st || (st = parse_fmt("--format", v, &r->out_fmt)))
				return st;
		} else if (FLAG(NULL, "--format-in")) {
			if (st || (st = parse_fmt("--format-in", v, &r->in_fmt)))
				return st;
		} else if (FLAG(NULL, "--system")) {
			if (st)
				return st;
			r->system = v;
		} else if (FLAG(NULL, "--prefix-file")) {
			if (st)
				return st;
			r->prefix_file = v;
		} else if (FLAG(NULL, "--batch")) {
			if (st)
				return st;
			if (!cli_parse_int("--batch", v, 1, 1 << 16, &r->batch))
				return CLI_EXIT_USAGE;
		} else if (FLAG(NULL, "--shard")) {
			if (st || (st = parse_shard(v, &r->shard_k, &r->shard_n)))
				return st;
		} else if (!strcmp(a, "--resume")) {
			r->resume = true;
		} else if (!strcmp(a, "--echo")) {
			r->echo = true;
		} else if (!strcmp(a, "--no-timings")) {
			r->timings = false;
		} else if (a[0] == '-' && a[1]) {
			cli_error("complete: unknown option '%s' (see 'seqboat complete --help')", a);
			return CLI_EXIT_USAGE;
		} else {
			cli_error("complete: unexpected argument '%s' (prompts go after -p)", a);
			return CLI_EXIT_USAGE;
		}
#undef FLAG
	}
	if (r->n_prompts && r->in_path) {
		cli_error("complete: give prompts with -p or with -f, not both");
		return CLI_EXIT_USAGE;
	}
	if (r->system && r->prefix_file) {
		cli_error("complete: give --system or --prefix-file, not both");
		return CLI_EXIT_USAGE;
	}
	if (r->resume && !r->out_path) {
		cli_error("complete: --resume needs -o FILE (the records to continue)");
		return CLI_EXIT_USAGE;
	}
	return 0;
}

/* Refuses an output file that is the input (it would be read while it is
 * being appended to). */
static int check_paths(run *r)
{
	struct stat in, out;
	if ((r->out_path && !*r->out_path) || (r->in_path && !*r->in_path)) {
		cli_error("complete: %s: empty file name", r->out_path && !*r->out_path ? "-o" : "-f");
		return CLI_EXIT_USAGE;
	}
	if (!r->out_path || stat(r->out_path, &out) < 0)
		return 0;
	bool have_in = false;
	if (r->in_path && strcmp(r->in_path, "-"))
		have_in = stat(r->in_path, &in) == 0;
	else if (!r->n_prompts)
		have_in = fstat(STDIN_FILENO, &in) == 0;
	if (have_in && same_file(&in, &out)) {
		cli_error("%s: the output file is the input file; choose another -o", r->out_path);
		return CLI_EXIT_USAGE;
	}
	return 0;
}

static int read_input(run *r)
{
	if (r->n_prompts) {
		size_t cap = 0;
		for (size_t i = 0; i < r->n_prompts; i++) {
			if (!in_shard(r, i))
				continue;
			if (add_item(r, &cap, i + 1) < 0 ||
			    !(r->items[r->n_items - 1].prompt = xstrdup(r->prompts[i]))) {
				cli_error("out of memory");
				return CLI_EXIT_SOFTWARE;
			}
		}
		return 0;
	}
	const char *path = r->in_path ? r->in_path : "-";
	if (!strcmp(path, "-") && cli_isatty(stdin)) {
		cli_error("complete: no prompts (use -p TEXT, -f FILE, or pipe them in)");
		return CLI_EXIT_USAGE;
	}
	FILE *in = strcmp(path, "-") ? fopen(path, "rb") : stdin;
	if (!in) {
		cli_error("%s: cannot open: %s", path, strerror(errno));
		return CLI_EXIT_IO;
	}
	int rc = load_items(r, in, path);
	if (in != stdin)
		fclose(in);
	return rc;
}

int cmd_complete(int argc, char **argv)
{
	run r;
	memset(&r, 0, sizeof r);
	cli_gen_init(&r.g, 256);
	/* Batch runs repeat by default: the base seed is 0 unless given. */
	r.g.sp.seed = 0;
	r.timings = true;
	int rc = parse_args(&r, argc, argv);
	if (rc) {
		rc = rc < 0 ? 0 : rc;
		goto done;
	}
	if ((rc = check_paths(&r)) || (rc = read_input(&r)) || (rc = finish_items(&r)))
		goto done;
	if (r.resume && (rc = resume_from(&r)))
		goto done;

	bool to_tty = !r.out_path && cli_isatty(stdout);
	/* One -p asks for its text, wherever stdout goes; several prompts, a
	 * file of them or -o ask for records. */
	if (r.out_fmt == FMT_AUTO)
		r.text = r.n_prompts == 1 && !r.out_path;
	else
		r.text = r.out_fmt == FMT_TEXT;
	if (r.text && r.resume) {
		cli_error("complete: --resume works on JSONL records, not --format text");
		rc = CLI_EXIT_USAGE;
		goto done;
	}
	if (r.echo && !r.text) {
		cli_error("complete: --echo applies to text output (one -p, or --format text)");
		rc = CLI_EXIT_USAGE;
		goto done;
	}
	r.escape = r.text && to_tty;
	r.progress = !r.text && cli_isatty(stderr) && (r.out_path || !cli_isatty(stdout));

	if ((rc = cli_gen_open(&r.g, &r.model, &r.tok, &r.ctx)))
		goto done;
	r.V = sb_model_config(r.model)->vocab_size;
	r.eos = cli_gen_eos(r.model, r.tok);
	if ((rc = prefill_prefix(&r)))
		goto done;

	if (r.out_path) {
		r.out = fopen(r.out_path, "ab");
		if (!r.out) {
			cli_error("%s: cannot open for appending: %s", r.out_path, strerror(errno));
			rc = CLI_EXIT_IO;
			goto done;
		}
	} else {
		r.out = stdout;
	}

	struct sigaction sa, old;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_sigint;
	sigemptyset(&sa.sa_mask);
	/* The second Ctrl-C finds the default action again and ends the run. */
	sa.sa_flags = SA_RESETHAND;
	sigaction(SIGINT, &sa, &old);
	rc = generate(&r);
	sigaction(SIGINT, &old, NULL);
	if (!rc && interrupted) {
		cli_error("interrupted: the items under way were finished and written");
		rc = CLI_EXIT_INTERRUPTED;
	} else if (!rc && r.n_errors) {
		rc = CLI_EXIT_DATA;
	}
done:
	if (r.out && r.out != stdout && fclose(r.out) == EOF && !rc) {
		cli_error("%s: write failed: %s", r.out_path, strerror(errno));
		rc = CLI_EXIT_IO;
	}
	for (size_t i = 0; i < r.n_items; i++)
		item_free(&r.items[i]);
	free(r.items);
	free(r.prompts);
	free(r.prefix_ids);
	free(r.base_logits);
	sb_state_free(r.base);
	sb_ctx_free(r.ctx);
	sb_tokenizer_free(r.tok);
	sb_model_free(r.model);
	cli_gen_free(&r.g);
	return rc;
}
