/* common.h - what the subcommands share: exit statuses, error lines,
 * checked flag parsing, and finding and loading the model. */
#ifndef SB_CLI_COMMON_H
#define SB_CLI_COMMON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "seqboat.h"
#include "tokenizer.h"

/* sysexits.h values, as CONVENTIONS.md asks. */
enum {
	CLI_EXIT_OK = 0,
	CLI_EXIT_FAIL = 1,
	CLI_EXIT_USAGE = 2,
	CLI_EXIT_DATA = 65,
	CLI_EXIT_SOFTWARE = 70,
	CLI_EXIT_IO = 74,
	CLI_EXIT_INTERRUPTED = 130,
};

/* Remembers argv[0] (to find the bundled model next to the binary). */
void cli_init(int argc, char **argv);

/* One lowercase line on stderr: "seqboat: <message>". */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A warning line on stderr: "seqboat: warning: <message>". */
void cli_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints err's message and returns the exit status for its code. */
int cli_fail(const sb_error *err);
/* The exit status for a library status code. */
int cli_exit_status(int code);

/* Checked flag values: on a bad value, print "seqboat: --flag: ..." and
 * return false. */
bool cli_parse_long(const char *flag, const char *s, long min, long max, long *out);
bool cli_parse_int(const char *flag, const char *s, int min, int max, int *out);
bool cli_parse_float(const char *flag, const char *s, double min, double max, float *out);
bool cli_parse_u64(const char *flag, const char *s, uint64_t *out);

/* The flags several commands share, with one range each. */
/* -t/--threads: 0 means all cores; more than cli_cores() is lowered to
 * it with a warning (extra threads only wait for a core). */
bool cli_parse_threads(const char *s, int *out);
/* The cores this process may run on (its CPU affinity), at least 1. */
int cli_cores(void);
bool cli_parse_act_bias(const char *s, float *out);   /* --act-bias: -1e4..1e4 */
/* After option parsing: refuses leftover arguments of `cmd` with one
 * line; returns 0 or the usage exit status. */
int cli_no_operands(const char *cmd, int argc, char **argv);

/* The directory used when -m is not given: $SEQBOAT_MODEL; else, for the
 * binary in its build directory, the source tree's models/; else the
 * installed models directory (first relative to the binary, for a moved
 * or DESTDIR-staged installation, then the configured <datadir>). Returns
 * the first that holds a config.yaml, as a canonical path, or the path
 * the binary was meant to use. */
const char *cli_default_model_dir(void);

/* Loads the model (dir or the default) and, if tok is not NULL, its
 * tokenizer. On failure prints the error and returns the exit status;
 * 0 on success. */
int cli_load_model(const char *dir, sb_model **model, sb_tokenizer **tok,
                   sb_bytes_mode bytes);

/* The most bytes each kind of whole-file read takes (sb_file_read). */
#define CLI_LIMIT_TEXT ((size_t)256 << 20)     /* perplexity/tokenize/activations -f */
#define CLI_LIMIT_PROMPT ((size_t)64 << 20)    /* --prefix-file */
#define CLI_LIMIT_MODEL_FILE ((size_t)64 << 20) /* config, tokenizer files */

/* Reads a whole file (or stdin for "-") of at most `limit` bytes into a
 * malloc'd NUL-terminated buffer (a leading UTF-8 byte order mark
 * skipped); `what` names its kind in the message
 * when it is longer ("a text file"). Prints the error; returns 0 or an
 * exit status. */
int cli_read_file(const char *path, size_t limit, const char *what, char **buf, size_t *len);

/* A UTF-8 byte order mark. Every text file seqboat reads (dict.txt,
 * config.yaml through libyaml, prompt and JSONL files, text for
 * perplexity, tokenize and activations) skips one at its start: it names
 * the encoding and is no part of the first line. cli_read_file does it;
 * cli_skip_bom does it to len bytes at buf (NUL-terminated). */
#define CLI_UTF8_BOM "\xEF\xBB\xBF"
void cli_skip_bom(char *buf, size_t *len);

/* Parses "1 2 3" / "1,2,3" into ids (malloc'd). Prints the error naming
 * flag; returns 0 or an exit status. */
int cli_parse_ids(const char *flag, const char *s, int32_t **ids, size_t *n);

/* After getopt_long returned '?' (opterr is 0): one line naming the bad
 * option of command `cmd`; returns the usage exit status. */
int cli_bad_option(const char *cmd, char **argv);

/* The weights' type as `quantize --type` names it: q8 for the int8
 * blocks, else the dtype (F32, F16, BF16). */
const char *cli_weights_name(const sb_model *m);

/* True when the stream is a terminal. */
bool cli_isatty(FILE *f);

#endif
