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
 * item produces.
 *
 * The input is read as a stream, twice, a line at a time. The first pass
 * takes its fingerprint and number of items (recorded beside -o, compared
 * by --resume, and one item alone takes the base seed) and the act_bias
 * values its items use. The second reads the items as the batch takes
 * them: memory is bounded by the batch (a window of the items read and not
 * yet written, at most 16 per slot and 64 more) plus, for JSONL, a hash set
 * of the ids read so far (a repeated id is an error) and, with --resume,
 * one of the ids the output holds. Standard input that is not a regular
 * file is copied to a temporary file for the second pass. The router shift
 * is one per batch, so several act_bias values need one pass each: then
 * every item is held until the run ends, counted against --mem. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "gen.h"
#include "keyset.h"
#include "lines.h"
#include "scheduler.h"
#include "settings.h"
#include "template.h"

/* The one global the conventions allow: how many SIGINTs arrived. */
static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
	(void)sig;
	interrupted = 1;
}

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
	int32_t *bias_ids;       /* (n_bias) the record's logit_bias with --logit-bias's */
	float *bias_values;      /* (n_bias) */
	size_t n_bias;
	float act_bias;          /* the record's act_bias, else --act-bias */
	bool logprobs;           /* report each token's log-probability */
	bool ignore_eos;         /* llama-server's ignore_eos */
	int top_logprobs;        /* ... and this many alternatives */
	bool submitted;          /* handed to the scheduler (or made an error record) */
	bool dup;                /* its id was an earlier item's */
	int batch;               /* an OpenAI batch line: BATCH_COMPLETIONS or BATCH_CHAT */
	json_t *messages;        /* BATCH_CHAT: the request's messages */
	size_t index;            /* position in the whole input, 1-based */
	size_t lineno;           /* its input line (for -p, its position) */
	bool done;               /* --resume found it in the output file */
	char *record;            /* the finished record, until written */
} item;

enum { BATCH_NONE, BATCH_COMPLETIONS, BATCH_CHAT };

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
	bool resume_force;       /* --resume-force: continue even with other settings */
	uint64_t input_hash;     /* FNV-1a over the input's item lines (all shards) */
	size_t n_kept_errors;    /* --resume: error records of the earlier run, kept */
	cli_keyset done_ids;     /* --resume: the ids the output file holds */
	cli_keyset error_ids;    /* ... those of its error records */
	bool timings;
	const char *system;      /* --system */
	const char *prefix_file; /* --prefix-file */
	int batch;               /* 0: automatic */
	size_t shard_k, shard_n; /* --shard K/N; shard_n 0: every item */
	size_t n_input;          /* items in the whole input (before --shard) */
	size_t n_shard;          /* ... of them this run's */

	/* The items read and not yet written: a window over the input, read
	 * as the batch takes items and dropped as their records are written
	 * (every item at once only with several act_bias values). */
	item **win;              /* (win_n) the items from win_first (0-based, of this shard) */
	size_t win_first, win_n, win_cap;
	bool hold_all;           /* several act_bias values: one pass each over every item */
	size_t n_bias_seen;
	float bias0;             /* the first act_bias of an item */
	/* the input, read a second time as the items are generated: */
	FILE *in;
	bool in_owned;           /* in is ours to close (a file, or a spool of standard input) */
	const char *in_name;
	cli_lines *rd;
	fmt in_found;            /* what the first pass found the input to be */
	size_t index;            /* items of the whole input read so far */
	size_t prompt_i;         /* -p: the next one */
	uint64_t hash_again;     /* the input's fingerprint, read again */
	bool eof;
	size_t held_over;        /* hold_all: the line where the items pass --mem, or 0 */
	cli_keyset ids;          /* JSONL: every id read so far, with its position */
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
	float pass_bias;         /* the act_bias of the items this pass submits */
	cli_template tpl;        /* how /v1/chat/completions messages are laid out */
	float base_bias;         /* the act_bias the prefix state was read with */
	size_t next_write, written, total;
	size_t win_limit;        /* the most items the window holds (one act_bias) */
	bool cancelled;          /* r->rc ended the sequences under way */
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
	        "with any of top_k, top_p, min_p, repeat_penalty, repeat_last_n,\n"
	        "presence_penalty, frequency_penalty, act_bias, ignore_eos; OpenAI's and\n"
	        "llama-server's names are read too: temperature (temp), n_predict and\n"
	        "max_completion_tokens (max_tokens), logit_bias as {\"ID\": X} or [[ID, X],\n"
	        "[ID, false]...] (added to --logit-bias), logprobs (true, or a count) with\n"
	        "top_logprobs or n_probs (0-20): the record gets \"logprobs\": {\"content\":\n"
	        "[{token, id, logprob, top_logprobs}...]}; model and user are ignored.\n"
	        "An OpenAI batch line {\"custom_id\", \"method\": \"POST\", \"url\":\n"
	        "\"/v1/completions\" or \"/v1/chat/completions\", \"body\": {request}} gets an\n"
	        "OpenAI batch output line {\"id\", \"custom_id\", \"response\": {\"status_code\",\n"
	        "\"request_id\", \"body\"}, \"error\"}: the body as those endpoints answer\n"
	        "(status 400 and an error body for a request that cannot run); chat messages\n"
	        "are laid out with the model's chat template, as chat does. Blank lines are\n"
	        "skipped; an item without an id is given its line number (a batch line is\n"
	        "named by its custom_id); a line whose id cannot be read, or that repeats\n"
	        "an earlier line's id, gets an error record with the id {\"line\": N}, which\n"
	        "no line can hold.\n\n"
	        "Output: a single -p prompt streams its completion as text to standard\n"
	        "output (a terminal, a pipe or a file alike), flushed per token and ended\n"
	        "with a newline; the prompt is not repeated unless --echo is given.\n"
	        "Several -p, a file of prompts, -o or --format jsonl give one JSON record\n"
	        "per item, in input order: id, completion, finish_reason (stop, length,\n"
	        "error), prompt_tokens, completion_tokens, seed, base_seed, timings, error.\n"
	        "--no-timings also leaves out a batch body's \"created\" (so runs compare).\n\n"
	        "options:\n"
	        "  -p, --prompt TEXT        a prompt (repeatable)\n"
	        "  -f, --file FILE          prompts from FILE ('-' for standard input)\n"
	        "      --format-in F        what the input is: auto (default: JSONL if its first\n"
	        "                           item line starts with '{', else text), text or jsonl\n"
	        "      --format F           what to write: auto (default: text for one -p, else\n"
	        "                           jsonl), text or jsonl\n"
	        "      --echo               text output: print the prompt before its completion\n"
	        "  -o, --output FILE        append records to FILE, flushed as each finishes\n"
	        "      --resume             skip the ids FILE (-o) already holds; refused when\n"
	        "                           FILE.settings.json (written beside FILE by every -o\n"
	        "                           run) shows other settings, model or input; error\n"
	        "                           records are kept, and the run exits 65 for them\n"
	        "      --resume-force       --resume even with other settings (mixes the runs)\n"
	        "      --no-timings         leave timings out of the records\n"
	        "      --system TEXT        a prefix read once before every prompt\n"
	        "      --prefix-file FILE   the same, from a file\n"
	        "      --batch N            decode up to N items together (default: automatic)\n"
	        "      --shard K/N          only the items whose position among the input's\n"
	        "                           items is K mod N (0 <= K < N); records and seeds are\n"
	        "                           those of the whole run ('seqboat merge' joins shards);\n"
	        "                           needs --seed, which every shard must share\n"
	        "%s"
	        "  -h, --help               show this help\n\n"
	        "Seeds (as in chat, and llama.cpp): without --seed the base seed is random;\n"
	        "every record holds it as \"base_seed\" and its own as \"seed\". With one\n"
	        "prompt the item's seed is the base seed itself; with several, each item's\n"
	        "seed is derived from the base seed and its id, so an item's output does not\n"
	        "depend on the others. A record's \"seed\" reproduces it both ways: as\n"
	        "--seed with that prompt alone, or as the \"seed\" of its JSONL record.\n"
	        "--resume without --seed continues with the base seed the file records.\n"
	        "-p and --system texts get llama.cpp's escapes (\\n, \\t, ...; --no-escape\n"
	        "keeps them literal); lines of a file do not.\n"
	        "Ctrl-C finishes the items under way, writes them and stops; a second\n"
	        "Ctrl-C aborts. Exit status: 0, 65 if some record is an error, 130 if\n"
	        "interrupted.\n",
	        cli_gen_help(256));
}

static void item_free(item *it)
{
	if (it->stop_json)
		free(it->stops);
	json_decref(it->stop_json);
	json_decref(it->messages);
	free(it->bias_ids);
	free(it->bias_values);
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
	"id, prompt, temp or temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, "
	"presence_penalty, frequency_penalty, seed, max_tokens or n_predict, stop, logit_bias, "
	"act_bias, logprobs, top_logprobs or n_probs, ignore_eos, model, user, n, stream, echo, best_of";

/* Sets (or replaces) the bias of one token in the item's list. */
static bool item_bias(item *it, int32_t id, float v)
{
	for (size_t i = 0; i < it->n_bias; i++)
		if (it->bias_ids[i] == id) {
			it->bias_values[i] = v;
			return true;
		}
	int32_t *ids = realloc(it->bias_ids, (it->n_bias + 1) * sizeof *ids);
	if (!ids)
		return false;
	it->bias_ids = ids;
	float *vals = realloc(it->bias_values, (it->n_bias + 1) * sizeof *vals);
	if (!vals)
		return false;
	it->bias_values = vals;
	ids[it->n_bias] = id;
	vals[it->n_bias++] = v;
	return true;
}

/* One logit_bias value: a number, or false for "never" (llama-server). */
static bool bias_value(json_t *v, float *out)
{
	if (json_is_false(v)) {
		*out = -INFINITY;
		return true;
	}
	if (!json_is_number(v))
		return false;
	*out = (float)json_number_value(v);
	return true;
}

/* logit_bias as OpenAI writes it ({"15043": -100, ...}) or as
 * llama-server does ([[15043, -1.5], [2, false], ...]). */
static char *item_logit_bias(item *it, json_t *v)
{
	float x;
	if (json_is_object(v)) {
		const char *k;
		json_t *e;
		json_object_foreach(v, k, e) {
			char *end;
			long id = strtol(k, &end, 10);
			if (!*k || *end || id < 0 || id > INT32_MAX)
				return xprintf("field 'logit_bias': key '%.40s' is not a token id", k);
			if (!bias_value(e, &x))
				return xprintf("field 'logit_bias': the value of '%.40s' is not a number", k);
			if (!item_bias(it, (int32_t)id, x))
				return xprintf("out of memory");
		}
		return NULL;
	}
	if (!json_is_array(v))
		return xprintf("field 'logit_bias': expected an object of token ids to numbers or an array of [id, number] pairs");
	for (size_t i = 0; i < json_array_size(v); i++) {
		json_t *pair = json_array_get(v, i);
		json_t *id = json_array_get(pair, 0);
		if (!json_is_array(pair) || json_array_size(pair) != 2 || !json_is_integer(id) ||
		    json_integer_value(id) < 0 || json_integer_value(id) > INT32_MAX ||
		    !bias_value(json_array_get(pair, 1), &x))
			return xprintf("field 'logit_bias': element %zu is not an [id, number] pair", i + 1);
		if (!item_bias(it, (int32_t)json_integer_value(id), x))
			return xprintf("out of memory");
	}
	return NULL;
}

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
		if (!strcmp(k, "id") || !strcmp(k, "prompt") || (it->batch == BATCH_CHAT && !strcmp(k, "messages")))
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
		NUM("temperature", it->sp.temp, 0, 1e6)
		NUM("act_bias", it->act_bias, -1e4, 1e4)
		NUM("top_p", it->sp.top_p, 1e-9, 1)
		NUM("min_p", it->sp.min_p, 0, 1)
		NUM("repeat_penalty", it->sp.repeat_penalty, 1e-6, 1e6)
		NUM("presence_penalty", it->sp.presence_penalty, -1e6, 1e6)
		NUM("frequency_penalty", it->sp.frequency_penalty, -1e6, 1e6)
		INT("top_k", it->sp.top_k, 0, INT_MAX)
		INT("repeat_last_n", it->sp.repeat_last_n, 0, 1 << 20)
		INT("max_tokens", it->max_tokens, -1, INT_MAX)
		INT("n_predict", it->max_tokens, -1, INT_MAX)
		INT("max_completion_tokens", it->max_tokens, -1, INT_MAX)
		INT("top_logprobs", it->top_logprobs, 0, SB_SCHED_MAX_TOP_LOGPROBS)
		INT("n_probs", it->top_logprobs, 0, SB_SCHED_MAX_TOP_LOGPROBS)
		if (!strcmp(k, "model") || !strcmp(k, "user"))
			continue; /* the loaded model answers; "user" is only a label */
		if (!strcmp(k, "n")) {
			if (!json_is_integer(v) || json_integer_value(v) != 1)
				return xprintf("field 'n': only 1 completion per record is made (give more records)");
			continue;
		}
		if (!strcmp(k, "ignore_eos")) {
			if (!json_is_boolean(v))
				return xprintf("field 'ignore_eos': expected true or false");
			it->ignore_eos = json_is_true(v);
			continue;
		}
		if (!strcmp(k, "echo") || !strcmp(k, "best_of")) {
			if (!(json_is_false(v) || (json_is_integer(v) && json_integer_value(v) == 1)))
				return xprintf("field '%s': only %s is supported", k, !strcmp(k, "echo") ? "false" : "1");
			continue;
		}
		if (!strcmp(k, "stream")) {
			if (!json_is_false(v))
				return xprintf("field 'stream': records are written whole; expected false");
			continue;
		}
		if (!strcmp(k, "logprobs")) {
			/* OpenAI's completions take a count, chat takes a boolean */
			if (json_is_boolean(v)) {
				it->logprobs = json_is_true(v);
			} else if (json_is_integer(v) && json_integer_value(v) >= 0 &&
			           json_integer_value(v) <= SB_SCHED_MAX_TOP_LOGPROBS) {
				it->logprobs = true;
				it->top_logprobs = (int)json_integer_value(v);
			} else {
				return xprintf("field 'logprobs': expected true, false or an integer from 0 to %d",
				               SB_SCHED_MAX_TOP_LOGPROBS);
			}
			continue;
		}
		if (!strcmp(k, "logit_bias")) {
			char *msg = item_logit_bias(it, v);
			if (msg)
				return msg;
			continue;
		}
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
	if (it->top_logprobs > 0)
		it->logprobs = true;
	return NULL;
}

/* An OpenAI batch line: {"custom_id": ..., "method": "POST", "url":
 * "/v1/completions" or "/v1/chat/completions", "body": {the request}}.
 * Returns an error message (malloc'd) or NULL. */
static char *batch_from_json(item *it, json_t *obj)
{
	static const char *const roles[] = {"system", "user", "assistant"};
	const char *k;
	json_t *v;
	/* a batch line's error is a batch output line too */
	it->batch = BATCH_COMPLETIONS;
	json_object_foreach(obj, k, v) {
		if (strcmp(k, "custom_id") && strcmp(k, "method") && strcmp(k, "url") && strcmp(k, "body"))
			return xprintf("unknown field '%s' of a batch line (expected custom_id, method, url, body)", k);
	}
	json_t *cid = json_object_get(obj, "custom_id"), *method = json_object_get(obj, "method");
	json_t *url = json_object_get(obj, "url"), *body = json_object_get(obj, "body");
	if (!json_is_string(cid))
		return xprintf(cid ? "field 'custom_id': expected a string" : "field 'custom_id': missing");
	if (method && (!json_is_string(method) || strcmp(json_string_value(method), "POST")))
		return xprintf("field 'method': expected \"POST\"");
	if (!json_is_string(url))
		return xprintf(url ? "field 'url': expected a string" : "field 'url': missing");
	if (!strcmp(json_string_value(url), "/v1/completions"))
		it->batch = BATCH_COMPLETIONS;
	else if (!strcmp(json_string_value(url), "/v1/chat/completions"))
		it->batch = BATCH_CHAT;
	else
		return xprintf("field 'url': expected /v1/completions or /v1/chat/completions, got '%.60s'",
		               json_string_value(url));
	if (!json_is_object(body))
		return xprintf(body ? "field 'body': expected an object (the request)" : "field 'body': missing");
	if (it->batch == BATCH_COMPLETIONS) {
		json_t *p = json_object_get(body, "prompt");
		if (!json_is_string(p) || strlen(json_string_value(p)) != json_string_length(p))
			return xprintf(p ? "field 'body.prompt': expected a string without NUL characters"
			                 : "field 'body.prompt': missing");
		it->prompt = xstrdup(json_string_value(p));
	} else {
		json_t *m = json_object_get(body, "messages");
		if (!json_is_array(m) || !json_array_size(m))
			return xprintf(m ? "field 'body.messages': expected a non-empty array" : "field 'body.messages': missing");
		for (size_t i = 0; i < json_array_size(m); i++) {
			json_t *e = json_array_get(m, i), *role = json_object_get(e, "role");
			json_t *content = json_object_get(e, "content");
			size_t r = 0;
			while (r < 3 && (!json_is_string(role) || strcmp(json_string_value(role), roles[r])))
				r++;
			if (!json_is_object(e) || r == 3)
				return xprintf("field 'body.messages': message %zu: 'role' is missing or not system, user or assistant", i + 1);
			if (!json_is_string(content) || strlen(json_string_value(content)) != json_string_length(content))
				return xprintf("field 'body.messages': message %zu: 'content' is %s", i + 1,
				               content ? "not a string (or holds a NUL)" : "missing");
		}
		it->messages = json_incref(m);
		it->prompt = xstrdup("");
	}
	if (!it->prompt)
		return xprintf("out of memory");
	return item_settings(it, body);
}

/* Parses one JSONL line into it (id defaults to the line number). */
static void item_from_json(item *it, const char *line, size_t len, size_t lineno)
{
	json_error_t je;
	json_t *obj = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
	/* the id first: an error record of this line must not take another
	 * line's id */
	json_decref(it->id);
	it->id = cli_item_id_jsonl(obj, lineno);
	if (!obj) {
		it->error = xprintf("line %zu: not valid JSON: %s (column %d)", lineno, je.text, je.column);
		return;
	}
	if (!json_is_object(obj)) {
		it->error = xprintf("line %zu: expected a JSON object", lineno);
		goto done;
	}
	if (json_object_get(obj, "custom_id") || json_object_get(obj, "body")) {
		char *msg = batch_from_json(it, obj);
		if (msg) {
			it->error = xprintf("line %zu: %s", lineno, msg);
			free(msg);
		}
		goto done;
	}
	json_t *id = json_object_get(obj, "id");
	if (id && !json_is_string(id) && !json_is_integer(id)) {
		it->error = xprintf("line %zu: field 'id': expected a string or an integer", lineno);
		goto done;
	}
	json_t *p = json_object_get(obj, "prompt");
	if (!json_is_string(p)) {
		it->error = xprintf(p ? "line %zu: field 'prompt': expected a string"
		                      : "line %zu: field 'prompt': missing (a record needs the text to complete)",
		                    lineno);
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

/* Sets an item's defaults: the index-th (1-based) of the whole input, with
 * the command line's settings. False when out of memory. */
static bool item_init(const run *r, item *it, size_t index)
{
	memset(it, 0, sizeof *it);
	it->sp = r->g.sp;
	it->act_bias = r->g.act_bias;
	it->max_tokens = r->g.max_tokens;
	it->stops = r->g.stops;
	it->n_stops = r->g.n_stops;
	it->index = index;
	it->lineno = index;
	it->id = json_integer((json_int_t)index);
	for (size_t i = 0; i < r->g.n_bias; i++)
		if (!item_bias(it, r->g.bias_ids[i], r->g.bias_values[i]))
			return false;
	return it->id != NULL;
}

/* The item at this position among the shard's items read (0-based); it
 * must still be in the window. */
static item *item_at(const run *r, size_t i)
{
	return r->win[i - r->win_first];
}

/* A new item at the end of the window; NULL when out of memory. */
static item *new_item(run *r, size_t index)
{
	if (r->win_n == r->win_cap) {
		size_t nc = r->win_cap ? r->win_cap * 2 : 64;
		item **p = realloc(r->win, nc * sizeof *p);
		if (!p)
			return NULL;
		r->win = p;
		r->win_cap = nc;
	}
	item *it = malloc(sizeof *it);
	if (!it)
		return NULL;
	bool ok = item_init(r, it, index);
	r->win[r->win_n++] = it;
	return ok ? it : NULL;
}

/* The act_bias of an item that will run: one value keeps the input a
 * stream, a second one makes the run hold every item (one pass each). */
static void note_bias(run *r, float v)
{
	if (!r->n_bias_seen++)
		r->bias0 = v;
	else if (v != r->bias0)
		r->hold_all = true;
}

/* What an item holds besides its struct and its line, about: id, key,
 * allocator headers. */
#define ITEM_OVERHEAD 96

/* One line into the spool of standard input, as the second pass must read
 * it again: a line that was too long is written too long again. */
static int spool_line(FILE *f, const char *line, size_t n, bool too_long)
{
	if (too_long) {
		char pad[4096];
		memset(pad, 'x', sizeof pad);
		for (size_t left = CLI_LINE_MAX + 1; left;) {
			size_t k = left < sizeof pad ? left : sizeof pad;
			if (fwrite(pad, 1, k, f) != k)
				return -1;
			left -= k;
		}
	} else if (n && fwrite(line, 1, n, f) != n) {
		return -1;
	}
	return fputc('\n', f) == EOF ? -1 : 0;
}

/* The first pass over the input, a line at a time: its fingerprint and
 * number of items (-o records them and --resume compares them before
 * anything is generated; one item alone takes the base seed itself), this
 * shard's number of items, and whether they use more than one act_bias.
 * With spool, every line is copied there for the second pass. Returns 0
 * or an exit status. */
static int scan_input(run *r, FILE *in, const char *path, FILE *spool)
{
	size_t index = 0, held = 0, held_max = cli_gen_mem_limit(&r->g);
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
		if (spool && spool_line(spool, line, n, too_long) < 0) {
			cli_error("%s: cannot keep the input in a temporary file to read it again: %s", path,
			          strerror(errno));
			rc = CLI_EXIT_IO;
			goto done;
		}
		if (!too_long && cli_line_blank(line, n))
			continue;
		if (f == FMT_AUTO)
			f = cli_line_is_json(line, n) ? FMT_JSONL : FMT_TEXT;
		/* every item line, in every shard, makes the input's fingerprint */
		r->input_hash = too_long ? cli_fnv64(r->input_hash, "\1too long", 9)
		                         : cli_fnv64(r->input_hash, line, n);
		r->input_hash = cli_fnv64(r->input_hash, "\n", 1);
		if (!in_shard(r, index++))
			continue;
		r->n_shard++;
		/* only held whole when several act_bias values occur */
		held += sizeof(item) + n + ITEM_OVERHEAD;
		if (held > held_max && !r->held_over)
			r->held_over = lineno;
		if (too_long)
			continue; /* an error record */
		if (f == FMT_JSONL) {
			item t;
			bool ok = item_init(r, &t, index);
			if (ok)
				item_from_json(&t, line, n, lineno);
			if (ok && !t.error)
				note_bias(r, t.act_bias);
			item_free(&t);
			if (!ok)
				goto nomem;
		} else if (!memchr(line, 0, n)) {
			note_bias(r, r->g.act_bias);
		}
	}
	r->n_input = index;
	r->in_found = f;
	rc = cli_lines_fail(got, path);
	goto done;
nomem:
	cli_error("out of memory reading the prompts");
	rc = CLI_EXIT_SOFTWARE;
done:
	cli_lines_free(rd);
	return rc;
}

/* An item's key and seed; a JSONL id that an earlier item (of any shard)
 * already has makes it an error record named by its line; --resume marks
 * the ids the output holds done. Returns -1 when out of memory. */
static int finish_item(run *r, item *it)
{
	if (!(it->key = json_dumps(it->id, JSON_COMPACT | JSON_ENCODE_ANY)))
		return -1;
	if (!it->seed_given)
		it->seed = cli_item_seed(r->g.sp.seed, it->key, strlen(it->key), r->n_input == 1);
	it->sp.seed = it->seed;
	if (!r->n_prompts && r->in_found == FMT_JSONL) {
		size_t first = 0;
		int put = cli_keyset_put(&r->ids, it->key, strlen(it->key), it->index, &first);
		if (put < 0)
			return -1;
		if (put == 0) {
			/* A repeated id stays with its first item; the later
			 * ones' error records are named by their line. */
			if (!it->error)
				it->error = xprintf("duplicate id %s (first used by item %zu)", it->key, first);
			json_decref(it->id);
			free(it->key);
			it->id = cli_line_id(it->lineno);
			it->key = it->id ? json_dumps(it->id, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
			if (!it->key)
				return -1;
		}
	}
	if (r->resume && cli_keyset_has(&r->done_ids, it->key, strlen(it->key))) {
		it->done = true;
		r->n_kept_errors += cli_keyset_has(&r->error_ids, it->key, strlen(it->key));
		if (r->total)
			r->total--;
	}
	return 0;
}

/* The second pass: the next item of this shard, read from the input and
 * put at the end of the window; NULL at the end of the input or on an
 * error (r->rc set, its line printed). */
static item *read_next(run *r)
{
	if (r->eof || r->rc)
		return NULL;
	if (r->n_prompts) {
		while (r->prompt_i < r->n_prompts) {
			size_t i = r->prompt_i++;
			if (!in_shard(r, i))
				continue;
			item *it = new_item(r, i + 1);
			if (!it || !(it->prompt = xstrdup(r->prompts[i])) || finish_item(r, it) < 0)
				goto nomem;
			return it;
		}
		r->eof = true;
		return NULL;
	}
	const char *line;
	size_t n;
	bool too_long;
	int got;
	fmt f = r->in_found;
	while ((got = cli_lines_next(r->rd, &line, &n, &too_long)) > 0) {
		size_t lineno = cli_lines_number(r->rd);
		if (!too_long && cli_line_blank(line, n))
			continue;
		r->hash_again = too_long ? cli_fnv64(r->hash_again, "\1too long", 9)
		                         : cli_fnv64(r->hash_again, line, n);
		r->hash_again = cli_fnv64(r->hash_again, "\n", 1);
		size_t index = ++r->index;
		if (!in_shard(r, index - 1)) {
			/* Another shard's item: only its id, so that a repeated id
			 * is found across shards as in one run. */
			if (f == FMT_JSONL) {
				json_t *obj = too_long ? NULL : json_loadb(line, n, JSON_REJECT_DUPLICATES, NULL);
				json_t *id = cli_item_id_jsonl(obj, lineno);
				json_decref(obj);
				char *key = id ? json_dumps(id, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
				json_decref(id);
				size_t first;
				int put = key ? cli_keyset_put(&r->ids, key, strlen(key), index, &first) : -1;
				free(key);
				if (put < 0)
					goto nomem;
			}
			continue;
		}
		item *it = new_item(r, index);
		if (!it)
			goto nomem;
		json_decref(it->id);
		it->id = too_long && f == FMT_JSONL ? cli_line_id(lineno) : json_integer((json_int_t)lineno);
		it->lineno = lineno;
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
		if (!it->id || finish_item(r, it) < 0)
			goto nomem;
		return it;
	}
	r->eof = true;
	if ((r->rc = cli_lines_fail(got, r->in_name)))
		return NULL;
	if (r->index != r->n_input || r->hash_again != r->input_hash) {
		cli_error("%s: the input changed while it was being read (it is read twice); the records written are those of the input as it was read",
		          r->in_name);
		r->rc = CLI_EXIT_IO;
	}
	return NULL;
nomem:
	cli_error("out of memory reading the prompts");
	r->eof = true;
	r->rc = CLI_EXIT_SOFTWARE;
	return NULL;
}

/* --resume without --seed: the base seed of the first record of the
 * output file, so that the rest is generated as the first run would have;
 * a random one if the file is absent or holds none. */
static uint64_t recorded_base_seed(const run *r)
{
	uint64_t seed = cli_random_seed();
	struct stat sb;
	/* only a regular file: opening a FIFO would wait for a writer (resume
	 * refuses anything else later, with its own message) */
	if (stat(r->out_path, &sb) < 0 || !S_ISREG(sb.st_mode))
		return seed;
	FILE *f = fopen(r->out_path, "rb");
	if (!f)
		return seed;
	char *line = NULL;
	size_t cap = 0;
	if (getline(&line, &cap, f) > 0) {
		json_t *rec = json_loads(line, 0, NULL);
		json_t *b = json_object_get(rec, "base_seed");
		if (json_is_integer(b) && json_integer_value(b) >= 0)
			seed = (uint64_t)json_integer_value(b);
		json_decref(rec);
	}
	free(line);
	fclose(f);
	return seed;
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
	cli_keyset *done = &r->done_ids, *errs = &r->error_ids;
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
		/* an OpenAI batch output line is named by its custom_id */
		json_t *cid = json_is_object(rec) ? json_object_get(rec, "custom_id") : NULL;
		bool batch_line = json_is_string(cid) && json_is_object(json_object_get(rec, "response"));
		json_t *id = batch_line ? cid : json_is_object(rec) ? json_object_get(rec, "id") : NULL;
		if (!id || (!batch_line && !json_is_string(json_object_get(rec, "finish_reason")))) {
			json_decref(rec);
			cli_error("%s: line %zu: expected a record with 'id' and 'finish_reason' (is this the output of seqboat complete?); the file is left as it is",
			          r->out_path, lineno);
			rc = CLI_EXIT_DATA;
			goto done;
		}
		char *key = json_dumps(id, JSON_COMPACT | JSON_ENCODE_ANY);
		int added = key ? cli_keyset_add(done, key, strlen(key)) : -1;
		bool failed = batch_line ? json_integer_value(json_object_get(json_object_get(rec, "response"),
		                                                               "status_code")) != 200
		                         : !strcmp(json_string_value(json_object_get(rec, "finish_reason")), "error");
		if (added >= 0 && failed)
			added = cli_keyset_add(errs, key, strlen(key));
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
	/* The items are marked done as they are read (finish_item). */
	goto done;
nomem:
	cli_error("%s: out of memory reading the records", r->out_path);
	rc = CLI_EXIT_SOFTWARE;
done:
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
	json_t *logprobs;        /* borrowed; NULL: not asked for */
} result;

/* OpenAI's legacy completions logprobs from our per-token list. */
static json_t *legacy_logprobs(const json_t *content)
{
	json_t *o = json_object(), *tokens = json_array(), *lps = json_array(), *tops = json_array(),
	       *offs = json_array();
	size_t off = 0;
	for (size_t i = 0; i < json_array_size(content); i++) {
		json_t *c = json_array_get(content, i), *top = json_object();
		json_t *tk = json_object_get(c, "token");
		json_array_append(tokens, tk);
		json_array_append(lps, json_object_get(c, "logprob"));
		json_t *alts = json_object_get(c, "top_logprobs");
		for (size_t k = 0; top && k < json_array_size(alts); k++) {
			json_t *a = json_array_get(alts, k);
			json_object_set(top, json_string_value(json_object_get(a, "token")),
			                json_object_get(a, "logprob"));
		}
		json_array_append_new(tops, top ? top : json_null());
		json_array_append_new(offs, json_integer((json_int_t)off));
		off += json_string_length(tk);
	}
	json_object_set_new(o, "tokens", tokens);
	json_object_set_new(o, "token_logprobs", lps);
	json_object_set_new(o, "top_logprobs", tops);
	json_object_set_new(o, "text_offset", offs);
	return o;
}

/* An OpenAI batch output line: {"id", "custom_id", "response":
 * {"status_code", "request_id", "body"}, "error": null}, the body being
 * what /v1/completions or /v1/chat/completions answers (an error body
 * with status 400 for a request that could not be run). */
static char *make_batch_record(const run *r, const item *it, const result *res)
{
	uint64_t h = cli_fnv64(CLI_FNV_START, it->key, strlen(it->key));
	char bid[48], rid[48], cid[48], fp[32];
	snprintf(bid, sizeof bid, "batch_req_%016llx", (unsigned long long)h);
	snprintf(rid, sizeof rid, "req_%016llx", (unsigned long long)h);
	snprintf(cid, sizeof cid, "%s-%016llx", it->batch == BATCH_CHAT ? "chatcmpl" : "cmpl",
	         (unsigned long long)h);
	snprintf(fp, sizeof fp, "fp_%016llx", (unsigned long long)sb_model_fingerprint(r->model));
	const sb_config *cfg = sb_model_config(r->model);
	const char *model = cfg->name[0] ? cfg->name : sb_model_dir(r->model);
	json_t *body;
	int status = 200;
	if (res->error) {
		status = 400;
		body = json_pack("{s:{s:o,s:s,s:n,s:n}}", "error", "message",
		                 json_text(res->error, strlen(res->error)), "type", "invalid_request_error",
		                 "param", "code");
	} else {
		json_t *text = json_text(res->text ? res->text : "", res->text_len);
		json_t *choice = it->batch == BATCH_CHAT
		        ? json_pack("{s:i,s:{s:s,s:o}}", "index", 0, "message", "role", "assistant", "content", text)
		        : json_pack("{s:o,s:i}", "text", text, "index", 0);
		json_object_set_new(choice, "logprobs",
		                    !res->logprobs ? json_null()
		                    : it->batch == BATCH_CHAT ? json_pack("{s:O}", "content", res->logprobs)
		                                              : legacy_logprobs(res->logprobs));
		json_object_set_new(choice, "finish_reason", json_string(res->finish));
		body = json_pack("{s:s,s:s}", "id", cid, "object",
		                 it->batch == BATCH_CHAT ? "chat.completion" : "text_completion");
		/* "created" changes from run to run: --no-timings leaves it out */
		if (r->timings)
			json_object_set_new(body, "created", json_integer((json_int_t)time(NULL)));
		json_object_set_new(body, "model", json_string(model));
		json_object_set_new(body, "system_fingerprint", json_string(fp));
		json_object_set_new(body, "choices", json_pack("[o]", choice));
		json_object_set_new(body, "usage", json_pack("{s:I,s:I,s:I}", "prompt_tokens",
		                    (json_int_t)res->prompt_tokens, "completion_tokens",
		                    (json_int_t)res->completion_tokens, "total_tokens",
		                    (json_int_t)(res->prompt_tokens + res->completion_tokens)));
		json_object_set_new(body, "seed", json_integer((json_int_t)it->seed));
		if (r->timings) {
			double tps = res->gen_s > 0 ? (double)res->completion_tokens / res->gen_s : 0;
			json_object_set_new(body, "timings", json_pack("{s:f,s:f,s:f}", "prompt_ms",
			                    res->prompt_s * 1e3, "generation_ms", res->gen_s * 1e3,
			                    "tokens_per_s", tps));
		}
	}
	json_t *o = json_pack("{s:s,s:O,s:{s:i,s:s,s:o},s:n}", "id", bid, "custom_id", it->id,
	                      "response", "status_code", status, "request_id", rid, "body", body,
	                      "error");
	char *s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6)) : NULL;
	json_decref(o);
	return s;
}

static char *make_record(const run *r, const item *it, const result *res)
{
	if (it->batch)
		return make_batch_record(r, it, res);
	json_t *o = json_object();
	json_object_set(o, "id", it->id);
	json_object_set_new(o, "completion", json_text(res->text ? res->text : "", res->text_len));
	json_object_set_new(o, "finish_reason", json_string(res->finish));
	json_object_set_new(o, "prompt_tokens", json_integer((json_int_t)res->prompt_tokens));
	json_object_set_new(o, "completion_tokens", json_integer((json_int_t)res->completion_tokens));
	json_object_set_new(o, "seed", json_integer((json_int_t)it->seed));
	json_object_set_new(o, "base_seed", json_integer((json_int_t)r->g.sp.seed));
	if (r->timings && !res->error) {
		double tps = res->gen_s > 0 ? (double)res->completion_tokens / res->gen_s : 0;
		json_t *t = json_object();
		json_object_set_new(t, "prompt_ms", json_real(res->prompt_s * 1e3));
		json_object_set_new(t, "generation_ms", json_real(res->gen_s * 1e3));
		json_object_set_new(t, "tokens_per_s", json_real(tps));
		json_object_set_new(o, "timings", t);
	}
	if (res->logprobs)
		json_object_set_new(o, "logprobs", json_pack("{s:O}", "content", res->logprobs));
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
		item *it = item_at(r, *next_write);
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

/* write_ready, then (one act_bias) the written items leave the window. */
static int write_and_drop(run *r)
{
	int rc = write_ready(r, &r->next_write, r->next, &r->written);
	if (!r->hold_all && r->next_write > r->win_first) {
		size_t k = r->next_write - r->win_first;
		for (size_t i = 0; i < k; i++) {
			item_free(r->win[i]);
			free(r->win[i]);
		}
		memmove(r->win, r->win + k, (r->win_n - k) * sizeof *r->win);
		r->win_n -= k;
		r->win_first += k;
	}
	return rc;
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
	r->base_bias = r->g.act_bias;
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
	json_t *logprobs;        /* (completion tokens) with it->logprobs */
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
	if (j->logprobs && t->token >= 0 && t->token != r->eos) {
		json_t *top = json_array();
		for (size_t k = 0; top && k < t->n_top; k++) {
			char *txt = NULL;
			size_t len = 0;
			sb_error e = {0};
			if (sb_tokenizer_decode(r->tok, &t->top[k].token, 1, &txt, &len, &e) < 0)
				len = 0;
			json_array_append_new(top, json_pack("{s:o,s:i,s:f}", "token", json_text(txt ? txt : "", len),
			                                     "id", (int)t->top[k].token, "logprob",
			                                     (double)t->top[k].logprob));
			free(txt);
		}
		json_t *e = json_pack("{s:o,s:i,s:f,s:o}", "token", json_text(t->piece, t->piece_len), "id",
		                      (int)t->token, "logprob", (double)t->logprob, "top_logprobs",
		                      top ? top : json_array());
		if (!e || json_array_append_new(j->logprobs, e))
			j->oom = true;
	}
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
			.logprobs = j->logprobs,
		};
		it->record = make_record(r, it, &rr);
		if (!it->record)
			r->n_errors++;
	}
	r->live--;
	json_decref(j->logprobs);
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
	const char *stops[64];
	size_t n_stops = 0;
	bool chat = it->batch == BATCH_CHAT;
	if (chat) {
		/* The messages as chat lays out turns (the model's template),
		 * from an empty state; the reply ends at the template's stops. */
		size_t nm = json_array_size(it->messages);
		const char **roles = malloc(nm * sizeof *roles), **texts = malloc(nm * sizeof *texts);
		if (!roles || !texts) {
			free(roles);
			free(texts);
			sb_error_set(&err, SB_ERR_NOMEM, "out of memory");
			goto fail;
		}
		for (size_t i = 0; i < nm; i++) {
			json_t *m = json_array_get(it->messages, i);
			roles[i] = json_string_value(json_object_get(m, "role"));
			texts[i] = json_string_value(json_object_get(m, "content"));
		}
		int erc = cli_template_encode_messages(r->tok, &r->tpl, roles, texts, nm, &ids, &n, &err);
		free(roles);
		free(texts);
		if (erc < 0)
			goto fail;
		for (size_t i = 0; i < it->n_stops && n_stops < 56; i++)
			stops[n_stops++] = it->stops[i];
		if (r->tpl.stop[0])
			stops[n_stops++] = r->tpl.stop;
		for (size_t i = 0; i < r->tpl.n_stops; i++)
			stops[n_stops++] = r->tpl.stops[i];
	} else if (sb_tokenizer_encode(r->tok, it->prompt, strlen(it->prompt), r->base == NULL,
	                               &ids, &n, &err) < 0) {
		goto fail;
	}
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
	if (it->logprobs && !(j->logprobs = json_array())) {
		sb_error_set(&err, SB_ERR_NOMEM, "out of memory");
		goto fail;
	}
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
	p.start = chat ? NULL : r->base;
	p.start_logits = chat ? NULL : r->base_logits;
	p.history = chat ? NULL : r->prefix_ids;
	p.n_history = chat ? 0 : r->n_prefix;
	p.sampler = it->sp;
	p.sampler.bias_ids = it->bias_ids;
	p.sampler.bias_values = it->bias_values;
	p.sampler.n_bias = it->n_bias;
	p.logprobs = it->logprobs;
	p.top_logprobs = it->top_logprobs;
	p.max_tokens = it->max_tokens;
	p.ignore_eos = it->ignore_eos;
	p.stops = chat ? stops : it->stops;
	p.n_stops = chat ? n_stops : it->n_stops;
	/* A completion continues its prompt: keep its first space; a chat
	 * reply begins a text. */
	p.text_at_start = chat;
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
		json_decref(j->logprobs);
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
	while (r->live < r->nslots && !interrupted && !r->rc) {
		item *it = NULL;
		if (r->next < r->win_first + r->win_n) {
			it = item_at(r, r->next);
		} else if (!r->hold_all) {
			/* The window is full when its first item is still under
			 * way: the rest wait for it to be written. */
			if (r->win_n >= r->win_limit && !(r->rc = write_and_drop(r)) && r->win_n >= r->win_limit)
				break;
			it = read_next(r);
		}
		if (!it)
			break;
		r->next++;
		if (it->done || it->submitted)
			continue;
		/* an item of another act_bias waits for its pass */
		if (!it->error && it->act_bias != r->pass_bias)
			continue;
		it->submitted = true;
		if (it->error) {
			if (r->text)
				cli_error("%s", it->error);
			error_record(r, it, it->error);
			continue;
		}
		submit_item(r, it);
	}
	if (!r->rc)
		r->rc = write_and_drop(r);
	if (r->rc && !r->cancelled) {
		/* a write or a read failed: end what is under way */
		r->cancelled = true;
		sb_sched_cancel_all(r->sched);
	}
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
	if (nslots > r->n_shard && r->n_shard)
		nslots = r->n_shard;
	/* The batch's states, with the shared prefix's, within --mem. */
	size_t limit = cli_gen_mem_limit(&r->g), fit = nslots;
	size_t held = r->base ? sb_state_bytes(r->model) : 0;
	if (sb_state_budget(r->model, limit > held ? limit - held : 0, "--mem", 1, nslots, &fit, &err) < 0)
		return cli_fail(&err);
	if (fit < nslots) {
		if (r->batch > 0)
			fprintf(stderr, "seqboat: --batch %d lowered to %zu: the states of more sequences exceed the memory limit of %zu bytes (--mem)\n",
			        r->batch, fit, limit);
		nslots = fit;
	}
	sb_sched_params sp = sb_sched_default_params();
	sp.max_batch = nslots;
	sp.eos_id = r->eos;
	sp.text = sb_tokenizer_sched_text(r->tok);
	if (!(r->sched = sb_sched_new(r->ctx, &sp, &err)))
		return cli_fail(&err);
	r->nslots = nslots;
	/* One act_bias: the items are read as the batch takes them, and the
	 * window of items read but not yet written holds at most this many
	 * (an item that runs long makes the next ones wait in it). */
	r->win_limit = 16 * nslots + 64;
	r->total = r->n_shard;
	r->t_start = cli_now();
	int rc = 0;
	if (r->hold_all)
		while (read_next(r))
			;
	/* One pass per act_bias (the router shift is the context's, shared by
	 * every sequence of a batch), in the order the values first appear;
	 * the records are still written in input order. With several values
	 * every item is held (read above); with one, a single pass streams. */
	for (size_t first = 0, pass = 0; rc == 0 && !interrupted && !r->rc; pass++) {
		if (r->hold_all) {
			while (first < r->win_n && (item_at(r, first)->done || item_at(r, first)->submitted))
				first++;
			if (first == r->win_n)
				break;
			r->pass_bias = item_at(r, first)->act_bias;
		} else {
			if (pass)
				break;
			r->pass_bias = r->n_bias_seen ? r->bias0 : r->g.act_bias;
		}
		sb_ctx_set_act_bias(r->ctx, r->pass_bias);
		if (r->base && r->pass_bias != r->base_bias) {
			/* the shared prefix as this pass's routers read it */
			sb_outputs o = {.last_logits = r->base_logits};
			sb_state_reset(r->base);
			if ((rc = sb_prefill(r->ctx, r->base, r->prefix_ids, r->n_prefix, &o, &err)) < 0)
				break;
			r->base_bias = r->pass_bias;
		}
		r->next = r->hold_all ? first : r->next;
		/* one act_bias: until the input ends (the scheduler returns when
		 * nothing is under way; a full window has its first item so) */
		size_t before;
		do {
			before = r->next;
			submit_more(r);
			rc = sb_sched_run(r->sched, &err);
		} while (!r->hold_all && rc == 0 && !r->eof && !interrupted && !r->rc &&
		         (r->next != before || r->live));
	}
	sb_sched_free(r->sched);
	r->sched = NULL;
	if (rc < 0)
		return cli_fail(&err);
	if (r->rc)
		return r->rc;
	rc = write_and_drop(r);
	if (r->progress)
		show_progress(r, r->written, r->total, true);
	return rc;
}

/* What changes an item's record: recorded beside the output and
 * compared by --resume. */
static json_t *run_settings(const run *r)
{
	const sb_sampler_params *sp = &r->g.sp;
	json_t *bias = json_array(), *stops = json_array();
	for (size_t i = 0; bias && i < r->g.n_bias; i++)
		json_array_append_new(bias, json_pack("[i,f]", (int)r->g.bias_ids[i], (double)r->g.bias_values[i]));
	for (size_t i = 0; stops && i < r->g.n_stops; i++)
		json_array_append_new(stops, json_string(r->g.stops[i]));
	char model[32], input[32], prefix[32];
	snprintf(model, sizeof model, "%016llx", (unsigned long long)sb_model_fingerprint(r->model));
	snprintf(input, sizeof input, "%016llx", (unsigned long long)r->input_hash);
	uint64_t ph = cli_fnv64(CLI_FNV_START, r->prefix_ids ? (const void *)r->prefix_ids : "",
	                        r->n_prefix * sizeof *r->prefix_ids);
	snprintf(prefix, sizeof prefix, "%016llx", (unsigned long long)ph);
	char shard[48] = "";
	if (r->shard_n)
		snprintf(shard, sizeof shard, "%zu/%zu", r->shard_k, r->shard_n);
	json_t *o = json_object();
	if (!o || !bias || !stops) {
		json_decref(o);
		json_decref(bias);
		json_decref(stops);
		return NULL;
	}
	json_object_set_new(o, "model_fingerprint", json_string(model));
	json_object_set_new(o, "input_fingerprint", json_string(input));
	json_object_set_new(o, "input_items", json_integer((json_int_t)r->n_input));
	json_object_set_new(o, "prefix_fingerprint", json_string(prefix));
	json_object_set_new(o, "shard", r->shard_n ? json_string(shard) : json_null());
	json_object_set_new(o, "base_seed", json_integer((json_int_t)sp->seed));
	json_object_set_new(o, "max_tokens", json_integer(r->g.max_tokens));
	json_object_set_new(o, "temp", json_real(sp->temp));
	json_object_set_new(o, "top_k", json_integer(sp->top_k));
	json_object_set_new(o, "top_p", json_real(sp->top_p));
	json_object_set_new(o, "min_p", json_real(sp->min_p));
	json_object_set_new(o, "repeat_penalty", json_real(sp->repeat_penalty));
	json_object_set_new(o, "repeat_last_n", json_integer(sp->repeat_last_n));
	json_object_set_new(o, "presence_penalty", json_real(sp->presence_penalty));
	json_object_set_new(o, "frequency_penalty", json_real(sp->frequency_penalty));
	json_object_set_new(o, "logit_bias", bias);
	json_object_set_new(o, "stop", stops);
	json_object_set_new(o, "act_bias", json_real(r->g.act_bias));
	json_object_set_new(o, "timings", json_boolean(r->timings));
	return o;
}

/* -o: records the settings beside the output; --resume first compares
 * them with those recorded. */
static int check_settings(run *r)
{
	char *path = cli_settings_path(r->out_path);
	json_t *now = run_settings(r);
	int rc = 0;
	if (!path || !now) {
		cli_error("out of memory");
		rc = CLI_EXIT_SOFTWARE;
	} else if (r->resume && (rc = cli_settings_check(path, now, r->resume_force))) {
		/* refused: nothing touched */
	} else if (!r->resume_force) {
		rc = cli_settings_write(path, now);
	}
	free(path);
	json_decref(now);
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
		} else if (!strcmp(a, "--resume-force")) {
			r->resume = true;
			r->resume_force = true;
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
	if (r->shard_n && !r->g.seed_set) {
		cli_error("complete: --shard needs --seed N (the shards must share one base seed)");
		return CLI_EXIT_USAGE;
	}
	int st = cli_gen_finish(&r->g);
	if (st)
		return st;
	if (r->g.escape) {
		for (size_t i = 0; i < r->n_prompts; i++)
			cli_unescape((char *)r->prompts[i]);
		if (r->system)
			cli_unescape((char *)r->system);
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

/* The first pass over the input (see scan_input); the items themselves
 * are read in the second, as they are generated. Standard input that is
 * not a regular file is kept in a temporary file for that. */
static int read_input(run *r)
{
	if (r->n_prompts) {
		r->n_input = r->n_prompts;
		for (size_t i = 0; i < r->n_prompts; i++) {
			r->input_hash = cli_fnv64(cli_fnv64(r->input_hash, r->prompts[i], strlen(r->prompts[i])),
			                          "\n", 1);
			r->n_shard += in_shard(r, i);
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
	r->in_name = path;
	r->in = in;
	r->in_owned = in != stdin;
	struct stat sb;
	off_t start = 0;
	FILE *spool = NULL;
	if (fstat(fileno(in), &sb) < 0 || !S_ISREG(sb.st_mode) || (start = ftello(in)) < 0) {
		if (!(spool = tmpfile())) {
			cli_error("%s: cannot make a temporary file to read the input twice: %s", path,
			          strerror(errno));
			return CLI_EXIT_IO;
		}
	}
	int rc = scan_input(r, in, path, spool);
	if (spool) {
		if (r->in_owned)
			fclose(in);
		r->in = spool;
		r->in_owned = true;
		if (!rc && fflush(spool) == EOF) {
			cli_error("%s: cannot keep the input in a temporary file to read it again: %s", path,
			          strerror(errno));
			rc = CLI_EXIT_IO;
		}
	}
	if (rc)
		return rc;
	if (fseeko(r->in, spool ? 0 : start, SEEK_SET) < 0) {
		cli_error("%s: cannot read the input again: %s", path, strerror(errno));
		return CLI_EXIT_IO;
	}
	if (!(r->rd = cli_lines_new(r->in))) {
		cli_error("out of memory reading the prompts");
		return CLI_EXIT_SOFTWARE;
	}
	/* Several act_bias values: one pass each, over items held whole until
	 * the run ends; their memory counts against --mem, and an input that
	 * would exceed it is refused before anything is generated. */
	if (r->hold_all && r->held_over) {
		cli_error("%s: line %zu: the input's items (with several act_bias values, held until the run ends) need more than %zu bytes, the memory limit (--mem); split it with --shard K/N, by act_bias, or raise --mem",
		          path, r->held_over, cli_gen_mem_limit(&r->g));
		return CLI_EXIT_DATA;
	}
	return 0;
}

int cmd_complete(int argc, char **argv)
{
	run r;
	memset(&r, 0, sizeof r);
	cli_gen_init(&r.g, 256);
	r.timings = true;
	r.input_hash = CLI_FNV_START;
	r.hash_again = CLI_FNV_START;
	int rc = parse_args(&r, argc, argv);
	if (rc) {
		rc = rc < 0 ? 0 : rc;
		goto done;
	}
	if (!r.g.seed_set)
		r.g.sp.seed = r.resume ? recorded_base_seed(&r) : cli_random_seed();
	if ((rc = check_paths(&r)) || (rc = read_input(&r)))
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
	cli_template_for_model(&r.tpl, sb_model_config(r.model), r.tok);
	if ((rc = prefill_prefix(&r)))
		goto done;
	/* The settings are compared before the records are touched. */
	if (r.out_path && (rc = check_settings(&r)))
		goto done;
	if (r.resume && (rc = resume_from(&r)))
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
	/* An error record stays: the file only grows, and a second record of
	 * the same id would make two answers. The run ends with 65 as the one
	 * that wrote it did. */
	if (r.n_kept_errors)
		fprintf(stderr, "seqboat: %s: %zu record%s of the earlier run %s an error; kept, not "
		        "retried (fix the input line or remove the record to retry it); exit status 65\n",
		        r.out_path, r.n_kept_errors, r.n_kept_errors == 1 ? "" : "s",
		        r.n_kept_errors == 1 ? "is" : "are");
	if (!rc && interrupted) {
		cli_error("interrupted: the items under way were finished and written");
		rc = CLI_EXIT_INTERRUPTED;
	} else if (!rc && (r.n_errors || r.n_kept_errors)) {
		rc = CLI_EXIT_DATA;
	}
done:
	if (r.out && r.out != stdout && fclose(r.out) == EOF && !rc) {
		cli_error("%s: write failed: %s", r.out_path, strerror(errno));
		rc = CLI_EXIT_IO;
	}
	for (size_t i = 0; i < r.win_n; i++) {
		item_free(r.win[i]);
		free(r.win[i]);
	}
	free(r.win);
	cli_keyset_free(&r.ids);
	cli_keyset_free(&r.done_ids);
	cli_keyset_free(&r.error_ids);
	cli_lines_free(r.rd);
	if (r.in && r.in_owned)
		fclose(r.in);
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
