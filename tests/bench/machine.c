/*
 * machine.c - the two ceilings the speed targets are measured against
 * (docs/benchmarks.md): memory read bandwidth (a multi-threaded sum over a
 * buffer far larger than the caches, like a decode step streaming its
 * weights) and OpenBLAS's single-precision matrix-product rate at the
 * shapes prefill uses. Prints figures; asserts nothing.
 *
 * usage: bench-machine [THREADS] [MiB]
 */
#include <cblas.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

typedef struct part {
	const float *p;
	size_t n;
	double sum;
} part;

/* Four independent AVX accumulators, so the loop is bound by loads. */
__attribute__((target("avx2"))) static void *sum_part(void *arg)
{
	part *w = arg;
	__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	for (size_t i = 0; i + 32 <= w->n; i += 32) {
		a0 = _mm256_add_ps(a0, _mm256_load_ps(w->p + i));
		a1 = _mm256_add_ps(a1, _mm256_load_ps(w->p + i + 8));
		a2 = _mm256_add_ps(a2, _mm256_load_ps(w->p + i + 16));
		a3 = _mm256_add_ps(a3, _mm256_load_ps(w->p + i + 24));
	}
	float t[8];
	_mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
	double s = 0;
	for (int k = 0; k < 8; k++)
		s += t[k];
	w->sum = s;
	return NULL;
}

static double read_bandwidth(int threads, size_t mib, double *check)
{
	size_t n = mib * 1024 * 1024 / sizeof(float);
	float *buf = aligned_alloc(64, n * sizeof(float));
	if (!buf)
		return -1;
	for (size_t i = 0; i < n; i++)
		buf[i] = (float)(i & 7);
	double best = 0;
	for (int rep = 0; rep < 5; rep++) {
		pthread_t th[256];
		part w[256];
		double t0 = now();
		for (int i = 0; i < threads; i++) {
			/* slices of whole 32-float groups, so aligned loads stay aligned */
			size_t g = n / 32, a = g * (size_t)i / threads * 32,
			       b = g * (size_t)(i + 1) / threads * 32;
			w[i] = (part){buf + a, b - a, 0};
			pthread_create(&th[i], NULL, sum_part, &w[i]);
		}
		for (int i = 0; i < threads; i++) {
			pthread_join(th[i], NULL);
			*check += w[i].sum;
		}
		double gbs = (double)n * sizeof(float) / (now() - t0) / 1e9;
		if (gbs > best)
			best = gbs;
	}
	free(buf);
	return best;
}

int main(int argc, char **argv)
{
	int threads = argc > 1 ? atoi(argv[1]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (threads < 1 || threads > 256) {
		fprintf(stderr, "usage: bench-machine [THREADS 1..256] [MiB ...]\n");
		return 2;
	}
	/* Default sizes: inside L2, about a model's weights, past any L3. */
	size_t def[] = {2, 64, 160, 2048}, sizes[16];
	int ns = 0;
	for (int i = 2; i < argc && ns < 16; i++)
		sizes[ns++] = (size_t)atol(argv[i]);
	if (ns == 0)
		for (; ns < 4; ns++)
			sizes[ns] = def[ns];
	double check = 0;
	for (int i = 0; i < ns; i++) {
		double gbs = sizes[i] ? read_bandwidth(threads, sizes[i], &check) : -1;
		if (gbs < 0) {
			fprintf(stderr, "bench-machine: cannot allocate %zu MiB\n", sizes[i]);
			return 1;
		}
		printf("memory read bandwidth, %5zu MiB buffer: %6.1f GB/s (%d threads, best of 5)\n",
		       sizes[i], gbs, threads);
	}
	printf("(checksum %.0f)\n", check);

	openblas_set_num_threads(threads);
	int shapes[][3] = {{256, 2592, 616}, {256, 618, 616}, {256, 616, 1232}, {512, 512, 512}};
	for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
		int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
		float *A = calloc((size_t)M * K, 4), *B = calloc((size_t)N * K, 4), *C = calloc((size_t)M * N, 4);
		for (size_t i = 0; i < (size_t)M * K; i++)
			A[i] = 1e-3f * (float)(i % 13);
		for (size_t i = 0; i < (size_t)N * K; i++)
			B[i] = 1e-3f * (float)(i % 7);
		double bestg = 0;
		for (int rep = 0; rep < 20; rep++) {
			double t0 = now();
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K,
			            0.0f, C, N);
			double g = 2.0 * M * N * K / (now() - t0) / 1e9;
			if (g > bestg)
				bestg = g;
		}
		printf("sgemm %4d x %4d x %4d: %.1f GFLOP/s (%d threads, best of 20)\n", M, N, K, bestg,
		       threads);
		free(A);
		free(B);
		free(C);
	}
	return 0;
}
