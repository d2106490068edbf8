/* chat.c - `seqboat chat`: an interactive conversation.
 *
 * The conversation lives in one constant-size state: each user turn is
 * read into it once and each reply is generated from it, so a turn costs
 * the same however long the conversation is. /undo and /regen restore a
 * per-turn snapshot (a copy of the state, not of the text), and /save
 * writes the state plus the transcript, so the file grows only with the
 * transcript's text.
 *
 * Turns are laid out with the chat template of config.yaml. Base models
 * (no chat: mapping) get this default:
 *
 *     <system>\n
 *     User: <text>\n
 *     Assistant: <reply>\n
 *
 * with the reply also ending where the model writes "\nUser:". In general
 * a reply ends at the end-of-sequence token, at a --stop string, or at
 * assistant_suffix + user_prefix (without its trailing space); in the last
 * case that text is already in the state and the next turn continues it.
 *
 * Every reply's seed is derived from the base seed and the turn number (and
 * how often it was regenerated), and the sampler's penalty window is
 * refilled from the conversation's last tokens; so a turn redone after
 * /undo or continued after /load gives the same reply. */
#include <errno.h>
#include <histedit.h>
#include <jansson.h>
#include <limits.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wchar.h>

#include "commands.h"
#include "gen.h"
#include "report.h"
#include "scheduler.h"
#include "template.h"

/* The one global the conventions allow: Ctrl-C was pressed. */
static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
	(void)sig;
	interrupted = 1;
}

#define MAX_SNAPSHOTS 64
#define SAVE_MAGIC "SBCHAT 1\n"

typedef struct turn {
	char *user;
	char *reply;
	int32_t *ids;            /* (n_ids) every token the turn read into the state */
	size_t n_ids;
	bool open_user;          /* the state before the turn ended with an open user prefix */
} turn;

/* What /undo restores: the conversation just before a user turn. */
typedef struct snapshot {
	sb_state *st;
	int32_t *recent;         /* (repeat_last_n) */
	size_t n_recent;
	size_t n_turns;
	bool open_user;
} snapshot;

typedef struct chat {
	cli_gen g;
	const char *system;
	const char *template_path;   /* --chat-template */
	bool no_cnv;                 /* --no-conversation */
	const char *in_prefix, *in_suffix;
	const char *rprompts[16];    /* -r */
	size_t n_rprompts;
	bool color;
	size_t open_from, open_to;   /* stops[open_from..open_to): ending the reply leaves the user turn open */
	/* the tokens of the turn under way, as they are read into the state */
	int32_t *cur;
	size_t n_cur, cap_cur;
	bool recording;
	sb_model *m;
	sb_tokenizer *tok;
	sb_ctx *ctx;
	sb_state *st;
	sb_sched *sched;         /* one sequence at a time: the reply */
	const char *stops[64];   /* --stop values and the template's stop */
	size_t n_stops;
	float *logits;           /* (V) prediction after the state's last token */
	bool have_logits;
	int V;
	int32_t eos;
	cli_template tpl;
	bool open_user;          /* the state ends with tpl.stop */
	/* the last tokens, for the penalties: (cap_recent) */
	int32_t *recent;
	size_t n_recent, cap_recent;
	turn *turns;
	size_t n_turns, cap_turns;
	snapshot snaps[MAX_SNAPSHOTS];
	size_t n_snaps;
	size_t max_snaps;        /* <= MAX_SNAPSHOTS, what --mem leaves room for */
	uint64_t regen;          /* /regen count of the current turn */
	char *raw;               /* the reply's text before stop matching */
	size_t raw_len, raw_cap;
	/* statistics */
	uint64_t gen_tokens;
	double gen_seconds;
	size_t last_tokens;
	double last_seconds;
	bool tty;
	bool continuing;         /* the line being read continues one ending in '\' */
	cli_escaper esc;
} chat;

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: seqboat chat [options]\n\n"
	        "Talks with a model. On a terminal: line editing and history; Ctrl-C stops\n"
	        "a reply, Ctrl-C on an empty line or Ctrl-D leaves. Otherwise every line of\n"
	        "standard input is a user turn and every reply is printed on its own line.\n"
	        "A line ending in '\\' continues on the next one (multi-line input).\n\n"
	        "options:\n"
	        "      --system TEXT        system prompt (also -sys, --system-prompt; -s is\n"
	        "                           the seed, as in llama.cpp)\n"
	        "      --chat-template FILE the turns' layout, from a JSON file (below)\n"
	        "      --no-conversation    no template: each line is read as it is and the\n"
	        "                           model continues the text (also -no-cnv, --raw)\n"
	        "      --in-prefix TEXT     text put before every user line\n"
	        "      --in-suffix TEXT     text put after every user line\n"
	        "  -r, --reverse-prompt TEXT  end a reply where the model writes TEXT and hand\n"
	        "                           the turn back (TEXT stays in the conversation and\n"
	        "                           the next line follows it); repeatable\n"
	        "      --color[=WHEN]       colour the prompt and the replies: auto (the default:\n"
	        "                           on a terminal, unless NO_COLOR is set), always, never\n"
	        "      --no-color           the same as --color=never\n"
	        "%s"
	        "  -h, --help               show this help\n\n"
	        "commands (a line starting with '/'; '//' sends a literal '/'):\n"
	        "  /help             this list\n"
	        "  /reset            start over (keeps the system prompt)\n"
	        "  /regen            a new reply to the last turn\n"
	        "  /undo             remove the last turn and its reply\n"
	        "  /save FILE        save the conversation (state, transcript, turn tokens)\n"
	        "  /load FILE        continue a saved conversation (/undo and /regen work on\n"
	        "                    its turns)\n"
	        "  /export FILE      write the conversation as a readable transcript\n"
	        "  /stats            tokens, speed, state size, attention activation per layer\n\n"
	        "The template: config.yaml's chat: mapping, else --chat-template, else the\n"
	        "default for a base model, chosen from what it was trained on: lines\n"
	        "\"<system>\", \"User: <text>\", \"Assistant: <reply>\", where a line ends with\n"
	        "\"\\n\" if the tokenizer has a newline piece, else with the end-of-sequence\n"
	        "token (the bundled model's newline). A reply ends at the end-of-sequence\n"
	        "token, a blank line, where the model starts the next \"User:\", a --stop or\n"
	        "-r text, or after -n tokens.\n"
	        "A --chat-template file is one JSON object: system_prefix, system_suffix,\n"
	        "user_prefix, user_suffix, assistant_prefix, assistant_suffix (strings,\n"
	        "\"\" when absent) and stop (a string or up to 4); in those strings {bos} and\n"
	        "{eos} stand for the model's beginning- and end-of-sequence tokens. E.g.\n"
	        "  {\"user_prefix\": \"Q: \", \"user_suffix\": \"{eos}\", \"assistant_prefix\": \"A:\",\n"
	        "   \"assistant_suffix\": \"{eos}\"}\n"
	        "--system, --in-prefix, --in-suffix, -r and --stop get llama.cpp's escapes\n"
	        "(\\n, \\t, ...; --no-escape keeps them literal); typed lines do not.\n"
	        "Seeds: without --seed the seed is random (as in complete and llama.cpp) and\n"
	        "/save records it; with it, replies repeat.\n",
	        cli_gen_help(512));
}

static const char help_text[] =
	"/help             this list\n"
	"/reset            start over (keeps the system prompt)\n"
	"/regen            a new reply to the last turn\n"
	"/undo             remove the last turn and its reply\n"
	"/save FILE        save the conversation (state and transcript)\n"
	"/load FILE        continue a saved conversation\n"
	"/export FILE      write the conversation as a readable transcript\n"
	"/stats            tokens, speed, state size, attention activation per layer\n"
	"//text            send text that starts with '/'\n"
	"a line ending in '\\' continues on the next line\n";

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
	va_list ap;
	fflush(stdout);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static char *dupn(const char *s, size_t n)
{
	char *p = malloc(n + 1);
	if (p) {
		memcpy(p, s, n);
		p[n] = 0;
	}
	return p;
}

static void recent_push(chat *c, const int32_t *ids, size_t n)
{
	if (!c->cap_recent)
		return;
	for (size_t i = 0; i < n; i++) {
		if (c->n_recent == c->cap_recent) {
			memmove(c->recent, c->recent + 1, (c->cap_recent - 1) * sizeof *c->recent);
			c->n_recent--;
		}
		c->recent[c->n_recent++] = ids[i];
	}
}

static void record_ids(chat *c, const int32_t *ids, size_t n)
{
	if (!c->recording || !n)
		return;
	if (c->n_cur + n > c->cap_cur) {
		size_t cap = c->cap_cur ? c->cap_cur : 256;
		while (cap < c->n_cur + n)
			cap *= 2;
		int32_t *p = realloc(c->cur, cap * sizeof *p);
		if (!p) {
			/* the turn cannot be replayed after /load; everything else goes on */
			c->recording = false;
			return;
		}
		c->cur = p;
		c->cap_cur = cap;
	}
	memcpy(c->cur + c->n_cur, ids, n * sizeof *ids);
	c->n_cur += n;
}

/* Reads ids into the state. */
static int feed_ids(chat *c, const int32_t *ids, size_t n, sb_error *err)
{
	if (!n)
		return 0;
	sb_outputs o = {.last_logits = c->logits};
	int rc = sb_prefill(c->ctx, c->st, ids, n, &o, err);
	if (rc == 0) {
		c->have_logits = true;
		recent_push(c, ids, n);
		record_ids(c, ids, n);
	}
	return rc;
}

/* Encodes template text ({bos}/{eos} read as those ids) and reads it into
 * the state. */
static int feed(chat *c, const char *text, bool add_bos, sb_error *err)
{
	int32_t *ids = NULL;
	size_t n = 0;
	const char *parts[] = {text};
	const bool literal[] = {false};
	int rc = cli_template_encode(c->tok, parts, literal, 1, add_bos, &ids, &n, err);
	if (rc == 0)
		rc = feed_ids(c, ids, n, err);
	free(ids);
	return rc;
}

static void drop_snapshots(chat *c)
{
	for (size_t i = 0; i < c->n_snaps; i++) {
		sb_state_free(c->snaps[i].st);
		free(c->snaps[i].recent);
	}
	c->n_snaps = 0;
}

static void drop_turns(chat *c, size_t keep)
{
	for (size_t i = keep; i < c->n_turns; i++) {
		free(c->turns[i].user);
		free(c->turns[i].reply);
		free(c->turns[i].ids);
	}
	c->n_turns = keep;
}

/* The start of a conversation: BOS and the system prompt. */
static int start(chat *c, sb_error *err)
{
	sb_state_reset(c->st);
	c->n_recent = 0;
	c->have_logits = false;
	c->open_user = false;
	c->regen = 0;
	drop_turns(c, 0);
	drop_snapshots(c);
	c->recording = false;
	if (c->system && *c->system) {
		int32_t *ids = NULL;
		size_t n = 0;
		int rc = cli_template_encode_system(c->tok, &c->tpl, c->system, true, &ids, &n, err);
		if (rc == 0)
			rc = feed_ids(c, ids, n, err);
		free(ids);
		return rc;
	}
	return feed(c, "", true, err);
}

static int snapshot_push(chat *c, sb_error *err)
{
	sb_state *st = NULL;
	int32_t *recent = NULL;
	if (c->max_snaps == 0)
		return 0; /* the memory limit leaves no room for undo */
	if (c->n_snaps == c->max_snaps) {
		/* The oldest turn can no longer be undone. Its buffers are
		 * reused: freeing one state and allocating another every turn
		 * fragments the heap, and resident memory grew with the turns. */
		st = c->snaps[0].st;
		recent = c->snaps[0].recent;
		memmove(c->snaps, c->snaps + 1, (c->max_snaps - 1) * sizeof *c->snaps);
		c->n_snaps--;
	}
	snapshot *s = &c->snaps[c->n_snaps];
	memset(s, 0, sizeof *s);
	if (st)
		sb_state_copy(st, c->st);
	else if (!(st = sb_state_clone(c->st, err)))
		return err ? err->code : SB_ERR_NOMEM;
	if (c->cap_recent && !recent && !(recent = malloc(c->cap_recent * sizeof *recent))) {
		sb_state_free(st);
		return sb_error_set(err, SB_ERR_NOMEM, "out of memory");
	}
	s->st = st;
	s->recent = recent;
	if (c->n_recent)
		memcpy(s->recent, c->recent, c->n_recent * sizeof *s->recent);
	s->n_recent = c->n_recent;
	s->n_turns = c->n_turns;
	s->open_user = c->open_user;
	c->n_snaps++;
	return 0;
}

/* Back to the last snapshot; the logits are recomputed by the next turn. */
static void snapshot_pop(chat *c)
{
	snapshot *s = &c->snaps[--c->n_snaps];
	sb_state_copy(c->st, s->st);
	if (s->n_recent)
		memcpy(c->recent, s->recent, s->n_recent * sizeof *c->recent);
	c->n_recent = s->n_recent;
	drop_turns(c, s->n_turns);
	c->open_user = s->open_user;
	c->have_logits = false;
	sb_state_free(s->st);
	free(s->recent);
}

static int raw_add(chat *c, const char *s, size_t n)
{
	if (c->raw_len + n + 1 > c->raw_cap) {
		size_t cap = c->raw_cap ? c->raw_cap : 256;
		while (cap < c->raw_len + n + 1)
			cap *= 2;
		char *p = realloc(c->raw, cap);
		if (!p)
			return -1;
		c->raw = p;
		c->raw_cap = cap;
	}
	memcpy(c->raw + c->raw_len, s, n);
	c->raw_len += n;
	c->raw[c->raw_len] = 0;
	return 0;
}

typedef struct reply {
	char *text;
	size_t len, cap;
} reply;

static int reply_add(reply *r, const char *s, size_t n)
{
	if (r->len + n + 1 > r->cap) {
		size_t cap = r->cap ? r->cap : 256;
		while (cap < r->len + n + 1)
			cap *= 2;
		char *p = realloc(r->text, cap);
		if (!p)
			return -1;
		r->text = p;
		r->cap = cap;
	}
	memcpy(r->text + r->len, s, n);
	r->len += n;
	r->text[r->len] = 0;
	return 0;
}

static void show(chat *c, reply *r, const char *s, size_t n)
{
	if (!n)
		return;
	cli_write_escaped(stdout, &c->esc, s, n);
	fflush(stdout);
	/* Out of memory only shortens the transcript; the reply was shown. */
	(void)reply_add(r, s, n);
}

/* One reply on the scheduler: what its callbacks fill in. */
typedef struct turn_run {
	chat *c;
	reply *r;
	sb_finish finish;
	int stop_index;
	size_t n;                /* tokens generated */
	bool got_state;
	sb_error err;
} turn_run;

static int on_token(const sb_seq_token *t)
{
	turn_run *tr = t->user;
	chat *c = tr->c;
	raw_add(c, t->piece, t->piece_len);
	show(c, tr->r, t->text, t->text_len);
	/* The end-of-sequence id ends the reply and is not read into the state. */
	if (t->token >= 0 && t->token != c->eos) {
		recent_push(c, &t->token, 1);
		record_ids(c, &t->token, 1);
	}
	return interrupted;
}

static void on_done(const sb_seq_result *res)
{
	turn_run *tr = res->user;
	tr->finish = res->finish;
	tr->stop_index = res->stop_index;
	tr->n = res->completion_tokens;
	tr->got_state = res->state != NULL;
	if (res->error)
		tr->err = *res->error;
}

/* Reads the user piece `text` and generates the reply to it, printing it
 * as it comes. The reply's tokens are read into the state too (the one
 * that completed a stop string included: the state holds everything the
 * model wrote). */
static int generate(chat *c, const char *const *parts, const bool *literal, size_t n_parts,
                    reply *r, sb_error *err)
{
	int32_t *ids = NULL;
	size_t n_ids = 0;
	int rc = cli_template_encode(c->tok, parts, literal, n_parts, false, &ids, &n_ids, err);
	if (rc < 0)
		return rc;
	if (!n_ids && !c->have_logits) {
		free(ids);
		return sb_error_set(err, SB_ERR_ARG, "nothing to reply to");
	}
	char key[64];
	int kn = snprintf(key, sizeof key, "turn %zu regen %llu", c->n_turns,
	                  (unsigned long long)c->regen);
	turn_run tr = {.c = c, .r = r, .stop_index = -1};
	sb_seq_params p = sb_seq_default_params();
	p.tokens = ids;
	p.n_tokens = n_ids;
	p.start = c->st;
	p.start_logits = c->logits;
	p.history = c->recent;
	p.n_history = c->n_recent;
	p.sampler = c->g.sp;
	p.sampler.seed = cli_seed_derive(c->g.sp.seed, key, (size_t)kn);
	p.max_tokens = c->g.max_tokens;
	p.stops = c->stops;
	p.n_stops = c->n_stops;
	p.text_at_start = true;
	p.final_state = c->st;
	p.final_logits = c->logits;
	p.on_token = on_token;
	p.on_done = on_done;
	p.user = &tr;
	c->raw_len = 0;
	c->esc.pending_c2 = false;
	double t0 = cli_now();
	rc = sb_sched_submit(c->sched, &p, NULL, err);
	if (rc == 0) {
		recent_push(c, ids, n_ids);
		record_ids(c, ids, n_ids);
		if (c->color)
			fputs("\033[36m", stdout);
		rc = sb_sched_run(c->sched, err);
		if (c->color) {
			fputs("\033[0m", stdout);
			fflush(stdout);
		}
	}
	free(ids);
	if (rc < 0)
		return rc;
	cli_escaper_finish(stdout, &c->esc);
	double dt = cli_now() - t0;
	c->last_tokens = tr.n;
	c->last_seconds = dt;
	c->gen_tokens += tr.n;
	c->gen_seconds += dt;
	c->have_logits = tr.got_state;
	if (tr.finish == SB_FINISH_ERROR) {
		if (err)
			*err = tr.err;
		return tr.err.code ? tr.err.code : SB_ERR_ARG;
	}
	/* Stopped at a reverse prompt or the template's own stop: the next
	 * user turn is begun. */
	c->open_user = tr.finish == SB_FINISH_STOP && tr.stop_index >= (int)c->open_from &&
	               tr.stop_index < (int)c->open_to;
	if (!c->open_user && c->tpl.asst_suffix[0])
		rc = feed(c, c->tpl.asst_suffix, false, err);
	return rc;
}

/* Takes reply_text and ids. */
static int add_turn(chat *c, const char *user, char *reply_text, int32_t *ids, size_t n_ids,
                    bool open_user)
{
	if (c->n_turns == c->cap_turns) {
		size_t cap = c->cap_turns ? 2 * c->cap_turns : 16;
		turn *t = realloc(c->turns, cap * sizeof *t);
		if (!t)
			return -1;
		c->turns = t;
		c->cap_turns = cap;
	}
	char *u = dupn(user, strlen(user));
	if (!u)
		return -1;
	c->turns[c->n_turns] = (turn){.user = u, .reply = reply_text, .ids = ids, .n_ids = n_ids,
	                              .open_user = open_user};
	c->n_turns++;
	return 0;
}

/* One user turn: snapshot, the turn's text, the reply. */
static int user_turn(chat *c, const char *text, sb_error *err)
{
	int rc = snapshot_push(c, err);
	if (rc < 0)
		return rc;
	/* With open_user the model already wrote the prefix but for its
	 * trailing blanks. */
	const char *up = c->tpl.user_prefix;
	if (c->open_user) {
		size_t n = strlen(up);
		while (n && (up[n - 1] == ' ' || up[n - 1] == '\t'))
			n--;
		up += n;
	}
	const char *parts[] = {up, c->in_prefix ? c->in_prefix : "", text,
	                       c->in_suffix ? c->in_suffix : "", c->tpl.user_suffix, c->tpl.asst_prefix};
	const bool literal[] = {false, true, true, true, false, false};
	bool open_before = c->open_user;
	c->n_cur = 0;
	c->recording = true;
	reply r = {0};
	rc = generate(c, parts, literal, 6, &r, err);
	fputc('\n', stdout);
	fflush(stdout);
	int32_t *ids = NULL;
	if (rc == 0 && c->recording && c->n_cur && (ids = malloc(c->n_cur * sizeof *ids)))
		memcpy(ids, c->cur, c->n_cur * sizeof *ids);
	size_t n_ids = ids ? c->n_cur : 0;
	c->recording = false;
	if (rc == 0 && add_turn(c, text, r.text ? r.text : dupn("", 0), ids, n_ids, open_before) < 0) {
		free(ids);
		rc = sb_error_set(err, SB_ERR_NOMEM, "out of memory");
	} else if (rc != 0) {
		free(r.text);
	}
	return rc;
}

static const char *plural(size_t n)
{
	return n == 1 ? "" : "s";
}

static void stats(chat *c)
{
	uint64_t n = sb_state_n_tokens(c->st);
	printf("tokens in the state: %llu\n", (unsigned long long)n);
	printf("last reply: %zu token%s, %.1f tokens/s\n", c->last_tokens, plural(c->last_tokens),
	       c->last_seconds > 0 ? (double)c->last_tokens / c->last_seconds : 0.0);
	printf("all replies: %llu token%s, %.1f tokens/s\n", (unsigned long long)c->gen_tokens,
	       plural((size_t)c->gen_tokens),
	       c->gen_seconds > 0 ? (double)c->gen_tokens / c->gen_seconds : 0.0);
	printf("state: %zu bytes (constant), %zu turn snapshot%s\n", sb_state_bytes(c->m), c->n_snaps,
	       plural(c->n_snaps));
	printf("attention activation rate per layer:");
	int L = sb_model_config(c->m)->layers;
	for (int l = 0; l < L; l++)
		printf(" %.3f", n ? (double)sb_state_n_activated(c->st, l) / (double)n : 0.0);
	printf("\n");
	fflush(stdout);
}

static int save(chat *c, const char *path, sb_error *err)
{
	int rc = 0;
	char *js = NULL, *blob = NULL;
	json_t *o = json_object(), *turns = json_array(), *recent = json_array();
	if (!o || !turns || !recent)
		goto nomem;
	for (size_t i = 0; i < c->n_turns; i++) {
		json_t *ids = json_array();
		for (size_t k = 0; ids && k < c->turns[i].n_ids; k++)
			json_array_append_new(ids, json_integer(c->turns[i].ids[k]));
		/* the tokens of each turn let /load rebuild the turn snapshots */
		json_array_append_new(turns, json_pack("{s:s,s:s,s:o,s:b}", "user", c->turns[i].user,
		                                       "reply", c->turns[i].reply, "ids",
		                                       ids ? ids : json_array(), "open_user",
		                                       c->turns[i].open_user));
	}
	for (size_t i = 0; i < c->n_recent; i++)
		json_array_append_new(recent, json_integer(c->recent[i]));
	json_object_set_new(o, "seed", json_integer((json_int_t)c->g.sp.seed));
	json_object_set_new(o, "system", json_string(c->system ? c->system : ""));
	json_object_set_new(o, "open_user", json_boolean(c->open_user));
	json_object_set(o, "recent", recent);
	json_object_set(o, "turns", turns);
	if (!(js = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER)))
		goto nomem;
	size_t sz = sb_state_serialized_size(c->m);
	if (!(blob = malloc(sz)))
		goto nomem;
	if ((rc = sb_state_serialize(c->st, blob, sz, err)) < 0)
		goto done;
	sb_file_out out;
	if ((rc = sb_file_out_open(&out, path, err)) < 0)
		goto done;
	fputs(SAVE_MAGIC, out.f);
	fputs(js, out.f);
	fputc('\n', out.f);
	fwrite(blob, 1, sz, out.f);
	rc = sb_file_out_commit(&out, err);
	goto done;
nomem:
	rc = sb_error_set(err, SB_ERR_NOMEM, "out of memory saving the conversation");
done:
	json_decref(o);
	json_decref(turns);
	json_decref(recent);
	free(js);
	free(blob);
	return rc;
}

/* The longest JSON header of a saved conversation (its turns' text). */
#define CHAT_HEADER_MAX ((size_t)64 << 20)

/* Reads a saved conversation; the current one is kept if anything fails. */
static int load(chat *c, const char *path, char **system_out, sb_error *err)
{
	int rc = 0;
	char *text = NULL;
	size_t len = 0;
	json_t *o = NULL;
	sb_state *st = NULL;
	/* The state, plus a header of turns that may be long but not huge. */
	size_t limit;
	if (!sb_size_add(sb_state_serialized_size(c->m), CHAT_HEADER_MAX, &limit))
		limit = SIZE_MAX - 1;
	if ((rc = sb_file_read(path, limit, "a saved conversation", &text, &len, err)) < 0)
		return rc;
	size_t ml = strlen(SAVE_MAGIC);
	const char *nl = len > ml ? memchr(text + ml, '\n', len - ml) : NULL;
	if (len < ml || memcmp(text, SAVE_MAGIC, ml) || !nl) {
		rc = sb_error_set(err, SB_ERR_FORMAT, "%s: not a conversation saved by seqboat chat", path);
		goto done;
	}
	json_error_t je;
	o = json_loadb(text + ml, (size_t)(nl - text) - ml, 0, &je);
	json_t *turns = o ? json_object_get(o, "turns") : NULL;
	json_t *recent = o ? json_object_get(o, "recent") : NULL;
	json_t *seed = o ? json_object_get(o, "seed") : NULL;
	json_t *sys = o ? json_object_get(o, "system") : NULL;
	if (!json_is_array(turns) || !json_is_array(recent) || !json_is_integer(seed) ||
	    !json_is_string(sys) || !json_is_boolean(json_object_get(o, "open_user"))) {
		rc = sb_error_set(err, SB_ERR_FORMAT, "%s: the header is not the expected JSON object", path);
		goto done;
	}
	size_t nr = json_array_size(recent);
	if (nr > c->cap_recent)
		nr = c->cap_recent;
	for (size_t i = json_array_size(recent) - nr, k = 0; k < nr; i++, k++) {
		json_t *v = json_array_get(recent, i);
		if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= c->V) {
			rc = sb_error_set(err, SB_ERR_FORMAT, "%s: field 'recent': token %zu is not an id below %d",
			                  path, i, c->V);
			goto done;
		}
	}
	/* Files of earlier versions have no "ids": then the turns are loaded
	 * without their snapshots. */
	bool replay = true;
	for (size_t i = 0; i < json_array_size(turns); i++) {
		json_t *t = json_array_get(turns, i);
		if (!json_is_string(json_object_get(t, "user")) || !json_is_string(json_object_get(t, "reply"))) {
			rc = sb_error_set(err, SB_ERR_FORMAT, "%s: turn %zu lacks 'user' or 'reply'", path, i + 1);
			goto done;
		}
		json_t *ids = json_object_get(t, "ids");
		if (!ids) {
			replay = false;
			continue;
		}
		if (!json_is_array(ids) || !json_is_boolean(json_object_get(t, "open_user"))) {
			rc = sb_error_set(err, SB_ERR_FORMAT, "%s: turn %zu: field 'ids': expected an array of token ids and 'open_user'",
			                  path, i + 1);
			goto done;
		}
		for (size_t k = 0; k < json_array_size(ids); k++) {
			json_t *v = json_array_get(ids, k);
			if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= c->V) {
				rc = sb_error_set(err, SB_ERR_FORMAT, "%s: turn %zu: field 'ids': token %zu is not an id below %d",
				                  path, i + 1, k, c->V);
				goto done;
			}
		}
	}
	if (!(st = sb_ctx_state_new(c->ctx, err))) {
		rc = err->code;
		goto done;
	}
	const char *blob = nl + 1;
	if ((rc = sb_state_deserialize(st, blob, len - (size_t)(blob - text), path, err)) < 0)
		goto done;
	char *s = dupn(json_string_value(sys), strlen(json_string_value(sys)));
	if (!s) {
		rc = sb_error_set(err, SB_ERR_NOMEM, "out of memory");
		goto done;
	}

	/* Everything checked: replace the conversation. With the turns'
	 * tokens, the conversation is read again from its start so that each
	 * turn gets back its snapshot (for /undo and /regen); the saved state
	 * then becomes the current one, exactly as it was. */
	const char *old_system = c->system;
	c->system = s;
	if (replay && (rc = start(c, err)) < 0) {
		c->system = old_system;
		free(s);
		goto done;
	}
	drop_snapshots(c);
	drop_turns(c, 0);
	for (size_t i = 0; i < json_array_size(turns); i++) {
		json_t *t = json_array_get(turns, i);
		json_t *jids = json_object_get(t, "ids");
		size_t n_ids = replay ? json_array_size(jids) : 0;
		int32_t *ids = n_ids ? malloc(n_ids * sizeof *ids) : NULL;
		const char *r = json_string_value(json_object_get(t, "reply"));
		char *rd = dupn(r, strlen(r));
		if ((n_ids && !ids) || !rd) {
			free(ids);
			free(rd);
			rc = sb_error_set(err, SB_ERR_NOMEM, "out of memory");
			break;
		}
		for (size_t k = 0; k < n_ids; k++)
			ids[k] = (int32_t)json_integer_value(json_array_get(jids, k));
		bool open = json_is_true(json_object_get(t, "open_user"));
		if (replay) {
			c->open_user = open;
			if ((rc = snapshot_push(c, err)) < 0 || (rc = feed_ids(c, ids, n_ids, err)) < 0) {
				free(ids);
				free(rd);
				break;
			}
		}
		if (add_turn(c, json_string_value(json_object_get(t, "user")), rd, ids, n_ids, open) < 0) {
			free(ids);
			free(rd);
			rc = sb_error_set(err, SB_ERR_NOMEM, "out of memory");
			break;
		}
	}
	sb_state_copy(c->st, st);
	c->have_logits = false;
	c->regen = 0;
	c->g.sp.seed = (uint64_t)json_integer_value(seed);
	c->open_user = json_is_true(json_object_get(o, "open_user"));
	c->n_recent = 0;
	for (size_t i = json_array_size(recent) - nr; i < json_array_size(recent); i++)
		c->recent[c->n_recent++] = (int32_t)json_integer_value(json_array_get(recent, i));
	free(*system_out);
	*system_out = s;
done:
	sb_state_free(st);
	json_decref(o);
	free(text);
	return rc;
}

/* A readable transcript: the system prompt, then each turn's user line
 * and reply, as "System:", "User:" and "Assistant:" paragraphs. */
static int export_transcript(chat *c, const char *path)
{
	cli_outfile out;
	int rc = cli_outfile_open(&out, path);
	if (rc)
		return rc;
	fprintf(out.f, "# seqboat chat, %s, template: %s, seed %llu\n\n", sb_model_dir(c->m),
	        c->tpl.name ? c->tpl.name : "?", (unsigned long long)c->g.sp.seed);
	if (c->system && *c->system)
		fprintf(out.f, "System: %s\n\n", c->system);
	for (size_t i = 0; i < c->n_turns; i++)
		fprintf(out.f, "User: %s\n\nAssistant: %s\n\n", c->turns[i].user, c->turns[i].reply);
	return cli_outfile_commit(&out);
}

static const char *skip_space(const char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	return s;
}

/* Runs a /command. Returns 1 to quit, 0 to go on, or a negative status
 * for a failure that ends the session. */
static int command(chat *c, const char *line, char **loaded_system)
{
	sb_error err = {0};
	const char *arg = line;
	while (*arg && *arg != ' ' && *arg != '\t')
		arg++;
	size_t n = (size_t)(arg - line);
	arg = skip_space(arg);
#define IS(name) (n == strlen(name) && !strncmp(line, name, n))
	if (IS("/help") || IS("/?")) {
		fputs(help_text, stdout);
		fflush(stdout);
	} else if (IS("/reset")) {
		if (start(c, &err) < 0) {
			cli_fail(&err);
			return -1;
		}
		note("conversation reset");
	} else if (IS("/undo")) {
		if (!c->n_snaps) {
			note("nothing to undo");
			return 0;
		}
		snapshot_pop(c);
		c->regen = 0;
		note("undone: %zu turn%s left", c->n_turns, plural(c->n_turns));
	} else if (IS("/regen")) {
		if (!c->n_snaps || !c->n_turns || c->snaps[c->n_snaps - 1].n_turns != c->n_turns - 1) {
			note("no reply to regenerate");
			return 0;
		}
		char *user = c->turns[c->n_turns - 1].user;
		c->turns[c->n_turns - 1].user = NULL;
		uint64_t r = c->regen + 1;
		snapshot_pop(c);
		c->regen = r;
		int rc = user_turn(c, user ? user : "", &err);
		free(user);
		if (rc < 0)
			cli_error("%s", err.msg);
	} else if (IS("/save")) {
		if (!*arg) {
			note("usage: /save FILE");
			return 0;
		}
		if (save(c, arg, &err) < 0)
			cli_error("%s", err.msg);
		else
			note("saved %zu turn%s to %s", c->n_turns, plural(c->n_turns), arg);
	} else if (IS("/load")) {
		if (!*arg) {
			note("usage: /load FILE");
			return 0;
		}
		if (load(c, arg, loaded_system, &err) < 0)
			cli_error("%s", err.msg);
		else
			note("loaded %zu turn%s from %s (%zu can be undone)", c->n_turns,
			     plural(c->n_turns), arg, c->n_snaps);
	} else if (IS("/export")) {
		if (!*arg) {
			note("usage: /export FILE");
			return 0;
		}
		if (!export_transcript(c, arg))
			note("wrote a transcript of %zu turn%s to %s", c->n_turns, plural(c->n_turns), arg);
	} else if (IS("/stats")) {
		stats(c);
	} else if (IS("/quit") || IS("/exit")) {
		return 1;
	} else {
		note("unknown command '%.*s' (/help lists them)", (int)n, line);
	}
#undef IS
	return 0;
}

static char *prompt_fn(EditLine *el)
{
	chat *c = NULL;
	el_get(el, EL_CLIENTDATA, &c);
	/* \1 brackets what takes no room on the line (EL_PROMPT_ESC) */
	if (c && c->color)
		return (char *)(c->continuing ? "\1\033[32m\1. \1\033[0m\1" : "\1\033[1;32m\1> \1\033[0m\1");
	return (char *)(c && c->continuing ? ". " : "> ");
}

/* libedit's character reader, replaced so that a Ctrl-C can never be lost:
 * the default one blocks in read(), and a SIGINT that lands between
 * clearing the flag and entering read() would leave the prompt deaf until
 * the next key. This one polls in slices of 100 ms and checks the flag
 * between them, then assembles one multibyte character. */
static int chat_getc(EditLine *el, wchar_t *wc)
{
	(void)el;
	char buf[MB_LEN_MAX];
	size_t n = 0;
	for (;;) {
		if (interrupted) {
			errno = EINTR;
			return -1;
		}
		struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
		int r = poll(&p, 1, 100);
		if (r < 0 && errno != EINTR)
			return -1;
		if (r <= 0)
			continue;
		unsigned char ch;
		ssize_t k = read(STDIN_FILENO, &ch, 1);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (k == 0)
			return n ? (*wc = (wchar_t)(unsigned char)buf[0], 1) : 0;
		buf[n++] = (char)ch;
		mbstate_t st;
		memset(&st, 0, sizeof st);
		size_t m = mbrtowc(wc, buf, n, &st);
		if (m == (size_t)-2 && n < sizeof buf)
			continue; /* the rest of a multibyte character follows */
		if (m == (size_t)-1 || m == (size_t)-2)
			*wc = (wchar_t)(unsigned char)buf[0]; /* not valid here: pass the byte */
		return 1;
	}
}

/* One line from the terminal (libedit) or the pipe. Returns NULL at the
 * end; *interrupted_empty is set when Ctrl-C was pressed on an empty line. */
static const char *read_line(chat *c, EditLine *el, History *hist, char **buf, size_t *cap,
                             bool *quit_130)
{
	*quit_130 = false;
	if (!c->tty) {
		ssize_t n = getline(buf, cap, stdin);
		if (n < 0)
			return NULL;
		while (n && ((*buf)[n - 1] == '\n' || (*buf)[n - 1] == '\r'))
			(*buf)[--n] = 0;
		return *buf;
	}
	for (;;) {
		interrupted = 0;
		int count = 0;
		const char *line = el_gets(el, &count);
		if (line && count > 0) {
			size_t n = strlen(line);
			char *copy = realloc(*buf, n + 1);
			if (!copy)
				return NULL;
			*buf = copy;
			memcpy(copy, line, n + 1);
			while (n && (copy[n - 1] == '\n' || copy[n - 1] == '\r'))
				copy[--n] = 0;
			if (n) {
				HistEvent ev;
				history(hist, &ev, H_ENTER, copy);
			}
			return copy;
		}
		if (interrupted) {
			/* Ctrl-C: on an empty line it leaves, otherwise it drops the line. */
			const LineInfo *li = el_line(el);
			bool empty = !li || li->lastchar == li->buffer;
			fputc('\n', stdout);
			fflush(stdout);
			if (empty) {
				*quit_130 = true;
				return NULL;
			}
			el_reset(el);
			continue;
		}
		/* Ctrl-D or a read error: leave the shell's prompt on a new line. */
		fputc('\n', stdout);
		fflush(stdout);
		return NULL;
	}
}

int cmd_chat(int argc, char **argv)
{
	chat c;
	memset(&c, 0, sizeof c);
	cli_gen_init(&c.g, 512);
	int rc = 0;
	char *loaded_system = NULL, *line_buf = NULL;
	size_t line_cap = 0;
	EditLine *el = NULL;
	History *hist = NULL;
	sb_error err = {0};
	int color = -1;          /* --color: -1 auto, 0 never, 1 always */
	char *acc = NULL;        /* a line continued with '\' */
	size_t acc_len = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = NULL;
		int st = 0;
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			goto done;
		}
		int g = cli_gen_parse(&c.g, argc, argv, &i);
		if (g < 0) {
			rc = -g;
			goto done;
		}
		if (g > 0)
			continue;
#define FLAG(s, l) cli_flag_value(argc, argv, &i, s, l, &v, &st)
		if (FLAG("-sys", "--system") || FLAG(NULL, "--system-prompt")) {
			if ((rc = st))
				goto done;
			c.system = v;
			continue;
		}
		if (FLAG(NULL, "--chat-template")) {
			if ((rc = st))
				goto done;
			c.template_path = v;
			continue;
		}
		if (FLAG(NULL, "--in-prefix") || FLAG(NULL, "--in-suffix")) {
			if ((rc = st))
				goto done;
			*(strstr(a, "suffix") ? &c.in_suffix : &c.in_prefix) = v;
			continue;
		}
		if (FLAG("-r", "--reverse-prompt")) {
			if ((rc = st))
				goto done;
			if (c.n_rprompts == sizeof c.rprompts / sizeof c.rprompts[0]) {
				cli_error("-r: at most %zu reverse prompts", sizeof c.rprompts / sizeof c.rprompts[0]);
				rc = CLI_EXIT_USAGE;
				goto done;
			}
			c.rprompts[c.n_rprompts++] = v;
			continue;
		}
		if (!strncmp(a, "--color=", 8)) {
			v = a + 8;
			if (!strcmp(v, "always"))
				color = 1;
			else if (!strcmp(v, "never"))
				color = 0;
			else if (!strcmp(v, "auto"))
				color = -1;
			else {
				cli_error("--color: expected auto, always or never, got '%s'", v);
				rc = CLI_EXIT_USAGE;
				goto done;
			}
			continue;
		}
#undef FLAG
		/* --color alone is "always" (as llama.cpp's --color turns it on) */
		if (!strcmp(a, "--color") || !strcmp(a, "-co")) {
			color = 1;
			continue;
		}
		if (!strcmp(a, "--no-color")) {
			color = 0;
			continue;
		}
		if (!strcmp(a, "--no-conversation") || !strcmp(a, "-no-cnv") || !strcmp(a, "--raw")) {
			c.no_cnv = true;
			continue;
		}
		cli_error("chat: unknown option '%s' (see 'seqboat chat --help')", a);
		rc = CLI_EXIT_USAGE;
		goto done;
	}
	if (c.no_cnv && c.template_path) {
		cli_error("chat: give --chat-template or --no-conversation, not both");
		rc = CLI_EXIT_USAGE;
		goto done;
	}
	if ((rc = cli_gen_finish(&c.g)))
		goto done;
	if (c.g.escape) {
		const char **texts[] = {&c.system, &c.in_prefix, &c.in_suffix};
		for (size_t k = 0; k < 3; k++)
			if (*texts[k])
				cli_unescape((char *)*texts[k]);
		for (size_t k = 0; k < c.n_rprompts; k++)
			cli_unescape((char *)c.rprompts[k]);
	}
	for (size_t k = 0; k < c.n_rprompts; k++)
		if (!*c.rprompts[k]) {
			cli_error("-r: expected a non-empty string");
			rc = CLI_EXIT_USAGE;
			goto done;
		}
	if (color < 0) {
		const char *nc = getenv("NO_COLOR");
		color = cli_isatty(stdout) && !(nc && *nc);
	}
	c.color = color;
	if (!c.g.seed_set)
		c.g.sp.seed = cli_random_seed();
	if ((rc = cli_gen_open(&c.g, &c.m, &c.tok, &c.ctx)))
		goto done;
	{
		/* The conversation's state and the reply's working one, then as
		 * many undo snapshots as --mem leaves room for (64 at most). */
		sb_error berr = {0};
		size_t fit = 0, limit = cli_gen_mem_limit(&c.g), two = 2 * sb_state_bytes(c.m);
		if (sb_state_budget(c.m, limit, "--mem", 2, 1, &fit, &berr) < 0) {
			rc = cli_fail(&berr);
			goto done;
		}
		c.max_snaps = sb_state_budget(c.m, limit - two, "--mem", 1, MAX_SNAPSHOTS, &fit, NULL) < 0
		                      ? 0 : fit;
		if (c.max_snaps < MAX_SNAPSHOTS)
			fprintf(stderr, "seqboat: /undo keeps %zu turns: the memory limit of %zu bytes (--mem) holds no more states of %zu bytes\n",
			        c.max_snaps, limit, sb_state_bytes(c.m));
	}
	c.V = sb_model_config(c.m)->vocab_size;
	c.eos = cli_gen_eos(c.m, c.tok);
	c.tty = cli_isatty(stdin);
	if (c.no_cnv) {
		cli_template_raw(&c.tpl);
	} else if (c.template_path) {
		if (cli_template_load(&c.tpl, c.template_path, &err) < 0) {
			rc = cli_fail(&err);
			goto done;
		}
	} else {
		cli_template_for_model(&c.tpl, sb_model_config(c.m), c.tok);
	}
	/* --stop; then what leaves the user turn open (-r, the template's
	 * own stop); then the template's other stops */
	for (size_t i = 0; i < c.g.n_stops && c.n_stops < 32; i++)
		c.stops[c.n_stops++] = c.g.stops[i];
	c.open_from = c.n_stops;
	for (size_t i = 0; i < c.n_rprompts; i++)
		c.stops[c.n_stops++] = c.rprompts[i];
	if (c.tpl.stop[0])
		c.stops[c.n_stops++] = c.tpl.stop;
	c.open_to = c.n_stops;
	for (size_t i = 0; i < c.tpl.n_stops; i++)
		c.stops[c.n_stops++] = c.tpl.stops[i];
	c.cap_recent = (size_t)c.g.sp.repeat_last_n;
	sb_sched_params sp = sb_sched_default_params();
	sp.max_batch = 1;
	sp.eos_id = c.eos;
	sp.text = sb_tokenizer_sched_text(c.tok);
	if (!(c.st = sb_ctx_state_new(c.ctx, &err)) || !(c.sched = sb_sched_new(c.ctx, &sp, &err))) {
		rc = cli_fail(&err);
		goto done;
	}
	if (!(c.logits = malloc((size_t)c.V * sizeof *c.logits)) ||
	    (c.cap_recent && !(c.recent = malloc(c.cap_recent * sizeof *c.recent)))) {
		cli_error("out of memory");
		rc = CLI_EXIT_SOFTWARE;
		goto done;
	}
	if (start(&c, &err) < 0) {
		rc = cli_fail(&err);
		goto done;
	}

	struct sigaction sa, old;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_sigint;
	sigemptyset(&sa.sa_mask);
	/* No SA_RESTART: Ctrl-C must interrupt the line editor's read. */
	sa.sa_flags = 0;
	sigaction(SIGINT, &sa, &old);
	if (c.tty) {
		/* Character classes only (numbers keep the C locale): libedit
		 * needs a multibyte locale to edit UTF-8 text. */
		if (!setlocale(LC_CTYPE, "") || MB_CUR_MAX == 1)
			setlocale(LC_CTYPE, "C.UTF-8");
		el = el_init("seqboat", stdin, stdout, stderr);
		hist = history_init();
		if (!el || !hist) {
			cli_error("cannot start the line editor");
			rc = CLI_EXIT_SOFTWARE;
			goto restore;
		}
		HistEvent ev;
		history(hist, &ev, H_SETSIZE, 1000);
		el_set(el, EL_CLIENTDATA, &c);
		el_set(el, EL_PROMPT_ESC, prompt_fn, '\1');
		el_set(el, EL_GETCFN, chat_getc);
		el_set(el, EL_EDITOR, "emacs");
		el_set(el, EL_HIST, history, hist);
		el_source(el, NULL);
		fprintf(stderr, "seqboat chat: /help lists the commands; Ctrl-D leaves.\n");
	}
	for (;;) {
		bool quit_130 = false;
		const char *line = read_line(&c, el, hist, &line_buf, &line_cap, &quit_130);
		if (!line && c.continuing && !quit_130) {
			/* the input ended after a '\': what was typed is the turn */
			line = "";
		} else if (!line) {
			if (quit_130)
				rc = CLI_EXIT_INTERRUPTED;
			break;
		}
		interrupted = 0;
		/* A trailing '\' continues the line: the lines are joined with
		 * newlines into one user turn. */
		size_t ln = strlen(line);
		if (ln && line[ln - 1] == '\\' && (c.continuing || line[0] != '/')) {
			char *p = realloc(acc, acc_len + ln + 1);
			if (!p) {
				cli_error("out of memory");
				rc = CLI_EXIT_SOFTWARE;
				break;
			}
			acc = p;
			memcpy(acc + acc_len, line, ln - 1);
			acc_len += ln - 1;
			acc[acc_len++] = '\n';
			acc[acc_len] = 0;
			c.continuing = true;
			continue;
		}
		if (c.continuing) {
			char *p = realloc(acc, acc_len + ln + 1);
			if (!p) {
				cli_error("out of memory");
				rc = CLI_EXIT_SOFTWARE;
				break;
			}
			acc = p;
			memcpy(acc + acc_len, line, ln + 1);
			acc_len = 0;
			c.continuing = false;
			line = acc;
		} else if (line[0] == '/' && line[1] != '/') {
			int r = command(&c, line, &loaded_system);
			if (r < 0) {
				rc = CLI_EXIT_SOFTWARE;
				break;
			}
			if (r > 0)
				break;
			continue;
		}
		else if (line[0] == '/')
			line++;
		c.regen = 0;
		if (user_turn(&c, line, &err) < 0) {
			rc = cli_fail(&err);
			break;
		}
		if (interrupted && !c.tty)
			break;
	}
restore:
	sigaction(SIGINT, &old, NULL);
done:
	if (el)
		el_end(el);
	if (hist)
		history_end(hist);
	free(line_buf);
	free(acc);
	free(c.cur);
	drop_snapshots(&c);
	drop_turns(&c, 0);
	free(c.turns);
	free(c.raw);
	free(c.recent);
	free(c.logits);
	free(loaded_system);
	sb_sched_free(c.sched);
	sb_state_free(c.st);
	sb_ctx_free(c.ctx);
	sb_tokenizer_free(c.tok);
	sb_model_free(c.m);
	cli_gen_free(&c.g);
	return rc;
}
