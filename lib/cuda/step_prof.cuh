/*
 * step_prof.cuh - a clock per phase of the fused decode step, for a
 * diagnostic build only (meson -Dfused_step_prof=true, which compiles the
 * .cu files with -DSTEP_PROF; in the product build every mark is empty).
 *
 * Thread 0 of every block reads %globaltimer at each mark and adds the
 * time since its previous mark to that mark's slot; at the kernel's end
 * the block adds its slots to step_prof. At exit (registered by
 * sbk_step_setup) the means over blocks and steps go to stderr, one line
 * a mark: where a block's time goes, phase by phase.
 */
#ifndef SB_CUDA_STEP_PROF_CUH
#define SB_CUDA_STEP_PROF_CUH

#ifdef STEP_PROF
#include <stdio.h>
#include <stdlib.h>

#define PROF_SLOTS 40
#define PROF_ACT (PROF_SLOTS - 3)    // activated layers (block 0)
#define PROF_STEPS (PROF_SLOTS - 2)  // steps (block 0)
#define PROF_BLOCKS (PROF_SLOTS - 1) // blocks of a step

__device__ unsigned long long step_prof[PROF_SLOTS];

static __device__ __forceinline__ unsigned long long prof_now()
{
	unsigned long long t;
	asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
	return t;
}

#define PROF_DECL                                                                          \
	__shared__ unsigned long long prof_acc[PROF_SLOTS];                                    \
	unsigned long long prof_last = 0;                                                      \
	if (threadIdx.x == 0) {                                                                \
		for (int i_ = 0; i_ < PROF_SLOTS; i_++)                                            \
			prof_acc[i_] = 0;                                                              \
		prof_last = prof_now();                                                            \
	}
#define PROF(k)                                                                            \
	do {                                                                                   \
		if (threadIdx.x == 0) {                                                            \
			const unsigned long long t_ = prof_now();                                      \
			prof_acc[k] += t_ - prof_last;                                                 \
			prof_last = t_;                                                                \
		}                                                                                  \
	} while (0)
#define PROF_COUNT(k)                                                                      \
	do {                                                                                   \
		if (threadIdx.x == 0 && blockIdx.x == 0)                                           \
			prof_acc[k]++;                                                                 \
	} while (0)
#define PROF_END                                                                           \
	do {                                                                                   \
		if (threadIdx.x == 0) {                                                            \
			if (blockIdx.x == 0) {                                                         \
				prof_acc[PROF_STEPS] = 1;                                                  \
				prof_acc[PROF_BLOCKS] = gridDim.x;                                         \
			}                                                                              \
			for (int i_ = 0; i_ < PROF_SLOTS; i_++)                                        \
				if (i_ != PROF_BLOCKS)                                                     \
					atomicAdd(&step_prof[i_], prof_acc[i_]);                               \
				else if (blockIdx.x == 0)                                                  \
					step_prof[i_] = prof_acc[i_];                                          \
		}                                                                                  \
	} while (0)

static void step_prof_dump(void)
{
	unsigned long long h[PROF_SLOTS];
	if (cudaMemcpyFromSymbol(h, step_prof, sizeof h) != cudaSuccess || !h[PROF_STEPS] ||
	    !h[PROF_BLOCKS])
		return;
	const double n = (double)h[PROF_STEPS] * (double)h[PROF_BLOCKS];
	double total = 0.0;
	fprintf(stderr, "step profile: %llu steps, %llu blocks, %.2f activated layers a step\n",
	        h[PROF_STEPS], h[PROF_BLOCKS], (double)h[PROF_ACT] / (double)h[PROF_STEPS]);
	for (int k = 0; k < PROF_ACT; k++)
		if (h[k]) {
			fprintf(stderr, "prof %2d %9.3f us a step\n", k, h[k] / 1e3 / n);
			total += h[k] / 1e3 / n;
		}
	fprintf(stderr, "prof total %9.3f us a step\n", total);
}

static void step_prof_register(void)
{
	static int done;
	if (!done && getenv("SEQBOAT_STEP_PROF")) {
		done = 1;
		atexit(step_prof_dump);
	}
}
#else
#define PROF_DECL
#define PROF(k) \
	do {        \
	} while (0)
#define PROF_COUNT(k) \
	do {              \
	} while (0)
#define PROF_END \
	do {         \
	} while (0)
static inline void step_prof_register(void) {}
#endif

#endif
