/* lines.h - reading prompt files a line at a time with a bound on a line's
 * length, and naming their items the way `complete` names them, so that
 * `merge` can put the outputs of shards back in input order. */
#ifndef SB_CLI_LINES_H
#define SB_CLI_LINES_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* The longest input line. A longer one is read and dropped without ever
 * being held whole, so a hostile file cannot exhaust memory. */
#define CLI_LINE_MAX ((size_t)8 << 20)

typedef struct cli_lines cli_lines;

/* A reader over f (not closed by cli_lines_free). NULL when out of
 * memory. */
cli_lines *cli_lines_new(FILE *f);
void cli_lines_free(cli_lines *r);

/* The next line, without its '\n' and without a '\r' before it; *line is
 * NUL-terminated and valid until the next call. A line longer than
 * CLI_LINE_MAX sets *too_long and comes back empty. Returns 1 for a line,
 * 0 at the end of the input, -1 on a read error (errno), -2 when out of
 * memory. A UTF-8 byte order mark at the start of the input is skipped. */
int cli_lines_next(cli_lines *r, const char **line, size_t *len, bool *too_long);
/* After cli_lines_next returned `got`: for a read error (-1) or running
 * out of memory (-2), prints one line naming path and returns the exit
 * status; else 0. */
int cli_lines_fail(int got, const char *path);
/* The number of the line last returned (1-based). */
size_t cli_lines_number(const cli_lines *r);
/* Bytes consumed so far: the end of the last line returned, its '\n'
 * included (a last line without one ends the input). */
unsigned long long cli_lines_offset(const cli_lines *r);
/* Whether the line last returned ended with '\n' (the last line of a
 * file may not). */
bool cli_lines_ended(const cli_lines *r);

/* True if the line holds only spaces, tabs and carriage returns: such a
 * line is not an item. */
bool cli_line_blank(const char *s, size_t n);
/* True if the line starts (after spaces and tabs) with '{': the first
 * item line of an input decides between JSONL and plain text. */
bool cli_line_is_json(const char *s, size_t n);

/* The id of the item on input line `lineno`: the "custom_id" of an
 * OpenAI batch line, else the "id" member of obj (the line parsed as
 * JSONL, or NULL) when it is a string or an integer, else the line
 * number. `complete` and `merge` both name items through this.
 * Returns a new reference, or NULL when out of memory. */
json_t *cli_item_id(json_t *obj, size_t lineno);

/* The id of an error record that cannot have its line's own id: {"line":
 * N}. No input line can hold it (an id is a string or an integer), so it
 * never names another line's item. `complete` gives it to a JSONL line
 * whose id cannot be read (not JSON, not an object, an "id" of another
 * type, longer than CLI_LINE_MAX) and to every later line that repeats an
 * id; `merge` names those lines the same way. New reference or NULL. */
json_t *cli_line_id(size_t lineno);
/* cli_item_id for a JSONL line: obj is the parsed line or NULL when it
 * is not JSON; an unreadable id gives cli_line_id. */
json_t *cli_item_id_jsonl(json_t *obj, size_t lineno);

#endif
