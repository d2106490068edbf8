/*
 * batch.c - batched decode and prefill throughput on any device: B
 * states at a given depth (tokens already read) decoded together with
 * sb_decode_batch, and a prompt of P tokens prefilled into a fresh state.
 * Prints one line of figures per setting (docs/benchmarks.md); asserts
 * nothing.
 *
 * usage: bench-batch -m MODEL [--device D] [-b B,...] [-d DEPTH,...] [-n STEPS]
 *                    [-p PROMPT] [-t THREADS]
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "seqboat.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int parse_list(const char *s, long *v, int cap)
{
	int n = 0;
	char *end;
	while (*s && n < cap) {
		v[n++] = strtol(s, &end, 10);
		if (end == s || v[n - 1] < 0)
			return -1;
		s = *end == ',' ? end + 1 : end;
		if (*end && *end != ',')
			return -1;
	}
	return n;
}

static unsigned rng = 12345;
static int32_t rnd_token(int V)
{
	rng = rng * 1103515245u + 12345u;
	return (int32_t)((rng >> 8) % (unsigned)V);
}

int main(int argc, char **argv)
{
	const char *model = NULL, *device = NULL;
	long bs[32] = {1}, ds[32] = {0};
	int nb = 1, nd = 1, steps = 32, threads = 0;
	long prompt = 512;
	static const struct option opts[] = {
		{"model", required_argument, 0, 'm'}, {"device", required_argument, 0, 'D'},
		{"batch", required_argument, 0, 'b'}, {"depth", required_argument, 0, 'd'},
		{"steps", required_argument, 0, 'n'}, {"prompt", required_argument, 0, 'p'},
		{"threads", required_argument, 0, 't'}, {0, 0, 0, 0}};
	int o;
	while ((o = getopt_long(argc, argv, "m:D:b:d:n:p:t:", opts, NULL)) != -1) {
		switch (o) {
		case 'm': model = optarg; break;
		case 'D': device = optarg; break;
		case 'b': nb = parse_list(optarg, bs, 32); break;
		case 'd': nd = parse_list(optarg, ds, 32); break;
		case 'n': steps = atoi(optarg); break;
		case 'p': prompt = atol(optarg); break;
		case 't': threads = atoi(optarg); break;
		default: return 2;
		}
	}
	if (!model || nb < 1 || nd < 1 || steps < 1 || prompt < 0) {
		fprintf(stderr, "usage: bench-batch -m MODEL [--device D] [-b B,...] [-d DEPTH,...] "
		                "[-n STEPS] [-p PROMPT] [-t THREADS]\n");
		return 2;
	}
	sb_error err = {0};
	sb_model *m = sb_model_load(model, &err);
	if (!m) {
		fprintf(stderr, "bench-batch: %s\n", err.msg);
		return 65;
	}
	const sb_config *c = sb_model_config(m);
	long maxb = 1;
	for (int i = 0; i < nb; i++)
		maxb = bs[i] > maxb ? bs[i] : maxb;
	sb_ctx_params p = sb_ctx_default_params();
	p.device = device;
	p.n_threads = threads;
	p.max_batch = (size_t)maxb;
	sb_ctx *ctx = sb_ctx_new(m, &p, &err);
	if (!ctx) {
		fprintf(stderr, "bench-batch: %s\n", err.msg);
		return 1;
	}
	const size_t V = (size_t)c->vocab_size, sbytes = sb_state_bytes(m);
	printf("# %s, device %s, %s weights, state %.1f MiB per sequence\n", model,
	       sb_ctx_device(ctx), sb_dtype_name(sb_model_weight_dtype(m)), sbytes / 1048576.0);

	/* prefill: P tokens into a fresh state, best of 5 */
	if (prompt > 0) {
		int32_t *tok = malloc((size_t)prompt * sizeof *tok);
		float *lg = malloc(V * sizeof(float));
		sb_state *s = sb_ctx_state_new(ctx, &err);
		if (!tok || !lg || !s) {
			fprintf(stderr, "bench-batch: %s\n", s ? "out of memory" : err.msg);
			return 1;
		}
		for (long i = 0; i < prompt; i++)
			tok[i] = rnd_token(c->vocab_size);
		double best = 1e30;
		for (int r = 0; r < 6; r++) {
			sb_state_reset(s);
			sb_outputs out = {.last_logits = lg};
			double t0 = now();
			if (sb_prefill(ctx, s, tok, (size_t)prompt, &out, &err) < 0) {
				fprintf(stderr, "bench-batch: %s\n", err.msg);
				return 1;
			}
			double t = now() - t0;
			if (r > 0 && t < best)
				best = t;
		}
		printf("pp%ld: %.0f tokens/s (%.3f ms)\n", prompt, (double)prompt / best, best * 1e3);
		sb_state_free(s);
		free(tok);
		free(lg);
	}

	printf("%8s %8s %12s %10s %12s\n", "batch", "depth", "tokens/s", "ms/step", "states MiB");
	for (int di = 0; di < nd; di++)
		for (int bi = 0; bi < nb; bi++) {
			const size_t B = (size_t)bs[bi];
			const long depth = ds[di];
			sb_state **st = calloc(B, sizeof *st);
			int32_t *tok = malloc((size_t)(depth > (long)B ? depth : (long)B) * sizeof *tok + 4);
			float *lg = malloc(B * V * sizeof(float));
			if (!st || !tok || !lg) {
				fprintf(stderr, "bench-batch: out of memory\n");
				return 1;
			}
			for (size_t b = 0; b < B; b++)
				if (!(st[b] = sb_ctx_state_new(ctx, &err))) {
					fprintf(stderr, "bench-batch: %zu states: %s\n", B, err.msg);
					return 1;
				}
			/* one state read to the depth, copied to the others */
			for (long i = 0; i < depth; i++)
				tok[i] = rnd_token(c->vocab_size);
			if (depth > 0 && sb_prefill(ctx, st[0], tok, (size_t)depth, NULL, &err) < 0) {
				fprintf(stderr, "bench-batch: %s\n", err.msg);
				return 1;
			}
			for (size_t b = 1; b < B; b++)
				sb_state_copy(st[b], st[0]);
			double t0 = 0;
			for (int k = 0; k < steps + 3; k++) {
				if (k == 3)
					t0 = now();
				for (size_t b = 0; b < B; b++)
					tok[b] = rnd_token(c->vocab_size);
				if (sb_decode_batch(ctx, st, tok, B, lg, &err) < 0) {
					fprintf(stderr, "bench-batch: %s\n", err.msg);
					return 1;
				}
			}
			double t = now() - t0;
			printf("%8zu %8ld %12.0f %10.3f %12.1f\n", B, depth, (double)B * steps / t,
			       t * 1e3 / steps, (double)B * sbytes / 1048576.0);
			fflush(stdout);
			for (size_t b = 0; b < B; b++)
				sb_state_free(st[b]);
			free(st);
			free(tok);
			free(lg);
		}
	sb_ctx_free(ctx);
	sb_model_free(m);
	return 0;
}
