/* gen.h - what `complete` and `chat` share: the generation flags (spelled
 * as llama.cpp spells them), opening the model for generation, per-item
 * seeds, and writing model text safely to a terminal. */
#ifndef SB_CLI_GEN_H
#define SB_CLI_GEN_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common.h"

typedef struct cli_gen {
	const char *model_dir;   /* -m; NULL: the default model */
	int threads;             /* -t; 0: all cores */
	const char *device;      /* --device; NULL: the CPU */
	float act_bias;          /* --act-bias */
	long max_tokens;         /* -n; -1: until end of sequence or a stop */
	sb_sampler_params sp;    /* bias_ids/bias_values point at the arrays below */
	bool seed_set;           /* --seed given (and not -1) */
	const char **stops;      /* (n_stops) --stop values, pointing into argv */
	size_t n_stops;
	int32_t *bias_ids;       /* (n_bias) --logit-bias */
	float *bias_values;      /* (n_bias) */
	size_t n_bias;
	bool check;              /* --check: read every weight at load */
	bool escape;             /* -e (the default) / --no-escape */
	size_t mem;              /* --mem in bytes; 0: the default (cli_gen_mem_limit) */
} cli_gen;

/* The memory limit for state-sized allocations (batch slots, snapshots,
 * caches), checked with sb_state_budget: --mem, or by default three
 * quarters of physical memory. */
size_t cli_gen_mem_limit(const cli_gen *g);

/* Seeds stay below 2^53 so that every JSON reader keeps them exact. */
#define CLI_SEED_MAX ((UINT64_C(1) << 53) - 1)

/* Defaults: llama.cpp's sampler defaults, the given token limit. */
void cli_gen_init(cli_gen *g, long default_max_tokens);
void cli_gen_free(cli_gen *g);

/* If argv[*i] is a generation flag, consumes it and its value (advancing
 * *i past the value) and returns 1; returns 0 if it is not one; on a bad
 * value prints the error and returns -CLI_EXIT_USAGE (or another negated
 * exit status). */
int cli_gen_parse(cli_gen *g, int argc, char **argv, int *i);

/* After the last flag: with escapes on (the default), reads llama.cpp's
 * escapes in the --stop values. Prints the error; 0 or an exit status. */
int cli_gen_finish(cli_gen *g);

/* llama.cpp's escapes, in place: \n \r \t \\ \' \" and \xHH (not
 * \x00); any other backslash stays as written. Returns the new length. */
size_t cli_unescape(char *s);

/* The help text for the flags above (lines starting with two spaces),
 * stating the command's default -n. A static buffer. */
const char *cli_gen_help(long default_max_tokens);

/* Matches argv[*i] against a flag that takes a value: "-x VALUE",
 * "--name VALUE" or "--name=VALUE". short_name may be NULL. On a match
 * *value is set and *i points at the last argument consumed. A missing
 * value prints an error and sets *status to CLI_EXIT_USAGE (and still
 * returns true). */
bool cli_flag_value(int argc, char **argv, int *i, const char *short_name,
                    const char *long_name, const char **value, int *status);

/* Loads model and tokenizer and makes a compute context with the threads
 * and router bias of g. Prints the error and returns an exit status on
 * failure; 0 on success (the caller frees the three). */
int cli_gen_open(const cli_gen *g, sb_model **model, sb_tokenizer **tok,
                 sb_ctx **ctx);

/* The end-of-sequence id of the tokenizer, else of the config; -1 if none. */
int32_t cli_gen_eos(const sb_model *m, const sb_tokenizer *tok);

/* A seed from the clock and the process (for runs without --seed). */
uint64_t cli_random_seed(void);
/* A seed for one item: a mix of the base seed and the item's key, so an
 * item's output does not depend on which other items ran before it. */
uint64_t cli_seed_derive(uint64_t base, const char *key, size_t len);
/* The seed of one item of a batch: the base seed itself when the input
 * is that one item (so `--seed S -p PROMPT` uses S, as llama.cpp does),
 * else cli_seed_derive masked to CLI_SEED_MAX. Either way the seed a
 * record reports reproduces it, given back as --seed with the prompt
 * alone or as the record's "seed". */
uint64_t cli_item_seed(uint64_t base, const char *key, size_t len, bool single);

/* Monotonic clock in seconds. */
double cli_now(void);

/* Writes model text to a stream with control characters other than
 * newline and tab (C0, DEL and the C1 range U+0080..U+009F) shown as
 * \xNN or \u00NN, so generated text cannot drive the terminal. Carries a
 * split C1 sequence over to the next call. */
typedef struct cli_escaper {
	bool pending_c2;         /* the last byte written was an unconsumed 0xC2 */
} cli_escaper;
void cli_write_escaped(FILE *f, cli_escaper *e, const char *s, size_t len);
void cli_escaper_finish(FILE *f, cli_escaper *e);

#endif
