/* merge.c - `seqboat merge`: joins the outputs of `complete --shard K/N`
 * runs into the one file a single `complete` run over the whole input
 * writes.
 *
 * The input file gives the order: its items are named as `complete` names
 * them (cli_item_id), and each must have exactly one record among the
 * shards. Every check runs before a byte is written, so a merge either
 * writes the whole file or nothing. Records are copied byte for byte; only
 * their positions in the shard files are held in memory, with their ids. */
#include <errno.h>
#include <stdarg.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "commands.h"
#include "common.h"
#include "gen.h"
#include "lines.h"
#include "report.h"

/* Problems listed one per line before the summary line. */
#define MAX_LISTED 10

typedef struct rec {
	char *key;               /* compact JSON of the record's id */
	size_t shard;            /* index into the shard paths */
	size_t lineno;
	unsigned long long start, len;   /* the line's bytes, '\n' included */
	bool used;
} rec;

typedef struct merge {
	const char *in_path;
	const char *out_path;    /* NULL: standard output */
	int in_fmt;              /* 0 auto, 1 text, 2 jsonl */
	char **shards;           /* (n_shards) paths, pointing into argv */
	size_t n_shards;
	rec *recs;
	size_t n_recs, cap_recs;
	size_t *order;           /* (n_order) record of each input item */
	size_t n_order, cap_order;
	size_t n_problems;
} merge;

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: seqboat merge -f INPUT [-o OUT] [--format-in F] SHARD...\n\n"
	        "Joins the outputs of 'seqboat complete --shard K/N' runs over INPUT into\n"
	        "the file one 'seqboat complete' run over the whole INPUT writes: every\n"
	        "record copied byte for byte, in input order. Each item of INPUT (named as\n"
	        "complete names it: its JSONL id, else its line number) must have exactly\n"
	        "one record among the SHARD files. Missing, duplicated or unknown ids are\n"
	        "listed and nothing is written.\n\n"
	        "options:\n"
	        "  -f, --file FILE          the input the shards completed\n"
	        "      --format-in F        auto (default), text or jsonl, as given to complete\n"
	        "  -o, --output FILE        write the merged records to FILE (atomically;\n"
	        "                           default: standard output)\n"
	        "  -h, --help               this help\n\n"
	        "Exit status: 0, 2 for usage, 65 if the shards do not cover the input\n"
	        "exactly once, 74 for I/O errors.\n");
}

/* One line naming a problem; the first MAX_LISTED are printed. */
static void problem(merge *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(merge *m, const char *fmt, ...)
{
	if (m->n_problems++ >= MAX_LISTED)
		return;
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	cli_error("%s", msg);
}

static int grow(void **p, size_t *cap, size_t n, size_t size)
{
	if (n < *cap)
		return 0;
	size_t nc = *cap ? *cap * 2 : 1024;
	void *q = realloc(*p, nc * size);
	if (!q)
		return -1;
	*p = q;
	*cap = nc;
	return 0;
}

static int cmp_rec(const void *a, const void *b)
{
	const rec *x = a, *y = b;
	int c = strcmp(x->key, y->key);
	if (c)
		return c;
	if (x->shard != y->shard)
		return x->shard < y->shard ? -1 : 1;
	return (x->lineno > y->lineno) - (x->lineno < y->lineno);
}

/* Reads the records of one shard file: their ids and where they are. */
static int read_shard(merge *m, size_t si)
{
	const char *path = m->shards[si];
	FILE *f = fopen(path, "rb");
	if (!f) {
		cli_error("%s: cannot open: %s", path, strerror(errno));
		return CLI_EXIT_IO;
	}
	int rc = 0, got;
	cli_lines *rd = cli_lines_new(f);
	const char *line;
	size_t n;
	bool too_long;
	unsigned long long start = 0;
	if (!rd)
		goto nomem;
	while ((got = cli_lines_next(rd, &line, &n, &too_long)) > 0) {
		size_t lineno = cli_lines_number(rd);
		unsigned long long end = cli_lines_offset(rd);
		if (too_long) {
			cli_error("%s: line %zu: longer than %zu bytes: not a record of seqboat complete",
			          path, lineno, CLI_LINE_MAX);
			rc = CLI_EXIT_DATA;
			goto done;
		}
		if (end - start == n) {
			cli_error("%s: line %zu: the last line has no newline (a run stopped while "
			          "writing it: finish the shard with 'complete --resume' first)",
			          path, lineno);
			rc = CLI_EXIT_DATA;
			goto done;
		}
		json_error_t je;
		json_t *o = json_loadb(line, n, 0, &je);
		json_t *id = json_is_object(o) ? json_object_get(o, "id") : NULL;
		/* an OpenAI batch output line is named by its custom_id */
		json_t *cid = json_is_object(o) ? json_object_get(o, "custom_id") : NULL;
		bool batch_line = json_is_string(cid) && json_is_object(json_object_get(o, "response"));
		if (batch_line)
			id = cid;
		/* an id is a string, an integer, or an error record's {"line": N} */
		json_t *line_no = json_object_get(id, "line");
		bool line_id = json_is_object(id) && json_object_size(id) == 1 && json_is_integer(line_no);
		if ((!json_is_string(id) && !json_is_integer(id) && !line_id) ||
		    (!batch_line && !json_is_string(json_object_get(o, "finish_reason")))) {
			json_decref(o);
			cli_error("%s: line %zu: expected a record with 'id' and 'finish_reason' "
			          "(the output of seqboat complete)", path, lineno);
			rc = CLI_EXIT_DATA;
			goto done;
		}
		char *key = json_dumps(id, JSON_COMPACT | JSON_ENCODE_ANY);
		json_decref(o);
		if (!key || grow((void **)&m->recs, &m->cap_recs, m->n_recs, sizeof *m->recs) < 0) {
			free(key);
			goto nomem;
		}
		m->recs[m->n_recs++] = (rec){key, si, lineno, start, end - start, false};
		start = end;
	}
	rc = cli_lines_fail(got, path);
	goto done;
nomem:
	cli_error("%s: out of memory", path);
	rc = CLI_EXIT_SOFTWARE;
done:
	cli_lines_free(rd);
	fclose(f);
	return rc;
}

/* Sorted records with the same id: every copy after the first is a
 * problem. */
static void check_duplicates(merge *m)
{
	for (size_t i = 1; i < m->n_recs; i++) {
		const rec *a = &m->recs[i - 1], *b = &m->recs[i];
		if (!strcmp(a->key, b->key))
			problem(m, "id %s: duplicated: %s line %zu and %s line %zu", b->key,
			        m->shards[a->shard], a->lineno, m->shards[b->shard], b->lineno);
	}
}

static rec *find(merge *m, const char *key)
{
	rec probe = {.key = (char *)key};
	size_t lo = 0, hi = m->n_recs;
	/* The first record with this key (shard and line break ties). */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(m->recs[mid].key, probe.key) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < m->n_recs && !strcmp(m->recs[lo].key, key) ? &m->recs[lo] : NULL;
}

/* Walks the input in order, finding each item's record. */
static int read_input(merge *m)
{
	FILE *f = strcmp(m->in_path, "-") ? fopen(m->in_path, "rb") : stdin;
	if (!f) {
		cli_error("%s: cannot open: %s", m->in_path, strerror(errno));
		return CLI_EXIT_IO;
	}
	int rc = 0, got, fmt = m->in_fmt;
	cli_lines *rd = cli_lines_new(f);
	const char *line;
	size_t n;
	bool too_long;
	if (!rd)
		goto nomem;
	while ((got = cli_lines_next(rd, &line, &n, &too_long)) > 0) {
		size_t lineno = cli_lines_number(rd);
		if (!too_long && cli_line_blank(line, n))
			continue;
		if (!fmt)
			fmt = cli_line_is_json(line, n) ? 2 : 1;
		json_t *obj = NULL;
		if (fmt == 2 && !too_long) {
			json_error_t je;
			obj = json_loadb(line, n, JSON_REJECT_DUPLICATES, &je);
		}
		json_t *id = fmt == 2 ? cli_item_id_jsonl(obj, lineno) : cli_item_id(NULL, lineno);
		json_decref(obj);
		char *key = id ? json_dumps(id, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
		json_decref(id);
		if (!key)
			goto nomem;
		rec *r = find(m, key);
		if (r && r->used) {
			/* a repeated id: complete named this line's error record by
			 * the line (cli_line_id) */
			json_t *lid = cli_line_id(lineno);
			char *lkey = lid ? json_dumps(lid, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
			json_decref(lid);
			if (!lkey) {
				free(key);
				goto nomem;
			}
			rec *l = find(m, lkey);
			if (l) {
				free(key);
				key = lkey;
				r = l;
			} else {
				free(lkey);
			}
		}
		if (!r) {
			problem(m, "id %s (%s line %zu): missing: no shard has its record", key,
			        m->in_path, lineno);
		} else if (r->used) {
			problem(m, "id %s (%s line %zu): the input names it twice, so complete "
			        "gives one of them an error record that a merge by id cannot place",
			        key, m->in_path, lineno);
		} else {
			r->used = true;
			if (grow((void **)&m->order, &m->cap_order, m->n_order, sizeof *m->order) < 0) {
				free(key);
				goto nomem;
			}
			m->order[m->n_order++] = (size_t)(r - m->recs);
		}
		free(key);
	}
	rc = cli_lines_fail(got, m->in_path);
	goto done;
nomem:
	cli_error("%s: out of memory", m->in_path);
	rc = CLI_EXIT_SOFTWARE;
done:
	cli_lines_free(rd);
	if (f != stdin)
		fclose(f);
	return rc;
}

/* Copies the records in input order. */
static int write_output(merge *m)
{
	cli_outfile out;
	FILE **in = calloc(m->n_shards, sizeof *in);
	char *buf = NULL;
	size_t cap = 0;
	int rc;
	if (!in) {
		cli_error("out of memory");
		return CLI_EXIT_SOFTWARE;
	}
	if ((rc = cli_outfile_open(&out, m->out_path ? m->out_path : "-"))) {
		free(in);
		return rc;
	}
	for (size_t i = 0; i < m->n_order && !rc; i++) {
		const rec *r = &m->recs[m->order[i]];
		const char *path = m->shards[r->shard];
		if (!in[r->shard] && !(in[r->shard] = fopen(path, "rb"))) {
			cli_error("%s: cannot open: %s", path, strerror(errno));
			rc = CLI_EXIT_IO;
			break;
		}
		if (r->len > cap) {
			char *b = realloc(buf, r->len);
			if (!b) {
				cli_error("out of memory");
				rc = CLI_EXIT_SOFTWARE;
				break;
			}
			buf = b;
			cap = r->len;
		}
		if (fseeko(in[r->shard], (off_t)r->start, SEEK_SET) != 0 ||
		    fread(buf, 1, r->len, in[r->shard]) != r->len || buf[r->len - 1] != '\n') {
			cli_error("%s: line %zu: cannot read it again (did the file change?)", path,
			          r->lineno);
			rc = CLI_EXIT_IO;
			break;
		}
		if (fwrite(buf, 1, r->len, out.f) != r->len) {
			cli_error("%s: write error: %s", m->out_path ? m->out_path : "standard output",
			          strerror(errno));
			rc = CLI_EXIT_IO;
		}
	}
	if (rc)
		cli_outfile_abort(&out);
	else
		rc = cli_outfile_commit(&out);
	for (size_t i = 0; i < m->n_shards; i++)
		if (in[i])
			fclose(in[i]);
	free(in);
	free(buf);
	return rc;
}

static int parse_args(merge *m, int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = NULL;
		int st = 0;
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return -1;
		}
		if (cli_flag_value(argc, argv, &i, "-f", "--file", &v, &st)) {
			if (st)
				return st;
			m->in_path = v;
		} else if (cli_flag_value(argc, argv, &i, "-o", "--output", &v, &st)) {
			if (st)
				return st;
			m->out_path = v;
		} else if (cli_flag_value(argc, argv, &i, NULL, "--format-in", &v, &st)) {
			if (st)
				return st;
			if (!strcmp(v, "auto"))
				m->in_fmt = 0;
			else if (!strcmp(v, "text"))
				m->in_fmt = 1;
			else if (!strcmp(v, "jsonl") || !strcmp(v, "json"))
				m->in_fmt = 2;
			else {
				cli_error("--format-in: expected auto, text or jsonl, got '%s'", v);
				return CLI_EXIT_USAGE;
			}
		} else if (a[0] == '-' && a[1]) {
			cli_error("merge: unknown option '%s' (see 'seqboat merge --help')", a);
			return CLI_EXIT_USAGE;
		} else {
			m->shards[m->n_shards++] = argv[i];
		}
	}
	if (!m->in_path) {
		cli_error("merge: -f INPUT is required (the input file gives the order)");
		return CLI_EXIT_USAGE;
	}
	if (!m->n_shards) {
		cli_error("merge: no shard files (give the -o files of the 'complete --shard' runs)");
		return CLI_EXIT_USAGE;
	}
	if (m->out_path && !*m->out_path) {
		cli_error("merge: -o: expected a file name, got an empty string");
		return CLI_EXIT_USAGE;
	}
	struct stat out, a, b;
	bool have_out = m->out_path && stat(m->out_path, &out) == 0;
	for (size_t i = 0; i < m->n_shards; i++) {
		if (stat(m->shards[i], &a) != 0)
			continue; /* read_shard says why */
		if (have_out && a.st_dev == out.st_dev && a.st_ino == out.st_ino) {
			cli_error("merge: -o %s is one of the shard files; choose another", m->out_path);
			return CLI_EXIT_USAGE;
		}
		for (size_t j = 0; j < i; j++)
			if (stat(m->shards[j], &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
				cli_error("merge: %s is given twice (as %s too)", m->shards[i], m->shards[j]);
				return CLI_EXIT_USAGE;
			}
	}
	return 0;
}

int cmd_merge(int argc, char **argv)
{
	merge m;
	memset(&m, 0, sizeof m);
	int rc;
	if (!(m.shards = calloc((size_t)argc, sizeof *m.shards))) {
		cli_error("out of memory");
		return CLI_EXIT_SOFTWARE;
	}
	if ((rc = parse_args(&m, argc, argv))) {
		rc = rc < 0 ? 0 : rc;
		goto done;
	}
	for (size_t i = 0; i < m.n_shards; i++)
		if ((rc = read_shard(&m, i)))
			goto done;
	qsort(m.recs, m.n_recs, sizeof *m.recs, cmp_rec);
	check_duplicates(&m);
	if ((rc = read_input(&m)))
		goto done;
	for (size_t i = 0; i < m.n_recs; i++)
		if (!m.recs[i].used && (i == 0 || strcmp(m.recs[i - 1].key, m.recs[i].key)))
			problem(&m, "id %s (%s line %zu): not an item of %s", m.recs[i].key,
			        m.shards[m.recs[i].shard], m.recs[i].lineno, m.in_path);
	if (m.n_problems) {
		if (m.n_problems > MAX_LISTED)
			cli_error("merge: %zu more problems not listed", m.n_problems - MAX_LISTED);
		cli_error("merge: the shards do not hold each item of %s exactly once (%zu problem%s); "
		          "nothing written", m.in_path, m.n_problems, m.n_problems == 1 ? "" : "s");
		rc = CLI_EXIT_DATA;
		goto done;
	}
	rc = write_output(&m);
	if (!rc && cli_isatty(stderr))
		fprintf(stderr, "seqboat: merge: %zu records from %zu shard%s\n", m.n_order,
		        m.n_shards, m.n_shards == 1 ? "" : "s");
done:
	for (size_t i = 0; i < m.n_recs; i++)
		free(m.recs[i].key);
	free(m.recs);
	free(m.order);
	free(m.shards);
	return rc;
}
