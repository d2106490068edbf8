/* keyset.c - see keyset.h. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "keyset.h"

static uint64_t hash(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull;   /* FNV-1a, then a final mix */
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ull;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	return h;
}

/* The slot holding key, or the empty slot where it would go. */
static size_t find(const cli_keyset *s, const char *key, size_t len)
{
	size_t mask = s->cap - 1, i = (size_t)hash(key, len) & mask;
	while (s->slot[i] && (strlen(s->slot[i]) != len || memcmp(s->slot[i], key, len)))
		i = (i + 1) & mask;
	return i;
}

static int grow(cli_keyset *s)
{
	size_t cap = s->cap ? s->cap * 2 : 64;
	char **slot = calloc(cap, sizeof *slot);
	size_t *val = calloc(cap, sizeof *val);
	if (!slot || !val) {
		free(slot);
		free(val);
		return -1;
	}
	cli_keyset t = {slot, val, cap, s->n};
	for (size_t i = 0; i < s->cap; i++)
		if (s->slot[i]) {
			size_t j = find(&t, s->slot[i], strlen(s->slot[i]));
			slot[j] = s->slot[i];
			val[j] = s->val[i];
		}
	free(s->slot);
	free(s->val);
	*s = t;
	return 0;
}

int cli_keyset_add(cli_keyset *s, const char *key, size_t len)
{
	size_t old;
	return cli_keyset_put(s, key, len, 0, &old);
}

int cli_keyset_put(cli_keyset *s, const char *key, size_t len, size_t value, size_t *old)
{
	if ((s->n + 1) * 2 > s->cap && grow(s) < 0)
		return -1;
	size_t i = find(s, key, len);
	if (s->slot[i]) {
		*old = s->val[i];
		return 0;
	}
	char *k = malloc(len + 1);
	if (!k)
		return -1;
	memcpy(k, key, len);
	k[len] = 0;
	s->slot[i] = k;
	s->val[i] = value;
	s->n++;
	return 1;
}

bool cli_keyset_has(const cli_keyset *s, const char *key, size_t len)
{
	return s->cap && s->slot[find(s, key, len)] != NULL;
}

void cli_keyset_free(cli_keyset *s)
{
	for (size_t i = 0; i < s->cap; i++)
		free(s->slot[i]);
	free(s->slot);
	free(s->val);
	memset(s, 0, sizeof *s);
}
