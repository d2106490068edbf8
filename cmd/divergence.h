/* divergence.h - comparing a model's predictions with a base model's, as
 * llama-perplexity's --kl-divergence does: `perplexity
 * --kl-divergence-base FILE` saves the base model's log-probabilities of
 * every scored position, and `perplexity --kl-divergence
 * --kl-divergence-base FILE` reads them back beside another model's
 * (a quantized copy, say) and reports the KL divergence, the change of
 * the right token's probability (delta-p) and how often both put the same
 * token first.
 *
 * The file ("base logits"): the 8 bytes "SBKLD01\n"; uint32 vocabulary
 * size V; uint32 0; uint64 n, the stream's length in tokens; uint64 the
 * chunk length (n when not chunked); n int32 token ids; then, for each
 * scored position in scoring order, V float32 log-probabilities. All
 * little-endian. So it takes 4 x V bytes per scored token. */
#ifndef SB_CLI_DIVERGENCE_H
#define SB_CLI_DIVERGENCE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "report.h"

/* The base file being written or read. */
typedef struct cli_kld_base {
	cli_outfile out;         /* writing */
	FILE *in;                /* reading */
	const char *path;
	size_t V;
	float *row;              /* (V) one position's log-probabilities, read */
} cli_kld_base;

/* Creates path (atomically: it appears on commit) and writes the header
 * and the stream. Prints the error; returns 0 or an exit status. */
int cli_kld_base_create(cli_kld_base *b, const char *path, size_t V, const int32_t *ids,
                        size_t n, size_t chunk);
/* Appends one position's log-probabilities (V of them). */
int cli_kld_base_write(cli_kld_base *b, const float *logp);
/* Flushes and renames into place; 0 or an exit status. */
int cli_kld_base_commit(cli_kld_base *b);

/* Opens path and checks that it was written for this vocabulary, token
 * stream and chunk length; a mismatch is one error line naming the file
 * and what differs (exit 65). */
int cli_kld_base_open(cli_kld_base *b, const char *path, size_t V, const int32_t *ids,
                      size_t n, size_t chunk);
/* Reads the next position's log-probabilities into b->row. */
int cli_kld_base_read(cli_kld_base *b);
/* Closes either kind (a file being written is removed). */
void cli_kld_base_close(cli_kld_base *b);

/* Statistics over positions of two models' predictions. */
typedef struct cli_kld {
	double *kld;             /* (n) per position, for the percentiles */
	size_t n, cap;
	double sum_kld, sum_kld2;
	double sum_dp, sum_dp2, min_dp, max_dp;   /* delta-p = p(target) - p_base(target) */
	double sum_lr, sum_lr2;  /* ln p_base(target) - ln p(target) per position */
	double sum_nll, sum_nll2, sum_bnll, sum_bnll2, sum_nll_bnll;
	uint64_t same_top;
} cli_kld;

/* Adds one position: logp and base are V log-probabilities each. Returns
 * false when out of memory. */
bool cli_kld_add(cli_kld *k, const float *logp, const float *base, size_t V, int32_t target);
void cli_kld_free(cli_kld *k);
/* The statistics as a JSON object (NULL when out of memory); sorts k->kld. */
json_t *cli_kld_json(cli_kld *k);
/* The statistics as text lines, llama-perplexity's names; sorts k->kld. */
void cli_kld_print(FILE *f, cli_kld *k);

/* Mean and its standard error (the sample standard deviation over
 * sqrt(n)) of n values from their sum and sum of squares. */
void cli_mean_se(double sum, double sum2, double n, double *mean, double *se);

#endif
