/*
 * pool.h - a fixed set of worker threads that run one function on every
 * thread and wait for all of them: the fork-join step of each matrix-vector
 * product in decode. Workers spin briefly between jobs (a decoded token
 * issues dozens of jobs back to back), then sleep on a condition variable.
 * Started once per context: nothing is created per token.
 */
#ifndef SB_POOL_H
#define SB_POOL_H

typedef struct sb_pool sb_pool;
typedef void (*sb_pool_fn)(void *arg, int ith, int nth);

/* n_threads >= 1 (the caller counts as one). NULL on failure. */
sb_pool *sb_pool_new(int n_threads);
void sb_pool_free(sb_pool *p);
int sb_pool_threads(const sb_pool *p);
/* Runs fn(arg, i, n) for i in 0..n-1, i = 0 on the calling thread; returns
 * when all are done. Not reentrant. A NULL pool runs fn(arg, 0, 1). */
void sb_pool_run(sb_pool *p, sb_pool_fn fn, void *arg);

#endif
