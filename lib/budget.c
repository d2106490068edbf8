/*
 * budget.c - memory budgets for state-sized allocations. A state's size is
 * fixed by the model (a legal `window: 1048576` makes it gigabytes), so how
 * many states a run may hold at once (batch slots, undo snapshots, cached
 * prefixes) is decided up front against a stated limit, rather than found
 * out by an allocation failing halfway.
 */
#include <unistd.h>

#include "seqboat.h"

size_t sb_mem_physical(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
	if (pages <= 0 || page <= 0)
		return 0;
	size_t n;
	return sb_size_mul((size_t)pages, (size_t)page, &n) ? n : SIZE_MAX;
}

int sb_state_budget(const sb_model *m, size_t limit, const char *limit_name, size_t copies,
                    size_t want, size_t *fit, sb_error *err)
{
	const sb_config *c = sb_model_config(m);
	sb_state_sizes z = sb_state_sizes_of(m);
	size_t one;
	if (copies == 0)
		copies = 1;
	if (!sb_size_mul(z.total, copies, &one) || one > limit) {
		/* Name what makes a state this large: the ring (window) or the
		 * EMA (embed_dim x n_dim), each times layers. */
		if (z.ring >= z.ema)
			return sb_error_set(err, SB_ERR_FORMAT,
			                    "%s: one sequence needs %zu states of %zu bytes (the ring of window %d + 1 entries x (z_dim %d + hidden_dim %d) floats x layers %d is %zu bytes), more than the memory limit of %zu bytes (%s)",
			                    sb_model_dir(m), copies, z.total, c->window, c->z_dim,
			                    c->hidden_dim, c->layers, z.ring, limit, limit_name);
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: one sequence needs %zu states of %zu bytes (the EMA of embed_dim %d x n_dim %d floats x layers %d is %zu bytes), more than the memory limit of %zu bytes (%s)",
		                    sb_model_dir(m), copies, z.total, c->embed_dim, c->n_dim, c->layers,
		                    z.ema, limit, limit_name);
	}
	size_t n = limit / one;
	*fit = want < n ? want : n;
	return 0;
}
