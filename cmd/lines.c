/* lines.c - bounded line reading and item ids (see lines.h). */
#include "lines.h"

#include <errno.h>
#include "common.h"

#include <stdlib.h>
#include <string.h>

struct cli_lines {
	FILE *f;
	size_t at, end;          /* unread bytes of blk */
	size_t lineno;
	unsigned long long offset; /* bytes consumed, the last line's end included */
	bool ended;              /* that line ended with '\n' */
	char *line;              /* (cap) the line being assembled */
	size_t len, cap;
	char blk[1 << 16];
};

cli_lines *cli_lines_new(FILE *f)
{
	cli_lines *r = calloc(1, sizeof *r);
	if (r)
		r->f = f;
	return r;
}

void cli_lines_free(cli_lines *r)
{
	if (!r)
		return;
	free(r->line);
	free(r);
}

static int append(cli_lines *r, const char *s, size_t n)
{
	if (r->len + n + 1 > r->cap) {
		size_t cap = r->cap ? r->cap : 256;
		while (cap < r->len + n + 1)
			cap *= 2;
		char *p = realloc(r->line, cap);
		if (!p)
			return -1;
		r->line = p;
		r->cap = cap;
	}
	memcpy(r->line + r->len, s, n);
	r->len += n;
	r->line[r->len] = 0;
	return 0;
}

int cli_lines_next(cli_lines *r, const char **line, size_t *len, bool *too_long)
{
	bool any = false;
	r->len = 0;
	*too_long = false;
	if (append(r, "", 0) < 0)
		return -2;
	for (;;) {
		if (r->at == r->end) {
			r->at = 0;
			r->end = fread(r->blk, 1, sizeof r->blk, r->f);
			if (!r->end) {
				if (ferror(r->f))
					return -1;
				if (!any)
					return 0;
				break;
			}
		}
		any = true;
		const char *s = r->blk + r->at;
		size_t avail = r->end - r->at;
		const char *nl = memchr(s, '\n', avail);
		size_t n = nl ? (size_t)(nl - s) : avail;
		r->at += n + (nl != NULL);
		r->offset += n + (nl != NULL);
		r->ended = nl != NULL;
		if (*too_long || n > CLI_LINE_MAX - r->len)
			*too_long = true;
		else if (append(r, s, n) < 0)
			return -2;
		if (nl)
			break;
	}
	/* A UTF-8 byte order mark before the first line names the encoding;
	 * it is no part of the line (common.h: every text file skips it). */
	if (r->lineno == 0 && !*too_long && r->len >= 3 && !memcmp(r->line, "\xEF\xBB\xBF", 3)) {
		memmove(r->line, r->line + 3, r->len - 3);
		r->len -= 3;
	}
	r->lineno++;
	if (*too_long)
		r->len = 0;
	else if (r->len && r->line[r->len - 1] == '\r')
		r->line[--r->len] = 0;
	r->line[r->len] = 0;
	*line = r->line;
	*len = r->len;
	return 1;
}

bool cli_lines_ended(const cli_lines *r)
{
	return r->ended;
}

int cli_lines_fail(int got, const char *path)
{
	if (got == -1) {
		cli_error("%s: read error: %s", path, strerror(errno));
		return CLI_EXIT_IO;
	}
	if (got == -2) {
		cli_error("%s: out of memory reading it", path);
		return CLI_EXIT_SOFTWARE;
	}
	return 0;
}

size_t cli_lines_number(const cli_lines *r)
{
	return r->lineno;
}

unsigned long long cli_lines_offset(const cli_lines *r)
{
	return r->offset;
}

bool cli_line_blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return false;
	return true;
}

bool cli_line_is_json(const char *s, size_t n)
{
	size_t i = 0;
	while (i < n && (s[i] == ' ' || s[i] == '\t'))
		i++;
	return i < n && s[i] == '{';
}

json_t *cli_item_id(json_t *obj, size_t lineno)
{
	/* an OpenAI batch line is named by its custom_id */
	json_t *cid = json_is_object(obj) ? json_object_get(obj, "custom_id") : NULL;
	if (json_is_string(cid))
		return json_incref(cid);
	json_t *id = json_is_object(obj) ? json_object_get(obj, "id") : NULL;
	if (json_is_string(id) || json_is_integer(id))
		return json_incref(id);
	return json_integer((json_int_t)lineno);
}

json_t *cli_line_id(size_t lineno)
{
	return json_pack("{s:I}", "line", (json_int_t)lineno);
}

json_t *cli_item_id_jsonl(json_t *obj, size_t lineno)
{
	if (!json_is_object(obj))
		return cli_line_id(lineno);
	json_t *id = json_object_get(obj, "id");
	json_t *cid = json_object_get(obj, "custom_id");
	if ((id && !json_is_string(id) && !json_is_integer(id)) || (cid && !json_is_string(cid)))
		return cli_line_id(lineno);
	return cli_item_id(obj, lineno);
}
