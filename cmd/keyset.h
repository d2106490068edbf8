/* keyset.h - a set of strings (hashed, open addressing), for matching
 * records to items by id in time linear in their number. */
#ifndef SB_CLI_KEYSET_H
#define SB_CLI_KEYSET_H

#include <stdbool.h>
#include <stddef.h>

typedef struct cli_keyset {
	char **slot;     /* (cap) owned copies, NULL for empty */
	size_t *val;     /* (cap) the value put with each key */
	size_t cap;      /* a power of two, or 0 */
	size_t n;
} cli_keyset;

/* Adds a copy of key (len bytes, no NUL inside). Returns 1 if added, 0 if
 * already there, -1 when out of memory. */
int cli_keyset_add(cli_keyset *s, const char *key, size_t len);
/* cli_keyset_add with a value kept beside the key: if the key is already
 * there, returns 0 and sets *old to its value (the first one put). */
int cli_keyset_put(cli_keyset *s, const char *key, size_t len, size_t value, size_t *old);
bool cli_keyset_has(const cli_keyset *s, const char *key, size_t len);
/* Frees the keys; the set is empty and usable again. */
void cli_keyset_free(cli_keyset *s);

#endif
