/* pool.c - see pool.h. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "pool.h"

/* Polls of the job counter before a worker sleeps (a few milliseconds). */
#define SPIN_ITERS 20000

struct sb_pool {
	int n;
	pthread_t *threads;      // (n - 1) workers
	_Atomic unsigned gen;    // bumped once per job
	atomic_int pending;      // workers still running the job
	atomic_bool stop;
	sb_pool_fn fn;
	void *arg;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct worker { sb_pool *p; int i; } *w;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	sb_pool *p = w->p;
	unsigned seen = 0;
	for (;;) {
		unsigned g;
		int spins = 0;
		while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
		       !atomic_load(&p->stop) && spins < SPIN_ITERS) {
			if (spins < 2000)
				cpu_relax();
			else
				sched_yield();
			spins++;
		}
		if (g == seen && !atomic_load(&p->stop)) {
			pthread_mutex_lock(&p->mu);
			while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop))
				pthread_cond_wait(&p->cv, &p->mu);
			pthread_mutex_unlock(&p->mu);
		}
		if (atomic_load(&p->stop))
			return NULL;
		seen = g;
		p->fn(p->arg, w->i, p->n);
		atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
	}
}

sb_pool *sb_pool_new(int n)
{
	if (n < 1)
		n = 1;
	sb_pool *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->n = n;
	atomic_init(&p->gen, 0);
	atomic_init(&p->pending, 0);
	atomic_init(&p->stop, false);
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	if (n > 1) {
		p->threads = calloc((size_t)n - 1, sizeof *p->threads);
		p->w = calloc((size_t)n - 1, sizeof *p->w);
		if (!p->threads || !p->w) {
			sb_pool_free(p);
			return NULL;
		}
	}
	for (int i = 1; i < n; i++) {
		p->w[i - 1] = (struct worker){p, i};
		if (pthread_create(&p->threads[i - 1], NULL, worker_main, &p->w[i - 1]) != 0) {
			p->n = i; /* only the ones started get joined */
			sb_pool_free(p);
			return NULL;
		}
	}
	return p;
}

void sb_pool_free(sb_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	atomic_store(&p->stop, true);
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (int i = 1; i < p->n && p->threads; i++)
		pthread_join(p->threads[i - 1], NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p->threads);
	free(p->w);
	free(p);
}

int sb_pool_threads(const sb_pool *p)
{
	return p ? p->n : 1;
}

void sb_pool_run(sb_pool *p, sb_pool_fn fn, void *arg)
{
	if (!p || p->n == 1) {
		fn(arg, 0, 1);
		return;
	}
	p->fn = fn;
	p->arg = arg;
	atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
	pthread_mutex_lock(&p->mu);
	atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	fn(arg, 0, p->n);
	/* Spin briefly, then yield: with more threads than free cores a
	 * worker may be waiting for this very core. */
	for (int spins = 0; atomic_load_explicit(&p->pending, memory_order_acquire) > 0; spins++) {
		if (spins < 2000)
			cpu_relax();
		else
			sched_yield();
	}
}
