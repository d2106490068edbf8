/*
 * step.cu - the fused decode step: a whole step of a few rows of distinct
 * states (embedding, every layer, the logits) as ONE cooperative kernel.
 *
 * At batch 1 a token is a few megabytes of weights: what bounds the
 * per-op kernels is not bandwidth but their count (87 kernels a step,
 * each a small grid waiting on its predecessor). Here every block of the
 * grid stays resident and the phases of a layer are separated by grid
 * barriers instead of kernel boundaries. What costs is the barriers and
 * the trips to memory after each, so a layer has as few as its data
 * allow, and what does not depend on the phase before is fetched before
 * its barrier:
 *
 *   P0  (once a step) the embedding, the EMA's state term of every
 *       layer, hg = sum_n (g q) h over the state before the step; every
 *       block also keeps the rings' counters and the rotary angles of the
 *       rows' positions (the same for every layer) in shared memory
 *   A   every block: x, its norm, mx = act(hg + u ec) of every channel
 *       and the router (so every block knows the decisions); then
 *       hx_proj and mx_proj, a warp per output row, and the EMA's new
 *       state, an element a thread
 *   B   (only if some row is activated) the attention over each activated
 *       row's ring. Where a row's ring fits a block's pool (one row at any
 *       depth for the paper-size model), two phases: B1 a warp per ring
 *       entry, its score (q from z, with the layer's tables); B2 a block
 *       per slab of the value columns, the softmax over all the scores
 *       and the weighted sum of its columns of the ring's values, times
 *       the gate. Otherwise one phase by chunks: a block per chunk of
 *       SBK_CHUNK entries and slab of the value columns, the last block
 *       of a slab combining its chunks.
 *   C   (only if some row is activated) h_proj and the residual, a warp
 *       per output row; the ring counters advance
 *   A layer no row activates has no B or C: every block computes its
 *   residual itself at the start of the next layer's A (or of the logits),
 *   so it is one barrier; one that some row activates is three or four.
 *   (Post-norm models normalize x after a barrier; with an FFN, fc1 and
 *   fc2 + residual are two more phases.) Then the final norm and the
 *   output projection.
 *
 * Data is copied to shared memory ahead of its phase by bulk copies (the
 * tensor memory accelerator, sm_90), which move whole rows without the
 * SM's load units and signal an mbarrier when they land: each warp's
 * weight rows of the next phase with their biases (issued before the
 * barrier), each layer's small tables (its hg, ec, norm and q/k vectors,
 * copied during the layer before into the other of two buffers). A B2
 * block's slab of the ring's values (its first during B1) is many short
 * rows, copied by every thread 16 bytes at a time (cp.async): a bulk
 * copy's operands are the warp's, so bulk copies from many threads are
 * issued a lane at a time. The layers' descriptors
 * are read into shared memory once; rows other blocks wrote are read from L2 (__ldcg, a thread's
 * loads issued together, ldcg_each; and the bulk copies: L1 is not
 * coherent between blocks).
 *
 * It is the default for one row (docs/benchmarks.md) and slower from two
 * rows on, where the per-op kernels keep the step (SEQBOAT_CUDA_FUSED=1:
 * up to 8 rows here).
 *
 * The arithmetic is that of the per-op kernels (the same device functions:
 * gemv_row, attn_chunk, attn_combine, the router) but for the EMA, whose
 * sum is split in two (the same terms, rounded in another order), the
 * norms (summed by the block) and the two-phase attention (one softmax
 * over the whole ring instead of per chunk): the paths agree to float
 * rounding.
 *
 * The kernel is compiled for a model kind (KD): the generic one, which
 * reads the model's settings, and for one row the SeqBoat defaults with
 * F16, BF16, q8 or F32 weights, whose settings are constants
 * (kind_seqboat; kernel_for picks it, SEQBOAT_CUDA_KIND=any declines it).
 *
 * PROF(k) marks the phases for the diagnostic build of step_prof.cuh
 * (-Dfused_step_prof=true); elsewhere they are empty.
 */
#include <cooperative_groups.h>

#include "device.cuh"
#include "step_prof.cuh"

namespace cg = cooperative_groups;

/* Threads a block: 256 measured fastest on the H200 (then the kernel has
 * 255 registers a thread and nearly no spills; 384 and 512 spill), and
 * the weight rows a warp copies a phase ahead, at most (phase A of the
 * paper-size model has 3 or 4 rows a warp). A tuning build may set both. */
#ifndef STEP_THREADS
#define STEP_THREADS 256
#endif
#define STEP_WARPS (STEP_THREADS / 32)
#ifndef STEP_PF_MAX
#define STEP_PF_MAX 4
#endif
/* B1: the pairs (or elements) of q and k a lane takes at a time */
#define STEP_QK 2

/* ---- bulk copies to shared memory (the tensor memory accelerator,
 * sm_90 and later): one thread issues the copy of a whole row, which the
 * copy engine moves without the SM's load units, and counts its bytes on
 * an mbarrier of shared memory that the readers wait on. Each barrier has
 * one arrival a phase, the issuer's expect of the phase's bytes (made
 * after its copies: the transaction count may go below zero meanwhile).
 * Before sm_90 nothing is copied (sbk_step_setup: no slots, no pool) and
 * these are no-ops. */

static __device__ __forceinline__ unsigned sm_addr(const void *p)
{
	return (unsigned)__cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void bar_init(uint64_t *b)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(sm_addr(b)) : "memory");
#endif
}

/* Makes the barriers' initialization visible to the copy engine. */
static __device__ __forceinline__ void bar_init_fence()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}

/* The phase's arrival, with the bytes its copies bring. */
static __device__ __forceinline__ void bar_expect(uint64_t *b, unsigned bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(sm_addr(b)),
	             "r"(bytes)
	             : "memory");
#endif
}

/* bytes (a multiple of 16; dst and src 16-byte aligned) from global src
 * to shared dst, counted on b. */
static __device__ __forceinline__ void bulk(void *dst, const void *src, unsigned bytes, uint64_t *b)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile(
		"cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
			sm_addr(dst)),
		"l"(src), "r"(bytes), "r"(sm_addr(b))
		: "memory");
#endif
}

/* Waits for the phase of parity ph of b, then flips ph. */
static __device__ __forceinline__ void bar_wait(uint64_t *b, unsigned &ph)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("{\n\t.reg .pred p;\n"
	             "WAIT:\n\t"
	             "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n\t"
	             "@!p bra WAIT;\n}" ::"r"(sm_addr(b)),
	             "r"(ph)
	             : "memory");
#endif
	ph ^= 1;
}

/* Orders this thread's memory accesses (its writes to shared memory, and
 * what it saw of other blocks' writes at a barrier) before its later bulk
 * copies, which run in another proxy. */
static __device__ __forceinline__ void proxy_fence()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("fence.proxy.async;" ::: "memory");
#endif
}

/* 16 bytes from global src (through L2) to shared dst, both 16-byte
 * aligned, by this thread (cp.async: no bulk copy's barrier, waited for
 * by cp_async_wait). Only the pool's users call it, and there is a pool
 * only from sm_90 on (sbk_step_setup); before sm_80 it is a no-op. */
static __device__ __forceinline__ void cp_async16(void *dst, const void *src)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sm_addr(dst)), "l"(src)
	             : "memory");
#endif
}

/* Waits for this thread's cp_async16 copies (the block syncs after, for
 * the others'). */
static __device__ __forceinline__ void cp_async_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
	asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

/* A grid barrier in two halves, so that a block does what no other block
 * waits for (its next copies, the EMA's new state, the router) between
 * its arrival and its wait. As in cooperative groups, block 0 adds
 * 2^31 - (blocks - 1) and the others 1, so the counter's high bit flips
 * when the last block arrives and its low bits come back to zero: it is
 * never reset; the add releases what the block wrote, the polling load
 * acquires what the others did. Arrive returns (to thread 0) the count
 * before its add. */
static __device__ __forceinline__ unsigned gbar_arrive(unsigned *bar)
{
	__syncthreads();
	unsigned old = 0;
	if (threadIdx.x == 0) {
		const unsigned nb = blockIdx.x == 0 ? 0x80000000u - (gridDim.x - 1) : 1u;
		asm volatile("atom.add.release.gpu.u32 %0, [%1], %2;" : "=r"(old) : "l"(bar), "r"(nb) : "memory");
	}
	return old;
}

static __device__ __forceinline__ void gbar_wait(unsigned *bar, unsigned old)
{
	if (threadIdx.x == 0) {
		unsigned now;
		do
			asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(now) : "l"(bar) : "memory");
		while (((old ^ now) & 0x80000000u) == 0);
	}
	__syncthreads();
}

/* Whether row copies of W (one of a's prefetched matrices) fit slots of
 * `slot` bytes (whole 16-byte pieces, aligned): where a's rows are all
 * aligned, wherever there are slots (each is its matrices' longest row). */
static __device__ __forceinline__ bool pf_fits(const sbk_step &a, const sbk_mat &W, int slot)
{
	if (a.rows_aligned)
		return slot > 0;
	const size_t rb = (size_t)W.cols * wsize(W.dt);
	return slot > 0 && rb <= (size_t)slot && (rb & 15) == 0 && ((uintptr_t)W.w & 15) == 0;
}

/* Row r of W into dst, counted on b (by the calling thread); returns its
 * bytes. */
static __device__ __forceinline__ unsigned pf_row(const sbk_mat &W, int r, unsigned char *dst,
                                                  uint64_t *b)
{
	const size_t rb = (size_t)W.cols * wsize(W.dt);
	bulk(dst, (const unsigned char *)W.w + (size_t)r * rb, (unsigned)rb, b);
	return (unsigned)rb;
}

/* ---- helpers */

/* use(i, __ldcg(src(i))) for the block's i < n (this thread's: i = tid,
 * tid + blockDim.x, ..), K loads of a thread (STEP_LDCG) issued before the
 * first use. __ldcg is an asm volatile, which the compiler keeps in order
 * with the stores around it: a loop of loads and stores waited for each
 * load in turn, a trip to L2 an element. */
#define STEP_LDCG 4
template <int K = STEP_LDCG, typename Src, typename Use>
static __device__ __forceinline__ void ldcg_each(int n, Src src, Use use)
{
	const int bd = blockDim.x;
	for (int i0 = threadIdx.x; i0 < n; i0 += K * bd) {
		float t[K];
#pragma unroll
		for (int k = 0; k < K; k++)
			t[k] = i0 + k * bd < n ? __ldcg(src(i0 + k * bd)) : 0.0f;
#pragma unroll
		for (int k = 0; k < K; k++)
			if (i0 + k * bd < n)
				use(i0 + k * bd, t[k]);
	}
}

/* The row of element i of rows of n: no division in row 0 (one row, the
 * fused step's default, never divides). */
static __device__ __forceinline__ int row_of(int i, int n)
{
	return i < n ? 0 : i / n;
}

/* rows (B, n) of src (row stride ld, written by other blocks) into
 * shared dst (row stride n). Contiguous aligned rows go 16 bytes a load:
 * og of the paper's model (1,232 floats) is then one load a thread, one
 * trip to L2 where it was two. */
static __device__ void stage(float *dst, const float *src, int B, int n, int ld)
{
	__syncthreads();
	if (ld == n && !((B * n) & 3) && !(((uintptr_t)src | (uintptr_t)dst) & 15)) {
		const float4 *s4 = (const float4 *)src;
		float4 *d4 = (float4 *)dst;
		const int n4 = B * n / 4, bd = blockDim.x;
		for (int i0 = threadIdx.x; i0 < n4; i0 += 2 * bd) {
			const bool two = i0 + bd < n4;
			const float4 t0 = __ldcg(s4 + i0), t1 = two ? __ldcg(s4 + i0 + bd) : t0;
			d4[i0] = t0;
			if (two)
				d4[i0 + bd] = t1;
		}
		__syncthreads();
		return;
	}
	ldcg_each(
		B * n,
		[&](int i) {
			const int b = row_of(i, n);
			return src + (size_t)b * ld + (i - b * n);
		},
		[&](int i, float t) { dst[i] = t; });
	__syncthreads();
}

/* x (B rows of n) into xs and xr, from xr where the block holds it
 * already (have_x), else through L2 (other blocks wrote it). */
static __device__ __forceinline__ void load_x(bool have_x, const float *xc, float *xr, float *xs,
                                              int n)
{
	if (have_x)
		for (int i = threadIdx.x; i < n; i += blockDim.x)
			xs[i] = xr[i];
	else
		ldcg_each(
			n, [&](int i) { return xc + i; },
			[&](int i, float t) {
				xr[i] = t;
				xs[i] = t;
			});
}

/* The B rows in shared memory, each normalized by its own warp. */
static __device__ void norm_rows(const sbk_norm &nm, float *xs, int B, int D)
{
	const int w = threadIdx.x >> 5;
	if (w < B)
		warp_norm(nm, xs + (size_t)w * D, D);
	__syncthreads();
}

/* ---- the model kinds the step is compiled for. The generic kind reads
 * the model's settings from it; a fixed kind has them as constants, so
 * that the compiler leaves out the code of every other setting and the
 * branches on them. k_step<1> of the generic kind is 409 KB of
 * instructions, of the SeqBoat defaults with F16 weights 219 KB, and the
 * smaller kernel decodes a row of the paper-size model 4 to 8% faster on
 * the H200 (docs/benchmarks.md, 2026-12-03): the size itself costs, as a
 * layer's code no longer fits the instruction cache when the next layer
 * runs it again. (So k_step<1> also takes B as the constant 1.) The
 * chunked attention stays in (leaving it out measured no faster). */
struct kind_any {
	static __device__ __forceinline__ int dt(int model) { return model; }
	static __device__ __forceinline__ int norm(int model) { return model; }
	static __device__ __forceinline__ int act(const sbk_step &a) { return a.g.act; }
	static __device__ __forceinline__ int attn(const sbk_step &a) { return a.g.attn; }
	static __device__ __forceinline__ bool rotary(const sbk_step &a) { return a.g.rotary; }
	static __device__ __forceinline__ bool prenorm(const sbk_step &a) { return a.prenorm; }
	static __device__ __forceinline__ bool ffn(const sbk_step &a) { return a.ffn; }
};

/* SeqBoat's defaults (the paper's models) with every matrix of dtype DT:
 * SiLU, softmax attention with rotary positions, layernorm before each
 * layer, no feed-forward block. */
template <int DT>
struct kind_seqboat {
	static __device__ __forceinline__ int dt(int) { return DT; }
	static __device__ __forceinline__ int norm(int) { return SB_NORM_LAYERNORM; }
	static __device__ __forceinline__ int act(const sbk_step &) { return SB_ACT_SILU; }
	static __device__ __forceinline__ int attn(const sbk_step &) { return SB_ATTN_SOFTMAX; }
	static __device__ __forceinline__ bool rotary(const sbk_step &) { return true; }
	static __device__ __forceinline__ bool prenorm(const sbk_step &) { return true; }
	static __device__ __forceinline__ bool ffn(const sbk_step &) { return false; }
};

/* Whether a's model has kind_seqboat's settings (its dtype aside). */
static bool seqboat_defaults(const sbk_step *a)
{
	return a->nkind == SB_NORM_LAYERNORM && a->g.act == SB_ACT_SILU &&
	       a->g.attn == SB_ATTN_SOFTMAX && a->g.rotary && a->prenorm && !a->ffn;
}

/* acc[b] = row (given as its first weight and scales) of a matrix of
 * W's dtype and columns, . xs[b]. */
template <int NB, class KD>
static __device__ __forceinline__ void dot_row(const sbk_mat &W, const void *row, const __half *rsc,
                                               const float *xs, int B, float *acc)
{
	switch (KD::dt(W.dt)) {
	case SB_DTYPE_F16:
		gemv_row<SB_DTYPE_F16, NB>(row, rsc, W.cols, xs, B, acc);
		break;
	case SB_DTYPE_BF16:
		gemv_row<SB_DTYPE_BF16, NB>(row, rsc, W.cols, xs, B, acc);
		break;
	case SB_DTYPE_I8:
		gemv_row<SB_DTYPE_I8, NB>(row, rsc, W.cols, xs, B, acc);
		break;
	default:
		gemv_row<SB_DTYPE_F32, NB>(row, rsc, W.cols, xs, B, acc);
		break;
	}
}

static __device__ __forceinline__ const __half *row_scales(const sbk_mat &W, int r)
{
	return W.sc ? W.sc + (size_t)r * ((W.cols + 31) >> 5) : NULL;
}

/* acc[b] = row r of W . xs[b], from the slot where it was prefetched
 * (slot not NULL and the rows fit slots of `bytes`) or from W. */
template <int NB, class KD>
static __device__ __forceinline__ void dot_rows(const sbk_step &a, const sbk_mat &W, int r,
                                                const unsigned char *slot,
                                                int bytes, const float *xs, int B, float *acc)
{
	const void *row = slot && pf_fits(a, W, bytes)
	                  ? (const void *)slot
	                  : (const void *)((const unsigned char *)W.w +
	                                   (size_t)r * W.cols * wsize(W.dt));
	dot_row<NB, KD>(W, row, row_scales(W, r), xs, B, acc);
}

/* One output row of phase A: row r of matrix W, its bias (or NULL),
 * where row b's result goes (y + b ld) and its activation. */
struct a_out {
	const sbk_mat *W;
	int r, ld, act;
	const float *bias;
	float *y;
};

/* Phase A's k-th output row of warp gw (of nwarps) into *o, or false past
 * them: hx_proj's rows 2 .. D+1 then mx_proj's; after the last layer the
 * output projection's. */
template <class KD>
static __device__ __forceinline__ bool a_row(const sbk_step &a, const sbk_layer *sl, int l, int gw,
                                             int nwarps, int k, a_out *o)
{
	const int D = a.g.D, ZH = a.g.Z + 2 * a.g.H, i = gw + k * nwarps;
	if (l == a.L) {
		if (i >= a.g.V)
			return false;
		*o = {&a.out, i, a.g.V, SBK_ACT_NONE, NULL, a.logits + i};
		return true;
	}
	const sbk_layer &ly = sl[l];
	if (i < D) {
		*o = {&ly.hx, i + 2, D + 2, SBK_ACT_NONE, ly.hx_b + i + 2, a.hxu + i + 2};
		return true;
	}
	if (i >= D + ZH)
		return false;
	*o = {&ly.mx, i - D, ZH, KD::act(a), ly.mx_b + i - D, a.zgv + i - D};
	return true;
}

/* v[i] of a small array kept in registers (i < N; indexed by unrolled
 * comparisons, not through local memory). */
template <int N>
static __device__ __forceinline__ float pick(const float *v, int i)
{
	float t = v[0];
#pragma unroll
	for (int j = 1; j < N; j++)
		if (i == j)
			t = v[j];
	return t;
}

/* Phase A's products of layer l (l == L: the output projection) over the
 * B rows x, a warp per output row, from the warp's slots pfw where they
 * were prefetched, with the biases read a phase ahead (bia); lane b writes
 * row b's result. */
template <int NB, class KD>
static __device__ __forceinline__ void a_products(const sbk_step &a, const sbk_layer *sl, int l,
                                                  int gw, int nwarps, const unsigned char *pfw,
                                                  const float *x, int B, const float *bia)
{
	const int lane = threadIdx.x & 31;
	for (int k = 0;; k++) {
		a_out o;
		if (!a_row<KD>(a, sl, l, gw, nwarps, k, &o))
			break;
		const float bv = !o.bias ? 0.0f : k < a.pfa ? pick<STEP_PF_MAX>(bia, k) : *o.bias;
		float acc[NB];
		dot_rows<NB, KD>(a, *o.W, o.r, k < a.pfa ? pfw + (size_t)k * a.slota : NULL, a.slota, x, B,
		                 acc);
		if (lane < B) {
			const float t = pick<NB>(acc, lane);
			o.y[(size_t)lane * o.ld] = apply_act(o.act, o.bias ? t + bv : t);
		}
	}
}

/* The dots of one row x (NB == 1, shared) with the rows j < K set in mask
 * m, of a matrix of dtype DT and cols columns (a multiple of 8; the rows
 * 16-byte aligned, sc their scales where I8), in one pass over the
 * columns: every lane's loads of all the rows are in flight together and
 * their FMA chains and warp sums overlap, where a row at a time waited for
 * each row's in turn. The terms are those of gemv_row, in its order. */
template <int DT, int K>
static __device__ __forceinline__ void gemv_rows1(const void *const *rows, const __half *const *sc,
                                                  unsigned m, int cols, const float *x, float *acc)
{
	const int lane = threadIdx.x & 31, n8 = cols >> 3;
#pragma unroll
	for (int j = 0; j < K; j++)
		acc[j] = 0.0f;
	for (int c8 = lane; c8 < n8; c8 += 32) {
		const float4 *xp = (const float4 *)(x + (size_t)c8 * 8);
		const float4 x0 = xp[0], x1 = xp[1];
#pragma unroll
		for (int j = 0; j < K; j++)
			if ((m >> j) & 1) {
				float wv[8];
				wload8<DT>(rows[j], sc[j], (size_t)c8 * 8, c8 >> 2, wv);
				acc[j] = dot8(wv, x0, x1, acc[j]);
			}
	}
#pragma unroll
	for (int j = 0; j < K; j++)
		acc[j] = warp_sum(acc[j]);
}

/* Phase A's products of layer l (l == L: the output projection) for one
 * row x (NB == 1), and for warps 0 and 1 (rr: 0 or 1, else -1) the
 * router's row rr of hx, copied to rslot, whose dot goes to *u (lane 0):
 * all in one pass (gemv_rows1), where every row was prefetched and all
 * share a dtype and a width (a multiple of 8), with the biases read a
 * phase ahead (bia). Returns whether they did (else nothing is done and
 * the caller takes a row at a time). */
template <class KD>
static __device__ __forceinline__ bool a_group1(const sbk_step &a, const sbk_layer *sl, int l,
                                                int gw, int nwarps, const unsigned char *pfw,
                                                int rr, const unsigned char *rslot,
                                                const float *x, const float *bia, float *u)
{
	constexpr int K = STEP_PF_MAX + 1;  // the product rows, then the router's
	const void *rows[K] = {};
	const __half *sc[K] = {};
	const sbk_mat *W0 = NULL;
	unsigned m = 0;
	if (rr >= 0 && l < a.L) {
		W0 = &sl[l].hx;
		if (!pf_fits(a, *W0, a.slota))
			return false;
		rows[K - 1] = rslot;
		sc[K - 1] = row_scales(*W0, rr);
		m = 1u << (K - 1);
	}
#pragma unroll
	for (int k = 0; k < K; k++) {
		a_out o;
		if (!a_row<KD>(a, sl, l, gw, nwarps, k, &o))
			break;
		if (k == K - 1 || k >= a.pfa || !pf_fits(a, *o.W, a.slota) ||
		    (W0 && (o.W->dt != W0->dt || o.W->cols != W0->cols)))
			return false;
		W0 = o.W;
		rows[k] = pfw + (size_t)k * a.slota;
		sc[k] = row_scales(*o.W, o.r);
		m |= 1u << k;
	}
	if (!m)
		return true;
	if (W0->cols & 7)
		return false;
	float acc[K];
	switch (KD::dt(W0->dt)) {
	case SB_DTYPE_F16:
		gemv_rows1<SB_DTYPE_F16, K>(rows, sc, m, W0->cols, x, acc);
		break;
	case SB_DTYPE_BF16:
		gemv_rows1<SB_DTYPE_BF16, K>(rows, sc, m, W0->cols, x, acc);
		break;
	case SB_DTYPE_I8:
		gemv_rows1<SB_DTYPE_I8, K>(rows, sc, m, W0->cols, x, acc);
		break;
	default:
		gemv_rows1<SB_DTYPE_F32, K>(rows, sc, m, W0->cols, x, acc);
		break;
	}
	if ((threadIdx.x & 31) != 0)
		return true;
	if ((m >> (K - 1)) & 1)
		*u = acc[K - 1];
	/* the rows again (a_row), rather than five descriptors kept live
	 * across the products */
#pragma unroll
	for (int k = 0; k < K - 1; k++) {
		a_out o;
		if (!((m >> k) & 1) || !a_row<KD>(a, sl, l, gw, nwarps, k, &o))
			break;
		*o.y = apply_act(o.act, o.bias ? acc[k] + bia[k] : acc[k]);
	}
	return true;
}

/* n rounded up to a multiple of 4 (floats: 16 bytes). */
static __host__ __device__ __forceinline__ size_t al4(size_t n)
{
	return (n + 3) & ~(size_t)3;
}

/* n floats of src into dst (shared, 16-byte aligned): by one bulk copy
 * (one: the caller is thread 0 alone, and every table is aligned) counted
 * on b, whose bytes are returned; else read through L2 by the block (0
 * returned). */
static __device__ __forceinline__ unsigned pf_floats(bool one, float *dst, const float *src, int n,
                                                     uint64_t *b)
{
	if (one) {
		bulk(dst, src, 4u * n, b);
		return 4u * n;
	}
	ldcg_each(
		n, [&](int i) { return src + i; }, [&](int i, float t) { dst[i] = t; });
	return 0;
}

/* A layer's small tables in shared memory (one of two buffers, the next
 * layer's copied while this one runs): the EMA's state terms hg of the B
 * rows (row stride al4(D)), ec, the norm's weights, q/k's scales and
 * offsets. */
struct step_tab {
	float *hg, *ec, *nw, *nb, *gq, *gk, *bq, *bk;
};

/* Floats of one buffer for NB rows. */
static __host__ __device__ size_t step_tab_floats(const sbk_geo &g, int NB)
{
	return ((size_t)NB + 3) * al4(g.D) + 4 * al4(g.Z);
}

static __device__ step_tab tab_at(float *t, const sbk_geo &g, int NB)
{
	const size_t Dp = al4(g.D), Zp = al4(g.Z);
	step_tab s;
	s.hg = t;
	s.ec = t + (size_t)NB * Dp;
	s.nw = s.ec + Dp;
	s.nb = s.nw + Dp;
	s.gq = s.nb + Dp;
	s.gk = s.gq + Zp;
	s.bq = s.gk + Zp;
	s.bk = s.bq + Zp;
	return s;
}

/* Issues the copies of layer l's tables into T (l == L: the final norm's
 * weights only), counted on b; the block syncs before the copies are
 * waited for. hg was written by other blocks before a grid barrier: the
 * copies read L2. */
static __device__ void pf_tables(const sbk_step &a, const sbk_layer *sl, int l, const step_tab &T,
                                 uint64_t *b)
{
	const int D = a.g.D, Z = a.g.Z;
	/* every table a bulk copy, by thread 0 alone (where the others went
	 * through the copies' code too, predicated off, each copy cost every
	 * warp a dozen instructions); else every table read by the block */
	const bool one = a.bulk && a.tables_aligned;
	if (one && threadIdx.x != 0)
		return;
	const sbk_norm &nm = l < a.L ? sl[l].norm : a.final_norm;
	unsigned bytes = 0;
	if (one)
		proxy_fence();  // hg as the barrier left it
	if (nm.w)
		bytes += pf_floats(one, T.nw, nm.w, D, b);
	if (nm.b)
		bytes += pf_floats(one, T.nb, nm.b, D, b);
	if (l < a.L) {
		const sbk_layer_vecs &v = sl[l].v;
		for (int r = 0; r < a.B; r++)
			bytes += pf_floats(one, T.hg + (size_t)r * al4(D), a.hg + ((size_t)r * a.L + l) * D, D, b);
		bytes += pf_floats(one, T.ec, a.ec + (size_t)l * D, D, b);
		bytes += pf_floats(one, T.gq, v.gq, Z, b);
		bytes += pf_floats(one, T.gk, v.gk, Z, b);
		bytes += pf_floats(one, T.bq, v.bq, Z, b);
		bytes += pf_floats(one, T.bk, v.bk, Z, b);
	}
	if (threadIdx.x == 0)
		bar_expect(b, bytes);
}

/* nm with its weights where pf_tables copied them. */
template <class KD>
static __device__ __forceinline__ sbk_norm norm_in(const sbk_norm &nm, const step_tab &T)
{
	sbk_norm s = nm;
	s.kind = KD::norm(nm.kind);
	if (nm.w)
		s.w = T.nw;
	if (nm.b)
		s.b = T.nb;
	return s;
}

/* A max or a sum over the block, in every thread, with one barrier (red:
 * 64 floats of shared memory, of which call k uses one half: two calls in
 * a row never share one). */
template <bool MAX>
static __device__ __forceinline__ float block_red1(float v, float *red, int k)
{
	const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
	float *r = red + 32 * (k & 1);
	v = MAX ? warp_max(v) : warp_sum(v);
	if (lane == 0)
		r[w] = v;
	__syncthreads();
	const float t = lane < nw ? r[lane] : MAX ? -INFINITY : 0.0f;
	return MAX ? warp_max(t) : warp_sum(t);
}

/* The B rows xs (complete in shared memory) normalized in place: one row
 * by the whole block, each thread ending with the elements it wrote (i =
 * tid, tid + blockDim.x, ..; no barrier after: the caller syncs before
 * others read them); more rows by a warp each, with a barrier after. */
static __device__ void norm_xs(const sbk_norm &nm, float *xs, int B, int D, float *red)
{
	if (B == 1) {
		int k = 0;
		norm_by(nm, xs, D, threadIdx.x, blockDim.x,
		        [&](float s) { return block_red1<false>(s, red, k++); });
	} else {
		norm_rows(nm, xs, B, D);
	}
}

/* Issues the copies of phase A's rows of layer l (l == L: the output
 * projection's) into the warp's slots pfw, and of the router's rows (warps
 * 0 and 1) into pfr, counted on the warp's barrier b (by lane 0). Their
 * biases are read meanwhile, into bias (STEP_PF_MAX) and rbias (the
 * router's). */
template <class KD>
static __device__ __forceinline__ void pf_a(const sbk_step &a, const sbk_layer *sl, int l, int gw,
                                            int nwarps, unsigned char *pfw, unsigned char *pfr,
                                            float *bias, float *rbias, uint64_t *b)
{
	const int w = threadIdx.x >> 5;
	const bool issuer = (threadIdx.x & 31) == 0;
	unsigned bytes = 0;
	if (l < a.L && w < 2) {
		if (issuer && pf_fits(a, sl[l].hx, a.slota))
			bytes += pf_row(sl[l].hx, w, pfr + (size_t)w * a.slota, b);
		*rbias = sl[l].hx_b[w];
	}
#pragma unroll
	for (int k = 0; k < STEP_PF_MAX; k++) {
		a_out o;
		if (k >= a.pfa || !a_row<KD>(a, sl, l, gw, nwarps, k, &o))
			break;
		if (issuer && pf_fits(a, *o.W, a.slota))
			bytes += pf_row(*o.W, o.r, pfw + (size_t)k * a.slota, b);
		bias[k] = o.bias ? *o.bias : 0.0f;
	}
	if (issuer)
		bar_expect(b, bytes);
}

/* Issues the copies of phase C's rows (h_proj) of layer l, counted on the
 * warp's barrier b. */
static __device__ void pf_c(const sbk_step &a, const sbk_layer *sl, int l, int gw, int nwarps,
                            unsigned char *pfw, uint64_t *b)
{
	const sbk_mat &W = sl[l].ho;
	if ((threadIdx.x & 31) != 0)
		return;
	unsigned bytes = 0;
	if (pf_fits(a, W, a.slotc))
		for (int k = 0; k < a.pfc; k++) {
			const int r = gw + k * nwarps;
			if (r >= a.g.D)
				break;
			bytes += pf_row(W, r, pfw + (size_t)k * a.slotc, b);
		}
	bar_expect(b, bytes);
}

/* A post-norm layer's (or FFN's) rows y (B, D), complete after a barrier,
 * normalized into x (and hid): block b takes row b. */
static __device__ void post_norm(const sbk_step &a, const sbk_norm &nm, const float *y, float *x,
                                 float *xs, float *hid)
{
	const int D = a.g.D, b = blockIdx.x;
	if (b >= a.B)
		return;
	stage(xs, y + (size_t)b * D, 1, D, D);
	if (threadIdx.x < 32)
		warp_norm(nm, xs, D);
	__syncthreads();
	for (int d = threadIdx.x; d < D; d += blockDim.x) {
		x[(size_t)b * D + d] = xs[d];
		if (hid)
			hid[(size_t)b * D + d] = xs[d];
	}
}

/* The widest row the kernel stages in shared memory: max(D, H, F, Z). */
static __host__ __device__ int step_wide(const sbk_geo &g)
{
	int w = g.D > g.H ? g.D : g.H;
	w = g.F > w ? g.F : w;
	return g.Z > w ? g.Z : w;
}

/* Bytes of the warps' prefetch slots (and the router's two), first in
 * shared memory. */
static __host__ __device__ size_t step_pf_bytes(const sbk_step &a)
{
	return (size_t)STEP_WARPS * ((size_t)a.pfa * a.slota + (size_t)a.pfc * a.slotc) +
	       2 * (size_t)a.slota;
}

/* Where the layers' descriptors are in shared memory (after the slots),
 * and where the rows of floats begin. */
static __host__ __device__ size_t step_layers_at(const sbk_step &a)
{
	return (step_pf_bytes(a) + 15) & ~(size_t)15;
}

static __host__ __device__ size_t step_floats_at(const sbk_step &a)
{
	return step_layers_at(a) + (((size_t)a.L * sizeof(sbk_layer) + 15) & ~(size_t)15);
}

/* The rows of floats (offsets in floats from step_floats_at, each a
 * multiple of 4), for NB rows, with or without the attention's pool. */
struct step_lay {
	size_t xr, xs, ms, tb, qs, kn, wk, cs, ri, pool, end;
};

static __host__ __device__ step_lay step_layout(const sbk_step &a, int NB, bool with_pool)
{
	const sbk_geo &g = a.g;
	step_lay s;
	size_t o = 0;
	s.xr = o;                                   // (NB, D) x, as it enters the layer
	o += al4((size_t)NB * g.D);
	s.xs = o;                                   // (NB, wide) its norm u; og; the FFN's hidden; z's q/k part
	o += al4((size_t)NB * step_wide(g));
	s.ms = o;                                   // (NB, D) mx
	o += al4((size_t)NB * g.D);
	s.tb = o;                                   // two step_tab buffers
	o += 2 * step_tab_floats(g, NB);
	s.qs = o;                                   // (Z) q, (Z) the new k
	o += al4(g.Z);
	s.kn = o;
	o += al4(g.Z);
	s.wk = o;                                   // (nch) a combine's chunk weights
	o += al4(a.nch);
	s.cs = o;                                   // (NB, al4(Z)) cos, sin of each rotary pair
	o += (size_t)NB * al4(g.Z);
	s.ri = o;                                   // (2, NB, L) ints: ring lengths, heads
	o += al4(2 * (size_t)NB * a.L);
	s.pool = o;                                 // (pool) the attention's values (B2)
	if (with_pool)
		o += (size_t)a.pool;
	s.end = o;
	return s;
}

/* The value columns of slab s of ns: multiples of 4. */
static __host__ __device__ __forceinline__ void slab_cols(int H, int s, int ns, int *h0, int *h1)
{
	const int w = ((H + ns - 1) / ns + 3) & ~3;
	*h0 = s * w < H ? s * w : H;
	*h1 = *h0 + w < H ? *h0 + w : H;
}

/* The decode attention of the activated rows in two phases, where a row's
 * values fit the block's pool (sbk_step's pool: the rows' whole rings, not
 * chunks of them). A chunk's chain (its keys, scores, weights, values,
 * partial sums and a combine by the slab's last block) kept a few blocks
 * busy and the rest waiting at the grid barrier; here every warp scores
 * an entry, and after a barrier every block sums the weighted values of
 * its slab of the value columns over the whole ring, with the softmax over
 * all the scores at once: no partial results, no combine. */

/* A row's ring after this step's push. */
struct ring_now {
	int len, head, slot_new;
};

static __device__ __forceinline__ ring_now ring_after_push(const int *ri, int NB, int L, int b,
                                                           int l, int W1)
{
	int32_t len = ri[b * L + l], head = ri[NB * L + b * L + l];
	ring_now r;
	r.slot_new = sb_ring_push(&len, &head, W1);
	r.len = len;
	r.head = head;
	return r;
}

/* The slabs of value columns each activated row gets (phase B2). */
static __device__ __forceinline__ int value_slabs(int nrows)
{
	if (nrows == 1)
		return gridDim.x;
	const int ns = (int)gridDim.x / nrows;
	return ns < 1 ? 1 : ns;
}

/* What phase B can know once a step (b_plan_at, in P0): whether the two
 * phases may run at all (a pool, 16-byte rows), and where one row is
 * activated, the value columns h0 .. h1 of this block's slab and the
 * width of the first slab (each layer took them anew: divisions, a load
 * of each row's block). */
struct b_plan {
	bool two;
	int h0, h1, w1;
};

static __device__ b_plan b_plan_at(const sbk_step &a)
{
	const sbk_geo &g = a.g;
	b_plan p;
	p.two = a.has_pool && g.vec && !(g.Z & 3) && !(g.H & 3) && !((uintptr_t)a.zgv & 15);
	for (int b = 0; b < a.B; b++)
		if ((uintptr_t)(a.blocks[b] + g.ring_v) & 15)
			p.two = false;
	int h0, h1;
	slab_cols(g.H, 0, value_slabs(1), &h0, &h1);
	p.w1 = h1 - h0;
	slab_cols(g.H, blockIdx.x, value_slabs(1), &p.h0, &p.h1);
	return p;
}

/* Whether the two phases can take layer l's activated rows: every row's
 * values, new value, gate and scores fit the pool, with 16-byte rows. */
static __device__ bool attn_two_fits(const sbk_step &a, const b_plan &bp, const int *ri, int NB,
                                     int l, unsigned live, size_t pool)
{
	const sbk_geo &g = a.g;
	if (!bp.two)
		return false;
	int tw = bp.w1;
	if (__popc(live) > 1) {
		int h0, h1;
		slab_cols(g.H, 0, value_slabs(__popc(live)), &h0, &h1);
		tw = h1 - h0;
	}
	for (int b = 0; b < a.B; b++)
		if ((live >> b) & 1) {
			const ring_now r = ring_after_push(ri, NB, a.L, b, l, g.W1);
			if ((size_t)(r.len + 1) * tw + r.len > pool)
				return false;
		}
	return true;
}

/* B1: the score of every entry of each activated row's ring (after the
 * push), a warp an entry: q (and for the new entry k) from z with the
 * layer's tables T and the row's rotary pairs cs, s = q.k scale (plus the
 * relative bias) into scores (R, W1) in entry order. The new entry's warp
 * writes its key and position into the ring; its value, B2's blocks (a
 * warp's copy of it was a chain of H / 32 loads and stores, the longest of
 * the phase). */
template <class KD>
static __device__ void attn_scores(const sbk_step &a, const sbk_layer_vecs &v, int l, unsigned live,
                                   const int *ri, int NB, const step_tab &T, const float *cs,
                                   int gw, int nwarps, float *scores)
{
	const bool rotary = KD::rotary(a);
	const sbk_geo &g = a.g;
	const int Z = g.Z, H = g.H, W1 = g.W1, lane = threadIdx.x & 31, Zp = (int)al4(Z);
	int base = 0;  // items before row b's entries
	for (int b = 0; b < a.B; b++) {
		if (!((live >> b) & 1))
			continue;
		const ring_now r = ring_after_push(ri, NB, a.L, b, l, W1);
		const float *z = a.zgv + (size_t)b * (Z + 2 * H), *csb = cs + (size_t)b * Zp;
		unsigned char *blk = a.blocks[b];
		float *K = (float *)(blk + g.ring_k) + (size_t)l * W1 * Z;
		int64_t *P = (int64_t *)(blk + g.ring_pos) + (size_t)l * W1;
		const int64_t p = a.pos[b];
		for (int e = ((gw - base) % nwarps + nwarps) % nwarps; e < r.len; e += nwarps) {
			const bool is_new = e == r.len - 1;
			const int slot = sb_ring_slot(r.head, e, W1);
			const float *kr = K + (size_t)slot * Z;
			const int64_t pk = is_new || !v.rel_bias || lane ? p : P[slot];
			/* a lane's pairs (or elements) STEP_QK at a time, all their
			 * loads first (an __ldcg after a store of the new key would
			 * wait for it) */
			float s = 0.0f;
			float *kn = K + (size_t)r.slot_new * Z;
			const int np = rotary ? Z / 2 : Z;
			for (int j0 = 0; j0 < np; j0 += 32 * STEP_QK) {
				float za[STEP_QK], zb[STEP_QK], ka[STEP_QK], kb[STEP_QK];
#pragma unroll
				for (int t = 0; t < STEP_QK; t++) {
					const int j = j0 + lane + 32 * t;
					const bool in = j < np;
					const int a0 = rotary ? 2 * j : j, b0 = a0 + 1;
					za[t] = in ? __ldcg(z + a0) : 0.0f;
					zb[t] = in && rotary ? __ldcg(z + b0) : 0.0f;
					ka[t] = in && !is_new ? kr[a0] : 0.0f;
					kb[t] = in && !is_new && rotary ? kr[b0] : 0.0f;
				}
#pragma unroll
				for (int t = 0; t < STEP_QK; t++) {
					const int j = j0 + lane + 32 * t;
					if (j >= np)
						break;
					if (rotary) {
						const int a0 = 2 * j, b0 = 2 * j + 1;
						const float c = csb[a0], sn = csb[b0];
						const float q0 = za[t] * T.gq[a0] + T.bq[a0], q1 = zb[t] * T.gq[b0] + T.bq[b0];
						if (is_new) {
							const float k0 = za[t] * T.gk[a0] + T.bk[a0],
							            k1 = zb[t] * T.gk[b0] + T.bk[b0];
							ka[t] = k0 * c - k1 * sn;
							kb[t] = k0 * sn + k1 * c;
							kn[a0] = ka[t];
							kn[b0] = kb[t];
						}
						s += (q0 * c - q1 * sn) * ka[t] + (q0 * sn + q1 * c) * kb[t];
					} else {
						const float q = za[t] * T.gq[j] + T.bq[j];
						if (is_new) {
							ka[t] = za[t] * T.gk[j] + T.bk[j];
							kn[j] = ka[t];
						}
						s += q * ka[t];
					}
				}
			}
			s = warp_sum(s);
			if (is_new && lane == 0)
				P[r.slot_new] = p;
			if (lane == 0) {
				s *= g.scale;
				if (v.rel_bias)
					s += rel_bias_at(v.rel_bias, g.M, pk, p);
				scores[(size_t)b * W1 + e] = s;
			}
		}
		base += r.len;
	}
}

static __device__ __forceinline__ float4 warp_sum4(float4 v)
{
	v.x = warp_sum(v.x);
	v.y = warp_sum(v.y);
	v.z = warp_sum(v.z);
	v.w = warp_sum(v.w);
	return v;
}

/* B2's items: (activated row, slab of its value columns), ns slabs a row.
 * Item `item`'s row b and columns h0 .. h1 (item < rows * ns: past them
 * there is no row to find); a block's first item where one row is
 * activated from the step's plan bp. */
static __device__ __forceinline__ void b2_item(const b_plan &bp, unsigned live, int item, int ns,
                                               int *b, int *h0, int *h1, int H)
{
	if (item == (int)blockIdx.x && __popc(live) == 1) {
		*b = __ffs(live) - 1;
		*h0 = bp.h0;
		*h1 = bp.h1;
		return;
	}
	int r = 0;  // the (item / ns)-th activated row
	for (int k = item / ns;; r++)
		if ((live >> r) & 1) {
			if (k == 0)
				break;
			k--;
		}
	*b = r;
	slab_cols(H, item % ns, ns, h0, h1);
}

/* Issues the copies of B2's item into the pool (cp.async, 16 bytes a
 * copy, waited for by cp_async_wait): the slab's columns (h0, tw of them,
 * a multiple of 4) of row b's ring values (the old entries: the ring as
 * the step began; the new one from z, as the barrier after phase A left
 * it) and of its gate. The block's first item is issued before B1 (its
 * copies need nothing B1 writes), the others in turn. These were bulk
 * copies, a thread an entry; but a bulk copy's operands must be the
 * warp's own, so the compiler issued them a lane at a time, a loop of a
 * dozen instructions a copy, 128 copies a warp at depth 2048
 * (docs/benchmarks.md, the afternoon run of 2026-12-03). */
static __device__ void b2_issue(const sbk_step &a, int l, const ring_now &r, int b, int h0, int tw,
                                float *pool)
{
	const sbk_geo &g = a.g;
	const int Z = g.Z, H = g.H, n = r.len;
	const float *z = a.zgv + (size_t)b * (Z + 2 * H);
	const float *V = (const float *)(a.blocks[b] + g.ring_v) + (size_t)l * g.W1 * H;
	__syncthreads();  // the pool's last readers are done
	const int tw4 = tw >> 2;
	for (int e = threadIdx.x; e <= n; e += blockDim.x) {
		const float *src = (e < n - 1 ? V + (size_t)sb_ring_slot(r.head, e, g.W1) * H
		                    : e == n - 1 ? z + Z + H
		                                 : z + Z) + h0;
		float *dst = pool + (size_t)e * tw;
		for (int c = 0; c < tw4; c++)
			cp_async16(dst + 4 * c, src + 4 * c);
	}
}

/* Issues the copies of this block's first B2 item (before B1: they need
 * nothing B1 writes); returns whether it has one. */
static __device__ bool b2_issue_first(const sbk_step &a, const b_plan &bp, int l, unsigned live,
                                      const int *ri, int NB, float *pool)
{
	const int ns = value_slabs(__popc(live));
	if ((int)blockIdx.x >= __popc(live) * ns)
		return false;  // no item (b2_item needs one)
	int b, h0, h1;
	b2_item(bp, live, blockIdx.x, ns, &b, &h0, &h1, a.g.H);
	if (h1 <= h0)
		return false;
	b2_issue(a, l, ring_after_push(ri, NB, a.L, b, l, a.g.W1), b, h0, h1 - h0, pool);
	return true;
}

/* B2: og of each activated row, a block a slab of its value columns: the
 * slab's values of the ring (the new one from z) and the gate's columns
 * in the pool (b2_issue; the block's first item's issued already where
 * first_issued) while the scores (written by other blocks, read through
 * L2) become weights (softmax over all of them, or relu2 / laplace), then
 * their sum over the values, times the gate; the block also writes its
 * columns of the new value into the ring. part: shared memory for a
 * float4 per warp or column. */
template <class KD>
static __device__ void attn_values(const sbk_step &a, const b_plan &bp, int l, unsigned live,
                                   const int *ri, int NB,
                                   const float *scores, float *pool, float4 *part, float *red,
                                   bool first_issued)
{
	const int attn = KD::attn(a);
	const sbk_geo &g = a.g;
	const int H = g.H, W1 = g.W1, tid = threadIdx.x, bd = blockDim.x;
	const int w = tid >> 5, lane = tid & 31, nw = bd >> 5;
	const bool soft = attn == SB_ATTN_SOFTMAX;
	const int nrows = __popc(live), ns = value_slabs(nrows);
	for (int item = blockIdx.x; item < nrows * ns; item += gridDim.x) {
		int b, h0, h1;
		b2_item(bp, live, item, ns, &b, &h0, &h1, H);
		const int tw = h1 - h0, tw4 = tw / 4;
		if (tw <= 0)
			continue;
		const ring_now r = ring_after_push(ri, NB, a.L, b, l, W1);
		const int n = r.len;
		float *V = (float *)(a.blocks[b] + g.ring_v) + (size_t)l * W1 * H;
		float *St = pool + (size_t)(n + 1) * tw;  // after the values and the gate
		if (!(first_issued && item == (int)blockIdx.x))
			b2_issue(a, l, r, b, h0, tw, pool);
		float m = -INFINITY;
		/* 5 loads a thread: a full ring of the paper's model (1,025
		 * scores) in one trip to L2 */
		ldcg_each<5>(
			n, [&](int e) { return scores + (size_t)b * W1 + e; },
			[&](int e, float t) {
				St[e] = t;
				m = fmaxf(m, t);
			});
		if (soft)
			m = block_red1<true>(m, red, 0);
		float sum = 0.0f;
		for (int e = tid; e < n; e += bd) {
			const float wt = attn_weight(attn, St[e], m);
			St[e] = wt;
			sum += wt;
		}
		if (soft)
			sum = block_red1<false>(sum, red, 1);
		cp_async_wait();
		__syncthreads();
		/* the slab's columns of the new value into the ring (its slot is
		 * no other entry's: nobody reads it this step) */
		for (int i = tid; i < tw; i += bd)
			V[(size_t)r.slot_new * H + h0 + i] = pool[(size_t)(n - 1) * tw + i];
		/* jobs: (column of 4, part k of the entries), a warp each */
		const int nk = nw / tw4 > 1 ? nw / tw4 : 1, jobs = tw4 * nk;
		for (int j = w; j < jobs; j += nw) {
			const int c4 = j % tw4, k = j / tw4;
			float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
			for (int e = k * 32 + lane; e < n; e += nk * 32) {
				const float wt = St[e];
				const float4 vv = ((const float4 *)(pool + (size_t)e * tw))[c4];
				acc.x += wt * vv.x;
				acc.y += wt * vv.y;
				acc.z += wt * vv.z;
				acc.w += wt * vv.w;
			}
			acc = warp_sum4(acc);
			if (lane == 0)
				part[j] = acc;
		}
		__syncthreads();
		const float inv = soft ? 1.0f / sum : 1.0f;
		const float *gate = pool + (size_t)n * tw;
		for (int c4 = tid; c4 < tw4; c4 += bd) {
			float4 o = part[c4];
			for (int k = 1; k < nk; k++) {
				const float4 t = part[k * tw4 + c4];
				o.x += t.x;
				o.y += t.y;
				o.z += t.z;
				o.w += t.w;
			}
			float *og = a.og + (size_t)b * H + h0 + 4 * c4;
			og[0] = o.x * inv * gate[4 * c4];
			og[1] = o.y * inv * gate[4 * c4 + 1];
			og[2] = o.z * inv * gate[4 * c4 + 2];
			og[3] = o.w * inv * gate[4 * c4 + 3];
		}
	}
}

template <int NB, class KD>
__global__ void __launch_bounds__(STEP_THREADS, 1) k_step(sbk_step a)
{
	extern __shared__ __align__(16) unsigned char smem[];
	__shared__ float sc[SBK_CHUNK];
	__shared__ int slots[SBK_CHUNK];
	__shared__ float4 part_s[STEP_WARPS];
	__shared__ float uq[2][NB], p1s[NB], red[64];
	/* bulk copies' barriers: each warp's phase A rows, its phase C rows,
	 * the block's tables; and this thread's parity of each */
	__shared__ uint64_t bars[2 * STEP_WARPS + 1];
	unsigned pha = 0, phc = 0, pht = 0;
	__shared__ unsigned live_s;
	__shared__ int last_s;
	__shared__ b_plan bp;
	const sbk_geo &g = a.g;
	/* the settings, constants in a fixed kind */
	const int act = KD::act(a);
	const bool prenorm = KD::prenorm(a), ffn = KD::ffn(a);
	const int D = g.D, Z = g.Z, H = g.H, F = g.F, N = g.N, L = a.L, ZH = Z + 2 * H, D2 = D + 2,
	          B = NB == 1 ? 1 : a.B, Dp = (int)al4(D), Zp = (int)al4(Z);  // (NB 1: B 1)
	const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
	/* warps 0 and 1 also take the router's rows: they are numbered last,
	 * so that a warp has at most one row more than another */
	const int gw = w >= 2 ? blockIdx.x * (STEP_WARPS - 2) + w - 2
	                      : gridDim.x * (STEP_WARPS - 2) + blockIdx.x * 2 + w,
	          nwarps = gridDim.x * STEP_WARPS;
	const int gt = blockIdx.x * blockDim.x + tid, nthreads = gridDim.x * blockDim.x;
	const size_t RD = (size_t)a.R * D;
	cg::grid_group grid = cg::this_grid();

	/* shared memory: the prefetch slots, the layers' descriptors, then
	 * rows of floats (step_layout) */
	unsigned char *pfa_w = smem + (size_t)w * ((size_t)a.pfa * a.slota + (size_t)a.pfc * a.slotc);
	unsigned char *pfc_w = pfa_w + (size_t)a.pfa * a.slota;
	unsigned char *pfr = smem + (size_t)STEP_WARPS * ((size_t)a.pfa * a.slota + (size_t)a.pfc * a.slotc);
	sbk_layer *sl = (sbk_layer *)(smem + step_layers_at(a));
	float *fl = (float *)(smem + step_floats_at(a));
	const step_lay lay = step_layout(a, NB, a.has_pool);
	float *xr = fl + lay.xr, *xs = fl + lay.xs, *ms = fl + lay.ms, *tb = fl + lay.tb;
	float *qs = fl + lay.qs, *kn = fl + lay.kn, *wk = fl + lay.wk, *cs = fl + lay.cs;
	int *ri = (int *)(fl + lay.ri);  // ring lengths (B, L), then heads, as the step began
	const size_t tbf = step_tab_floats(g, NB);
	PROF_DECL

	/* P0: the layers' descriptors, the embedding, the EMA's state terms,
	 * the rings' counters and the rotary angles of the rows' positions */
	uint64_t *abar = &bars[w], *cbar = &bars[STEP_WARPS + w], *tbar = &bars[2 * STEP_WARPS];
	if (tid == 0) {
		for (int i = 0; i < 2 * STEP_WARPS + 1; i++)
			bar_init(&bars[i]);
		bar_init_fence();
	}
	for (size_t i = tid; i < (size_t)L * sizeof(sbk_layer) / 4; i += blockDim.x)
		((uint32_t *)sl)[i] = ((const uint32_t *)a.layers)[i];
	if (tid == 0)
		bp = b_plan_at(a);
	__syncthreads();
	float bia[STEP_PF_MAX] = {}, rbia = 0.0f;  // phase A's biases, read a phase ahead
	pf_a<KD>(a, sl, 0, gw, nwarps, pfa_w, pfr, bia, &rbia, abar);
	for (int i = tid; i < B * L; i += blockDim.x) {
		const unsigned char *blk = a.blocks[i / L];
		ri[i] = ((const int32_t *)(blk + g.ring_len))[i % L];
		ri[NB * L + i] = ((const int32_t *)(blk + g.ring_head))[i % L];
	}
	if (KD::rotary(a))
		for (int i = tid; i < B * (Z / 2); i += blockDim.x) {
			const int b = i / (Z / 2), j = i % (Z / 2);
			const double ang = (double)a.pos[b] * a.inv_freq[j];
			cs[(size_t)b * Zp + 2 * j] = (float)cos(ang);
			cs[(size_t)b * Zp + 2 * j + 1] = (float)sin(ang);
		}
	for (int i = gt; i < B * D; i += nthreads) {
		const int b = i / D, d = i % D;
		a.x[i] = wget(a.embed.dt, a.embed.w, a.embed.sc, a.tok[b], d, D) * a.embed_scale;
	}
	for (int i = gt; i < L * D; i += nthreads) {
		const float *gq = a.gq + (size_t)i * N;
		for (int b = 0; b < B; b++) {
			const float *h = (const float *)(a.blocks[b] + g.h) + (size_t)i * N;
			float s = 0.0f;
			if ((N & 3) == 0 && (((uintptr_t)h | (uintptr_t)gq) & 15) == 0) {
#pragma unroll 4
				for (int n = 0; n < N; n += 4) {
					const float4 q4 = *(const float4 *)(gq + n), h4 = *(const float4 *)(h + n);
					s = fmaf(q4.x, h4.x, s);
					s = fmaf(q4.y, h4.y, s);
					s = fmaf(q4.z, h4.z, s);
					s = fmaf(q4.w, h4.w, s);
				}
			} else {
#pragma unroll 4
				for (int n = 0; n < N; n++)
					s = fmaf(gq[n], h[n], s);
			}
			a.hg[(size_t)b * L * D + i] = s;
		}
	}
	grid.sync();
	pf_tables(a, sl, 0, tab_at(tb, g, NB), tbar);
	PROF(0);

	float *xc = a.x, *xo = a.x2;   // the residual stream now, and the other buffer
	bool have_x = false;           // xr holds x already (a layer without attention)
	for (int l = 0; l < L; l++) {
		const sbk_layer &ly = sl[l];
		const sbk_layer_vecs &v = ly.v;
		float *hid = a.hid + (size_t)l * RD;
		const bool post = !prenorm, last = !ffn;
		const step_tab T = tab_at(tb + (size_t)(l & 1) * tbf, g, NB);

		/* A: x (read through L2 where other blocks wrote it) */
		load_x(have_x, xc, xr, xs, B * D);
		PROF(1);
		/* the EMA elements this thread updates */
		float eh[2] = {0.0f, 0.0f}, eq[2] = {0.0f, 0.0f}, ep[2] = {0.0f, 0.0f};
		float *ehp[2] = {NULL, NULL};
		const int DN = D * N;
#pragma unroll
		for (int k = 0; k < 2; k++) {
			const int e = gt + k * nthreads;
			if (e < B * DN) {
				const int b = row_of(e, DN), j = e - b * DN;
				ehp[k] = (float *)(a.blocks[b] + g.h) + (size_t)l * DN + j;
				eh[k] = *ehp[k];
				eq[k] = v.q[j];
				ep[k] = v.pb[j];
			}
		}
		bar_wait(tbar, pht);  // this layer's tables
		__syncthreads();
		PROF(2);
		const sbk_norm lnorm = norm_in<KD>(ly.norm, T);
		if (prenorm)
			norm_xs(lnorm, xs, B, D, red);
		for (int i = tid; i < B * D; i += blockDim.x) {
			const int b = row_of(i, D), d = i - b * D;
			ms[i] = apply_act(act, T.hg[(size_t)b * Dp + d] + xs[i] * T.ec[d]);
		}
		__syncthreads();
		PROF(3);
		bar_wait(abar, pha);  // this phase's rows
		PROF(4);
		float u1 = 0.0f;
		if (NB == 1 && a_group1<KD>(a, sl, l, gw, nwarps, pfa_w, w < 2 ? w : -1,
		                        pfr + (size_t)w * a.slota, ms, bia, &u1)) {
			if (w < 2 && lane == 0)
				uq[w][0] = u1 + rbia;
		} else {
			if (w < 2) {
				float acc[NB];
				dot_rows<NB, KD>(a, ly.hx, w, pfr + (size_t)w * a.slota, a.slota, ms, B, acc);
				if (lane == 0)
					for (int b = 0; b < B; b++)
						uq[w][b] = acc[b] + rbia;
			}
			a_products<NB, KD>(a, sl, l, gw, nwarps, pfa_w, ms, B, bia);
		}
		PROF(5);
		const unsigned arrived = gbar_arrive(a.gbar);  // what follows no other block waits for
		PROF(6);
		/* the next layer's tables, then its rows */
		pf_tables(a, sl, l + 1, tab_at(tb + (size_t)((l + 1) & 1) * tbf, g, NB), tbar);
		PROF(7);
		__syncwarp();
		pf_a<KD>(a, sl, l + 1, gw, nwarps, pfa_w, pfr, bia, &rbia, abar);
		/* one row: the key this warp scores in B1 if the row is activated,
		 * into L2 now (half a megabyte a layer at the most, wasted where it
		 * is not) */
		if (NB == 1) {
			const ring_now r = ring_after_push(ri, NB, L, 0, l, g.W1);
			if (gw < r.len - 1 && lane * 32 < Z) {
				const float *k = (const float *)(a.blocks[0] + g.ring_k) +
				                 ((size_t)l * g.W1 + sb_ring_slot(r.head, gw, g.W1)) * Z + lane * 32;
				asm volatile("prefetch.global.L2 [%0];" ::"l"(k));
			}
		}
		PROF(8);
		/* the EMA's new state */
#pragma unroll
		for (int k = 0; k < 2; k++)
			if (ehp[k]) {
				const int e = gt + k * nthreads, b = row_of(e, DN), d = (e - b * DN) / N;
				*ehp[k] = eq[k] * eh[k] + ep[k] * xs[(size_t)b * D + d];
			}
		for (int e = gt + 2 * nthreads; e < B * DN; e += nthreads) {
			const int b = e / DN, j = e % DN;
			float *h = (float *)(a.blocks[b] + g.h) + (size_t)l * DN + j;
			*h = v.q[j] * *h + v.pb[j] * xs[(size_t)b * D + j / N];
		}
		__syncthreads();
		PROF(9);
		if (tid == 0) {
			unsigned live = 0;
			for (int b = 0; b < B; b++) {
				const float u[2] = {uq[0][b], uq[1][b]};
				float p;
				if (router(u, a.act_bias, v.inv_tau, &p))
					live |= 1u << b;
				p1s[b] = p;
				if (blockIdx.x == 0) {
					a.pr1[b] = p;
					a.arow[b] = (live >> b) & 1 ? b : -1;
					a.act[(size_t)l * a.R + b] = (live >> b) & 1;
					a.hxu[(size_t)b * D2] = u[0];
					a.hxu[(size_t)b * D2 + 1] = u[1];
				}
			}
			live_s = live;
		}
		PROF(10);
		gbar_wait(a.gbar, arrived);
		PROF(11);
		const unsigned live = live_s;
		int nlive = 0;
		for (int b = 0; b < B; b++)
			if ((live >> b) & 1)
				nlive = b + 1;  // rows past the last activated one are skipped

		if (!live && !ffn) {
			/* No attention: every block takes the residual itself, x
			 * stays in xr for the next layer (or the logits) and block
			 * 0 keeps the stream in the other buffer. */
			ldcg_each(
				B * D,
				[&](int i) {
					const int b = row_of(i, D);
					return a.hxu + (size_t)b * D2 + 2 + (i - b * D);
				},
				[&](int i, float t) { xr[i] = apply_act(act, t + xr[i]); });
			__syncthreads();
			if (post)
				norm_rows(lnorm, xr, B, D);
			if (blockIdx.x == 0)
				for (int i = tid; i < B * D; i += blockDim.x) {
					xo[i] = xr[i];
					hid[i] = xr[i];
				}
			float *t = xc;
			xc = xo;
			xo = t;
			have_x = true;
			PROF(12);
			continue;
		}
		have_x = false;
		PROF_COUNT(PROF_ACT);
		const uint64_t n_act = blockIdx.x == 0 && tid < B && (live >> tid) & 1
		                       ? ((const uint64_t *)(a.blocks[tid] + g.n_act))[l]
		                       : 0;
		/* phase C's first row's addends, lane b for row b: read now */
		float c_hx = 0.0f, c_x = 0.0f, c_b = 0.0f;
		if (gw < D && lane < B) {
			c_hx = __ldcg(a.hxu + (size_t)lane * D2 + 2 + gw);
			c_x = __ldcg(xc + (size_t)lane * D + gw);
			c_b = ly.ho_b[gw];
		}

		/* B: the attention of the activated rows, in two phases (B1 the
		 * scores, B2 the values) where they fit the pool, else by chunks
		 * of the rings; phase C's h_proj rows are copied meanwhile */
		if (live && attn_two_fits(a, bp, ri, NB, l, live, lay.end - lay.pool)) {
			pf_c(a, sl, l, gw, nwarps, pfc_w, cbar);
			/* the block's first slab of values is copied during B1 */
			const bool first = b2_issue_first(a, bp, l, live, ri, NB, fl + lay.pool);
			PROF(13);
			attn_scores<KD>(a, v, l, live, ri, NB, T, cs, gw, nwarps, a.po);
			PROF(14);
			grid.sync();
			PROF(15);
			attn_values<KD>(a, bp, l, live, ri, NB, a.po, fl + lay.pool,
			            (H / 4 <= STEP_WARPS ? part_s : (float4 *)xs), red, first);
			PROF(16);
		} else if (live) {
			pf_c(a, sl, l, gw, nwarps, pfc_w, cbar);
			/* slabs: as many as keep every block busy, up to SBK_STEP_SLABS */
			int nrows = 0, maxc = 1;
			for (int b = 0; b < B; b++)
				if ((live >> b) & 1) {
					const int32_t len = ri[b * L + l];
					const int nc = ((len < g.W1 ? len + 1 : g.W1) + SBK_CHUNK - 1) / SBK_CHUNK;
					nrows++;
					maxc = nc > maxc ? nc : maxc;
				}
			int ns = (int)gridDim.x / (nrows * maxc);
			ns = ns < 1 ? 1 : ns > SBK_STEP_SLABS ? SBK_STEP_SLABS : ns;
			const int items = B * a.nch * ns;
			for (int item = blockIdx.x; item < items; item += gridDim.x) {
				const int b = item / (a.nch * ns);
				const int c = item / ns % a.nch, s = item % ns;
				if (!((live >> b) & 1))
					continue;
				int h0, h1;
				slab_cols(H, s, ns, &h0, &h1);
				/* po (R, nch, H) by chunk; pm, ps (R, SLABS, nch): each
				 * slab's own, so that its last block reads only what
				 * its own chunks wrote */
				const size_t pc = (size_t)b * a.nch + c,
				             pq = ((size_t)b * SBK_STEP_SLABS + s) * a.nch;
				const float *z = a.zgv + (size_t)b * ZH;
				__syncthreads();
				const int nc = attn_chunk(a.blocks[b], g, v, l, a.pos[b], z, a.inv_freq, c,
				                          a.po + pc * H, a.pm + pq + c, a.ps + pq + c, qs, kn, sc,
				                          slots, h0, h1, s == 0);
				if (c >= nc)
					continue;
				/* the slab's last chunk combines them */
				__threadfence();
				__syncthreads();
				if (tid == 0)
					last_s = atomicAdd(&a.cnt[b * SBK_STEP_SLABS + s], 1) == nc - 1;
				__syncthreads();
				if (!last_s)
					continue;
				__threadfence();
				attn_combine(a.pm + pq, a.ps + pq, a.po + (size_t)b * a.nch * H, nc, H,
				             KD::attn(a) == SB_ATTN_SOFTMAX, z + Z, a.og + (size_t)b * H, wk, h0,
				             h1);
				if (tid == 0)
					a.cnt[b * SBK_STEP_SLABS + s] = 0;
			}
		}
		if (live) {
			grid.sync();
			PROF(17);
			stage(xs, a.og, nlive, H, H);
			PROF(18);
		}

		/* C: h_proj and the residual (what it adds read before the
		 * product: lane b for row b) */
		if (live)
			bar_wait(cbar, phc);  // the h_proj rows
		PROF(19);
		for (int k = 0;; k++) {
			const int r = gw + k * nwarps;
			if (r >= D)
				break;
			float acc[NB];
			if (k > 0 && lane < B) {
				c_hx = __ldcg(a.hxu + (size_t)lane * D2 + 2 + r);
				c_x = __ldcg(xc + (size_t)lane * D + r);
				c_b = ly.ho_b[r];
			}
			dot_rows<NB, KD>(a, ly.ho, r, k < a.pfc ? pfc_w + (size_t)k * a.slotc : NULL, a.slotc, xs,
			             live ? nlive : 0, acc);
			if (lane < B) {
				const int b = lane;
				const float t = pick<NB>(acc, b);
				const size_t i = (size_t)b * D + r;
				const float at = (live >> b) & 1 ? (t + c_b) * p1s[b] : 0.0f;
				const float y = apply_act(act, c_hx + at + c_x);
				if (post) {
					a.att[i] = y;
				} else {
					xc[i] = y;
					if (last)
						hid[i] = y;
				}
			}
		}
		if (blockIdx.x == 0 && tid < B && (live >> tid) & 1) {
			/* the counters as the step began (ri), the activations' read
			 * before the attention: no load here, before the barrier */
			unsigned char *blk = a.blocks[tid];
			const ring_now r = ring_after_push(ri, NB, L, tid, l, g.W1);
			((int32_t *)(blk + g.ring_len))[l] = r.len;
			((int32_t *)(blk + g.ring_head))[l] = r.head;
			((uint64_t *)(blk + g.n_act))[l] = n_act + 1;
		}
		PROF(20);
		grid.sync();
		PROF(21);
		if (post) {
			post_norm(a, ly.norm, a.att, xc, xs, last ? hid : NULL);
			grid.sync();
		}

		/* the feed-forward block */
		if (ffn) {
			stage(xs, xc, B, D, D);
			if (prenorm)
				norm_rows(ly.ffn_norm, xs, B, D);
			for (int r = gw; r < F; r += nwarps) {
				float acc[NB];
				dot_rows<NB, KD>(a, ly.fc1, r, NULL, 0, xs, B, acc);
				if (lane == 0)
					for (int b = 0; b < B; b++)
						a.ffn_h[(size_t)b * F + r] = apply_act(act, acc[b] + ly.fc1_b[r]);
			}
			grid.sync();
			stage(xs, a.ffn_h, B, F, F);
			for (int r = gw; r < D; r += nwarps) {
				float acc[NB];
				dot_rows<NB, KD>(a, ly.fc2, r, NULL, 0, xs, B, acc);
				if (lane == 0)
					for (int b = 0; b < B; b++) {
						const size_t i = (size_t)b * D + r;
						const float y = __ldcg(xc + i) + acc[b] + ly.fc2_b[r];
						if (post) {
							a.att[i] = y;
						} else {
							xc[i] = y;
							hid[i] = y;
						}
					}
			}
			grid.sync();
			if (post) {
				post_norm(a, ly.ffn_norm, a.att, xc, xs, hid);
				grid.sync();
			}
		}
	}

	/* the final norm and the output projection */
	__syncthreads();
	load_x(have_x, xc, xr, xs, B * D);
	bar_wait(tbar, pht);  // the final norm's weights
	__syncthreads();
	if (prenorm) {
		norm_xs(norm_in<KD>(a.final_norm, tab_at(tb + (size_t)(L & 1) * tbf, g, NB)), xs, B, D, red);
		__syncthreads();
	}
	bar_wait(abar, pha);
	PROF(22);
	a_products<NB, KD>(a, sl, L, gw, nwarps, pfa_w, xs, B, bia);
	PROF(23);
	PROF_END;
}

/* gq = g * q (L, D, N) and ec = sum_n g pb + omega (L, D), a thread an
 * (l, d). */
__global__ void k_step_prepare(sbk_step a)
{
	const int D = a.g.D, N = a.g.N;
	const int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= a.L * D)
		return;
	const sbk_layer_vecs &v = a.layers[i / D].v;
	const int d = i % D;
	float e = 0.0f;
	for (int n = 0; n < N; n++) {
		const size_t k = (size_t)d * N + n;
		a.gq[(size_t)i * N + n] = v.g[k] * v.q[k];
		e = fmaf(v.g[k], v.pb[k], e);
	}
	a.ec[i] = e + v.omega[d];
}

void sbk_step_prepare(cudaStream_t s, const sbk_step *a)
{
	const int n = a->L * a->g.D;
	k_step_prepare<<<(n + 255) / 256, 256, 0, s>>>(*a);
}

/* Shared memory of the kernel for NB rows: the prefetch slots, the
 * layers' descriptors and the rows of floats of step_layout (with the
 * pool or without). */
static size_t step_shmem(const sbk_step *a, int NB, bool with_pool)
{
	return step_floats_at(*a) + step_layout(*a, NB, with_pool).end * sizeof(float);
}

/* Whether the kernel for NB rows has the attention's pool: where it fits
 * beside the rest. */
static bool step_pool_fits(const sbk_step *a, int NB)
{
	return a->pool > 0 && step_shmem(a, NB, true) <= (size_t)a->smem_optin;
}

static size_t step_bytes(const sbk_step *a, int NB)
{
	return step_shmem(a, NB, step_pool_fits(a, NB));
}

static int rows_nb(int B)
{
	return B <= 1 ? 1 : B <= 2 ? 2 : B <= 4 ? 4 : 8;
}

typedef void (*step_kernel)(sbk_step);

/* The kernel for B rows of a's model: for one row (where the fused step
 * is the default) of a model of SeqBoat's defaults, the one compiled for
 * them and its weights' dtype (unless a->any_kind); else the generic one. */
static step_kernel kernel_for(const sbk_step *a, int B)
{
	if (B > 1)
		return B <= 2 ? k_step<2, kind_any> : B <= 4 ? k_step<4, kind_any> : k_step<8, kind_any>;
	if (!a->any_kind && seqboat_defaults(a))
		switch (a->wdt) {
		case SB_DTYPE_F16:
			return k_step<1, kind_seqboat<SB_DTYPE_F16>>;
		case SB_DTYPE_BF16:
			return k_step<1, kind_seqboat<SB_DTYPE_BF16>>;
		case SB_DTYPE_I8:
			return k_step<1, kind_seqboat<SB_DTYPE_I8>>;
		case SB_DTYPE_F32:
			return k_step<1, kind_seqboat<SB_DTYPE_F32>>;
		}
	return k_step<1, kind_any>;
}

int sbk_step_setup(sbk_step *a)
{
	int dev = 0, sms = 0, coop = 0, optin = 0, major = 0;
	if (cudaGetDevice(&dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess || !coop ||
	    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
	            cudaSuccess) {
		cudaGetLastError();
		return -1;
	}
	/* a->slota, a->slotc: the longest rows of the two phases' matrices
	 * (the caller's, from its host copies of their shapes) */
	const sbk_geo &g = a->g;
	const int nwarps = sms * STEP_WARPS;
	const int ra = (g.D + g.Z + 2 * g.H + nwarps - 1) / nwarps, rc = (g.D + nwarps - 1) / nwarps;
	a->pfa = ra < STEP_PF_MAX ? ra : STEP_PF_MAX;
	a->pfc = rc < STEP_PF_MAX ? rc : STEP_PF_MAX;
	a->bulk = major >= 9;
	if (!a->bulk || a->slota <= 0 || a->slotc <= 0 ||
	    step_shmem(a, SBK_STEP_MAX_ROWS, false) > (size_t)optin) {
		a->pfa = a->pfc = 0;
		a->slota = a->slotc = 0;
	}
	/* the pool: one row's whole ring for a slab of the value columns (a
	 * block's share of them), its gate and its scores */
	int h0 = 0, h1 = 0;
	slab_cols(g.H, 0, sms, &h0, &h1);
	a->pool = a->bulk ? (g.W1 + 1) * (h1 - h0) + g.W1 : 0;
	a->smem_optin = optin;
	step_prof_register();
	return step_shmem(a, SBK_STEP_MAX_ROWS, false) > (size_t)optin ? -1 : 0;
}

int sbk_step_grid(const sbk_step *a, int B)
{
	if (B < 1 || B > SBK_STEP_MAX_ROWS)
		return 0;
	int dev = 0, sms = 0, per_sm = 0;
	const size_t shmem = step_bytes(a, rows_nb(B));
	step_kernel k = kernel_for(a, B);
	if (cudaGetDevice(&dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
	    cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shmem) !=
	            cudaSuccess ||
	    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, STEP_THREADS, shmem) !=
	            cudaSuccess ||
	    per_sm < 1) {
		cudaGetLastError();
		return 0;
	}
	return sms;
}

cudaError_t sbk_step_launch(cudaStream_t s, const sbk_step *a, int grid)
{
	sbk_step args = *a;
	args.has_pool = step_pool_fits(a, rows_nb(a->B));
	void *params[] = {&args};
	return cudaLaunchCooperativeKernel((const void *)kernel_for(a, a->B), dim3((unsigned)grid),
	                                   dim3(STEP_THREADS), params, step_bytes(a, rows_nb(a->B)),
	                                   s);
}
