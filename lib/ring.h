/*
 * ring.h - the slot arithmetic of a state's window ring, in one place.
 *
 * Each layer's ring holds the last len <= W1 = W+1 activated tokens in
 * W1 slots; head is the slot of the oldest. Entry e (0 = oldest, len-1 =
 * newest) is in slot sb_ring_slot(head, e, W1). Plain inline arithmetic,
 * so that host code and device code (a CUDA backend compiles this header
 * with __host__ __device__) index the ring the same way.
 */
#ifndef SB_RING_H
#define SB_RING_H

#include <stdint.h>

#if defined(__CUDACC__)
#define SB_HD __host__ __device__
#else
#define SB_HD
#endif

/* The slot of entry e (0 <= e < len) of a ring whose oldest is at head. */
SB_HD static inline int sb_ring_slot(int head, int e, int W1)
{
	int s = head + e;
	return s >= W1 ? s - W1 : s;
}

/* Makes room for one more entry and returns the slot to write it to: the
 * next free slot while len < W1, else the oldest one (which is dropped, and
 * head moves to the next oldest). */
SB_HD static inline int sb_ring_push(int32_t *len, int32_t *head, int W1)
{
	int slot;
	if (*len < W1) {
		slot = sb_ring_slot(*head, *len, W1);
		(*len)++;
	} else {
		slot = *head;
		*head = *head + 1 == W1 ? 0 : *head + 1;
	}
	return slot;
}

#endif /* SB_RING_H */
