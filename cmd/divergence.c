/* divergence.c - see divergence.h. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "divergence.h"

static const char magic[8] = {'S', 'B', 'K', 'L', 'D', '0', '1', '\n'};

typedef struct kld_header {
	char magic[8];
	uint32_t vocab;
	uint32_t zero;
	uint64_t n_tokens;
	uint64_t chunk;
} kld_header;

int cli_kld_base_create(cli_kld_base *b, const char *path, size_t V, const int32_t *ids,
                        size_t n, size_t chunk)
{
	memset(b, 0, sizeof *b);
	b->path = path;
	b->V = V;
	int rc = cli_outfile_open(&b->out, path);
	if (rc)
		return rc;
	kld_header h = {.vocab = (uint32_t)V, .n_tokens = n, .chunk = chunk};
	memcpy(h.magic, magic, sizeof magic);
	if (fwrite(&h, sizeof h, 1, b->out.f) != 1 || fwrite(ids, sizeof *ids, n, b->out.f) != n) {
		cli_error("%s: write error: %s", path, strerror(errno));
		cli_outfile_abort(&b->out);
		return CLI_EXIT_IO;
	}
	return 0;
}

int cli_kld_base_write(cli_kld_base *b, const float *logp)
{
	if (fwrite(logp, sizeof *logp, b->V, b->out.f) != b->V) {
		cli_error("%s: write error: %s", b->path, strerror(errno));
		return CLI_EXIT_IO;
	}
	return 0;
}

int cli_kld_base_commit(cli_kld_base *b)
{
	return cli_outfile_commit(&b->out);
}

int cli_kld_base_open(cli_kld_base *b, const char *path, size_t V, const int32_t *ids,
                      size_t n, size_t chunk)
{
	memset(b, 0, sizeof *b);
	b->path = path;
	b->V = V;
	if (!(b->in = fopen(path, "rb"))) {
		cli_error("%s: cannot open: %s", path, strerror(errno));
		return CLI_EXIT_IO;
	}
	kld_header h;
	if (fread(&h, sizeof h, 1, b->in) != 1 || memcmp(h.magic, magic, sizeof magic)) {
		cli_error("%s: not a base logits file (expected one written by "
		          "'seqboat perplexity --kl-divergence-base FILE')", path);
		return CLI_EXIT_DATA;
	}
	if (h.vocab != V) {
		cli_error("%s: field 'vocab': the base model has %u tokens, this one %zu", path,
		          (unsigned)h.vocab, V);
		return CLI_EXIT_DATA;
	}
	if (h.n_tokens != n) {
		cli_error("%s: field 'tokens': it holds a stream of %llu tokens, this text has %zu "
		          "(score the same text, with the same tokenizer)", path,
		          (unsigned long long)h.n_tokens, n);
		return CLI_EXIT_DATA;
	}
	if (h.chunk != chunk) {
		cli_error("%s: field 'chunk': it was scored in chunks of %llu tokens, this run uses %zu "
		          "(give the same --chunk)", path, (unsigned long long)h.chunk, chunk);
		return CLI_EXIT_DATA;
	}
	int32_t buf[1024];
	for (size_t i = 0; i < n;) {
		size_t k = n - i < 1024 ? n - i : 1024;
		if (fread(buf, sizeof *buf, k, b->in) != k) {
			cli_error("%s: truncated: the token stream ends early", path);
			return CLI_EXIT_DATA;
		}
		for (size_t j = 0; j < k; j++)
			if (buf[j] != ids[i + j]) {
				cli_error("%s: field 'ids': token %zu is %ld there and %ld here (score the "
				          "same text, with the same tokenizer)", path, i + j, (long)buf[j],
				          (long)ids[i + j]);
				return CLI_EXIT_DATA;
			}
		i += k;
	}
	if (!(b->row = malloc(V * sizeof *b->row))) {
		cli_error("out of memory");
		return CLI_EXIT_SOFTWARE;
	}
	return 0;
}

int cli_kld_base_read(cli_kld_base *b)
{
	if (fread(b->row, sizeof *b->row, b->V, b->in) != b->V) {
		if (ferror(b->in)) {
			cli_error("%s: read error: %s", b->path, strerror(errno));
			return CLI_EXIT_IO;
		}
		cli_error("%s: truncated: it ends before the last scored position", b->path);
		return CLI_EXIT_DATA;
	}
	return 0;
}

void cli_kld_base_close(cli_kld_base *b)
{
	if (b->in)
		fclose(b->in);
	cli_outfile_abort(&b->out);   /* accepts a zeroed or committed one */
	free(b->row);
	memset(b, 0, sizeof *b);
}

void cli_mean_se(double sum, double sum2, double n, double *mean, double *se)
{
	*mean = n > 0 ? sum / n : 0;
	double var = n > 1 ? (sum2 - sum * sum / n) / (n - 1) : 0;
	*se = var > 0 ? sqrt(var / n) : 0;
}

bool cli_kld_add(cli_kld *k, const float *logp, const float *base, size_t V, int32_t target)
{
	if (k->n == k->cap) {
		size_t cap = k->cap ? 2 * k->cap : 1024;
		double *p = realloc(k->kld, cap * sizeof *p);
		if (!p)
			return false;
		k->kld = p;
		k->cap = cap;
	}
	double kl = 0;
	size_t top = 0, btop = 0;
	for (size_t v = 0; v < V; v++) {
		double pb = exp((double)base[v]);
		kl += pb * ((double)base[v] - (double)logp[v]);
		top = logp[v] > logp[top] ? v : top;
		btop = base[v] > base[btop] ? v : btop;
	}
	/* Rounding can make a divergence of equal distributions a hair below 0. */
	kl = kl < 0 ? 0 : kl;
	double dp = exp((double)logp[target]) - exp((double)base[target]);
	double nll = -(double)logp[target], bnll = -(double)base[target];
	if (k->n == 0)
		k->min_dp = k->max_dp = dp;
	k->kld[k->n++] = kl;
	k->sum_kld += kl;
	k->sum_kld2 += kl * kl;
	k->sum_dp += dp;
	k->sum_dp2 += dp * dp;
	k->min_dp = fmin(k->min_dp, dp);
	k->max_dp = fmax(k->max_dp, dp);
	k->sum_lr += nll - bnll;
	k->sum_lr2 += (nll - bnll) * (nll - bnll);
	k->sum_nll += nll;
	k->sum_nll2 += nll * nll;
	k->sum_bnll += bnll;
	k->sum_bnll2 += bnll * bnll;
	k->sum_nll_bnll += nll * bnll;
	k->same_top += top == btop;
	return true;
}

void cli_kld_free(cli_kld *k)
{
	free(k->kld);
	memset(k, 0, sizeof *k);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* The q-quantile of the sorted values (linear between neighbours). */
static double quantile(const double *v, size_t n, double q)
{
	if (n == 0)
		return 0;
	double pos = q * (double)(n - 1);
	size_t i = (size_t)pos;
	if (i + 1 >= n)
		return v[n - 1];
	return v[i] + (pos - (double)i) * (v[i + 1] - v[i]);
}

typedef struct kld_summary {
	double ppl, ppl_se, bppl, bppl_se, cor, lr, lr_se, ratio, ratio_se;
	double kld, kld_se, kld_max, kld_999, kld_99, kld_median, kld_10, kld_min;
	double dp, dp_se, dp_rms, dp_max, dp_min, same, same_se;
} kld_summary;

static void summarize(cli_kld *k, kld_summary *s)
{
	const double n = (double)k->n;
	qsort(k->kld, k->n, sizeof *k->kld, cmp_double);
	double m, se;
	cli_mean_se(k->sum_nll, k->sum_nll2, n, &m, &se);
	s->ppl = exp(m);
	s->ppl_se = s->ppl * se;
	cli_mean_se(k->sum_bnll, k->sum_bnll2, n, &m, &se);
	s->bppl = exp(m);
	s->bppl_se = s->bppl * se;
	double mx = k->sum_nll / n, my = k->sum_bnll / n;
	double vx = k->sum_nll2 / n - mx * mx, vy = k->sum_bnll2 / n - my * my;
	s->cor = vx > 0 && vy > 0 ? (k->sum_nll_bnll / n - mx * my) / sqrt(vx * vy) : 1.0;
	cli_mean_se(k->sum_lr, k->sum_lr2, n, &s->lr, &s->lr_se);
	s->ratio = exp(s->lr);
	s->ratio_se = s->ratio * s->lr_se;
	cli_mean_se(k->sum_kld, k->sum_kld2, n, &s->kld, &s->kld_se);
	s->kld_max = k->n ? k->kld[k->n - 1] : 0;
	s->kld_min = k->n ? k->kld[0] : 0;
	s->kld_999 = quantile(k->kld, k->n, 0.999);
	s->kld_99 = quantile(k->kld, k->n, 0.99);
	s->kld_median = quantile(k->kld, k->n, 0.5);
	s->kld_10 = quantile(k->kld, k->n, 0.1);
	cli_mean_se(k->sum_dp, k->sum_dp2, n, &s->dp, &s->dp_se);
	s->dp_rms = sqrt(k->sum_dp2 / n);
	s->dp_max = k->max_dp;
	s->dp_min = k->min_dp;
	s->same = (double)k->same_top / n;
	s->same_se = sqrt(s->same * (1 - s->same) / (n > 1 ? n - 1 : 1));
}

json_t *cli_kld_json(cli_kld *k)
{
	kld_summary s;
	summarize(k, &s);
	return json_pack("{s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f,"
	                 " s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f}",
	                 "positions", (json_int_t)k->n,
	                 "ppl", s.ppl, "ppl_uncertainty", s.ppl_se,
	                 "base_ppl", s.bppl, "base_ppl_uncertainty", s.bppl_se,
	                 "cor_ln_ppl", s.cor,
	                 "mean_ln_ppl_ratio", s.lr, "mean_ln_ppl_ratio_uncertainty", s.lr_se,
	                 "ppl_ratio", s.ratio, "ppl_ratio_uncertainty", s.ratio_se,
	                 "kld_mean", s.kld, "kld_uncertainty", s.kld_se, "kld_max", s.kld_max,
	                 "kld_99_9", s.kld_999, "kld_99", s.kld_99, "kld_median", s.kld_median,
	                 "kld_10", s.kld_10, "kld_min", s.kld_min,
	                 "delta_p_mean", s.dp, "delta_p_uncertainty", s.dp_se,
	                 "delta_p_rms", s.dp_rms, "delta_p_max", s.dp_max, "delta_p_min", s.dp_min,
	                 "same_top_p", s.same);
}

void cli_kld_print(FILE *f, cli_kld *k)
{
	kld_summary s;
	summarize(k, &s);
	fprintf(f, "====== Perplexity statistics ======\n");
	fprintf(f, "Mean PPL(Q)                   : %10.6f +/- %10.6f\n", s.ppl, s.ppl_se);
	fprintf(f, "Mean PPL(base)                : %10.6f +/- %10.6f\n", s.bppl, s.bppl_se);
	fprintf(f, "Cor(ln(PPL(Q)), ln(PPL(base))): %9.2f%%\n", 100 * s.cor);
	fprintf(f, "Mean ln(PPL(Q)/PPL(base))     : %10.6f +/- %10.6f\n", s.lr, s.lr_se);
	fprintf(f, "Mean PPL(Q)/PPL(base)         : %10.6f +/- %10.6f\n", s.ratio, s.ratio_se);
	fprintf(f, "\n====== KL divergence statistics ======\n");
	fprintf(f, "Mean    KLD: %10.6f +/- %10.6f\n", s.kld, s.kld_se);
	fprintf(f, "Maximum KLD: %10.6f\n", s.kld_max);
	fprintf(f, "99.9%%   KLD: %10.6f\n", s.kld_999);
	fprintf(f, "99.0%%   KLD: %10.6f\n", s.kld_99);
	fprintf(f, "Median  KLD: %10.6f\n", s.kld_median);
	fprintf(f, "10.0%%   KLD: %10.6f\n", s.kld_10);
	fprintf(f, "Minimum KLD: %10.6f\n", s.kld_min);
	fprintf(f, "\n====== Token probability statistics ======\n");
	fprintf(f, "Mean    delta-p: %9.3f +/- %7.3f %%\n", 100 * s.dp, 100 * s.dp_se);
	fprintf(f, "Maximum delta-p: %9.3f %%\n", 100 * s.dp_max);
	fprintf(f, "Minimum delta-p: %9.3f %%\n", 100 * s.dp_min);
	fprintf(f, "RMS     delta-p: %9.3f %%\n", 100 * s.dp_rms);
	fprintf(f, "Same top p     : %9.3f +/- %7.3f %%\n", 100 * s.same, 100 * s.same_se);
}
