/* serve_cache.c - see serve_cache.h.
 *
 * Entries live in an LRU list and in two chained hash tables: one keyed by
 * the hash of the entry's tokens, one by the hash of its reply's text and
 * where the reply starts. A prefix lookup probes the first table once for
 * each distinct entry length (kept in a sorted array with counts), longest
 * first, so it costs O(tokens + distinct lengths).
 *
 * On disk an entry is two files named by its hash and length:
 * <hash>-<n>.state (sb_state_save) and <hash>-<n>.tokens:
 *     "SBSRVTK\0", u32 version 1, u32 flags (1: open_user),
 *     u64 model fingerprint, u64 n, u64 n_reply, u64 reply_len,
 *     n x i32 tokens, reply_len bytes of text, u64 FNV-1a of all before.
 * (host byte order: a cache directory belongs to one machine). */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "serve_cache.h"
#include "serve_log.h"

#define N_BUCKETS 4096
#define TOKENS_MAGIC "SBSRVTK"
#define TOKENS_VERSION 1u

struct serve_cache_entry {
	uint64_t hash;           /* serve_cache_hash(tokens, n) */
	int32_t *tokens;         /* (n) */
	size_t n;
	sb_state *st;
	size_t n_reply;          /* the last n_reply tokens are the reply */
	char *reply;             /* (reply_len) its text, not NUL-terminated */
	size_t reply_len;
	uint64_t reply_key;      /* reply_key(reply, n - n_reply) */
	bool open_user;
	size_t bytes;            /* what the entry counts against max_bytes */
	int pins;                /* serve_cache_persist calls to come */
	bool linked;             /* in the tables and the LRU list */
	serve_cache_entry *prev, *next;      /* LRU: head is the most recent */
	serve_cache_entry *hnext, *rnext;    /* hash chains */
};

typedef struct length_count {
	size_t n;
	size_t count;
} length_count;

struct serve_cache {
	pthread_mutex_t mu;
	const sb_model *m;
	size_t state_bytes;
	size_t max_bytes, bytes;
	char *dir;               /* NULL: memory only */
	serve_cache_entry *head, *tail;
	serve_cache_entry *by_hash[N_BUCKETS], *by_reply[N_BUCKETS];
	length_count *lengths;   /* distinct entry lengths, ascending */
	size_t n_lengths, cap_lengths;
	size_t entries;
	uint64_t hits, misses, stores, evictions;
};

/* ------------------------------------------------------------- hashing */

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

#define HASH_SEED 0x5eb0a7c0ffee1234ULL

static uint64_t hash_step(uint64_t h, int32_t t)
{
	return mix64(h ^ ((uint64_t)(uint32_t)t + 0x9e3779b97f4a7c15ULL));
}

uint64_t serve_cache_hash(const int32_t *tokens, size_t n)
{
	uint64_t h = HASH_SEED;
	for (size_t i = 0; i < n; i++)
		h = hash_step(h, tokens[i]);
	return h ^ n;
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

#define FNV_OFFSET 0xcbf29ce484222325ULL

static uint64_t reply_key(const char *text, size_t len, size_t at)
{
	return mix64(fnv1a(FNV_OFFSET, text, len) ^ mix64(at));
}

/* ------------------------------------------------------------- entries */

static void entry_free(serve_cache_entry *e)
{
	if (!e)
		return;
	free(e->tokens);
	free(e->reply);
	sb_state_free(e->st);
	free(e);
}

static void lengths_add(serve_cache *c, size_t n)
{
	size_t lo = 0, hi = c->n_lengths;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (c->lengths[mid].n < n)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < c->n_lengths && c->lengths[lo].n == n) {
		c->lengths[lo].count++;
		return;
	}
	/* The caller reserved room (lengths_reserve). */
	memmove(c->lengths + lo + 1, c->lengths + lo, (c->n_lengths - lo) * sizeof *c->lengths);
	c->lengths[lo].n = n;
	c->lengths[lo].count = 1;
	c->n_lengths++;
}

static bool lengths_reserve(serve_cache *c)
{
	if (c->n_lengths < c->cap_lengths)
		return true;
	size_t cap = c->cap_lengths ? 2 * c->cap_lengths : 64;
	length_count *l = realloc(c->lengths, cap * sizeof *l);
	if (!l)
		return false;
	c->lengths = l;
	c->cap_lengths = cap;
	return true;
}

static void lengths_remove(serve_cache *c, size_t n)
{
	for (size_t i = 0; i < c->n_lengths; i++) {
		if (c->lengths[i].n != n)
			continue;
		if (--c->lengths[i].count == 0) {
			memmove(c->lengths + i, c->lengths + i + 1,
			        (c->n_lengths - i - 1) * sizeof *c->lengths);
			c->n_lengths--;
		}
		return;
	}
}

static void lru_unlink(serve_cache *c, serve_cache_entry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		c->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		c->tail = e->prev;
	e->prev = e->next = NULL;
}

static void lru_push_front(serve_cache *c, serve_cache_entry *e)
{
	e->prev = NULL;
	e->next = c->head;
	if (c->head)
		c->head->prev = e;
	c->head = e;
	if (!c->tail)
		c->tail = e;
}

static void chain_remove(serve_cache_entry **slot, serve_cache_entry *e, bool reply)
{
	while (*slot && *slot != e)
		slot = reply ? &(*slot)->rnext : &(*slot)->hnext;
	if (*slot)
		*slot = reply ? e->rnext : e->hnext;
}

static void file_names(const serve_cache *c, const serve_cache_entry *e, char *state,
                       char *tokens, size_t cap)
{
	snprintf(state, cap, "%s/%016llx-%zu.state", c->dir, (unsigned long long)e->hash, e->n);
	snprintf(tokens, cap, "%s/%016llx-%zu.tokens", c->dir, (unsigned long long)e->hash, e->n);
}

/* Takes e out of the tables and the list (the lock is held). Its files are
 * removed: the directory mirrors the cache. */
static void entry_unlink(serve_cache *c, serve_cache_entry *e)
{
	lru_unlink(c, e);
	chain_remove(&c->by_hash[e->hash % N_BUCKETS], e, false);
	chain_remove(&c->by_reply[e->reply_key % N_BUCKETS], e, true);
	lengths_remove(c, e->n);
	c->bytes -= e->bytes;
	c->entries--;
	e->linked = false;
	if (c->dir) {
		char sp[4096], tp[4096];
		file_names(c, e, sp, tp, sizeof sp);
		unlink(tp);
		unlink(sp);
	}
}

static void evict_until(serve_cache *c, size_t need)
{
	while (c->tail && c->bytes + need > c->max_bytes) {
		serve_cache_entry *e = c->tail;
		entry_unlink(c, e);
		c->evictions++;
		if (!e->pins)
			entry_free(e);
	}
}

static serve_cache_entry *find_exact(serve_cache *c, uint64_t h, const int32_t *tokens,
                                     size_t n)
{
	for (serve_cache_entry *e = c->by_hash[h % N_BUCKETS]; e; e = e->hnext)
		if (e->hash == h && e->n == n && !memcmp(e->tokens, tokens, n * sizeof *tokens))
			return e;
	return NULL;
}

/* Links a new entry (the lock is held). False if it cannot be kept. */
static bool entry_link(serve_cache *c, serve_cache_entry *e)
{
	if (e->bytes > c->max_bytes || !lengths_reserve(c))
		return false;
	evict_until(c, e->bytes);
	lengths_add(c, e->n);
	e->hnext = c->by_hash[e->hash % N_BUCKETS];
	c->by_hash[e->hash % N_BUCKETS] = e;
	e->rnext = c->by_reply[e->reply_key % N_BUCKETS];
	c->by_reply[e->reply_key % N_BUCKETS] = e;
	lru_push_front(c, e);
	c->bytes += e->bytes;
	c->entries++;
	e->linked = true;
	return true;
}

static serve_cache_entry *entry_new(serve_cache *c, const int32_t *tokens, size_t n,
                                    sb_state *st, size_t n_reply, const char *reply,
                                    size_t reply_len, bool open_user)
{
	serve_cache_entry *e = calloc(1, sizeof *e);
	if (!e)
		return NULL;
	e->st = st;
	e->tokens = malloc((n ? n : 1) * sizeof *tokens);
	e->reply = malloc(reply_len ? reply_len : 1);
	if (!e->tokens || !e->reply) {
		entry_free(e);
		return NULL;
	}
	memcpy(e->tokens, tokens, n * sizeof *tokens);
	if (reply_len)
		memcpy(e->reply, reply, reply_len);
	e->n = n;
	e->n_reply = n_reply <= n ? n_reply : n;
	e->reply_len = reply_len;
	e->open_user = open_user;
	e->hash = serve_cache_hash(tokens, n);
	e->reply_key = reply_key(e->reply, reply_len, n - e->n_reply);
	e->bytes = c->state_bytes + n * sizeof *tokens + reply_len + sizeof *e;
	return e;
}

/* --------------------------------------------------------------- files */

typedef struct tokens_header {
	char magic[8];
	uint32_t version;
	uint32_t flags;
	uint64_t fingerprint;
	uint64_t n, n_reply, reply_len;
} tokens_header;

static int write_all(FILE *f, const void *p, size_t n, uint64_t *sum)
{
	*sum = fnv1a(*sum, p, n);
	return n == 0 || fwrite(p, 1, n, f) == n ? 0 : -1;
}

static int write_tokens_file(const serve_cache *c, const serve_cache_entry *e,
                             const char *path)
{
	char tmp[4200];
	snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
	FILE *f = fopen(tmp, "wb");
	if (!f)
		return -1;
	tokens_header h;
	memset(&h, 0, sizeof h);
	memcpy(h.magic, TOKENS_MAGIC, sizeof TOKENS_MAGIC);
	h.version = TOKENS_VERSION;
	h.flags = e->open_user ? 1u : 0u;
	h.fingerprint = sb_model_fingerprint(c->m);
	h.n = e->n;
	h.n_reply = e->n_reply;
	h.reply_len = e->reply_len;
	uint64_t sum = FNV_OFFSET;
	int rc = write_all(f, &h, sizeof h, &sum);
	if (!rc)
		rc = write_all(f, e->tokens, e->n * sizeof *e->tokens, &sum);
	if (!rc)
		rc = write_all(f, e->reply, e->reply_len, &sum);
	if (!rc && fwrite(&sum, sizeof sum, 1, f) != 1)
		rc = -1;
	if (fflush(f) != 0 || fsync(fileno(f)) != 0)
		rc = -1;
	if (fclose(f) != 0)
		rc = -1;
	if (!rc && rename(tmp, path) != 0)
		rc = -1;
	if (rc)
		unlink(tmp);
	return rc;
}

/* Reads a .tokens file: NULL (and a log line) if it is not a valid one of
 * this model. */
static serve_cache_entry *read_tokens_file(serve_cache *c, const char *path)
{
	serve_cache_entry *e = NULL;
	char *buf = NULL;
	FILE *f = fopen(path, "rb");
	const char *why = "cannot be read";
	if (!f)
		goto bad;
	struct stat sbuf;
	if (fstat(fileno(f), &sbuf) != 0 || sbuf.st_size < (off_t)(sizeof(tokens_header) + 8)) {
		why = "is truncated";
		goto bad;
	}
	size_t len = (size_t)sbuf.st_size;
	if (!(buf = malloc(len)) || fread(buf, 1, len, f) != len)
		goto bad;
	tokens_header h;
	memcpy(&h, buf, sizeof h);
	if (memcmp(h.magic, TOKENS_MAGIC, sizeof TOKENS_MAGIC) || h.version != TOKENS_VERSION) {
		why = "is not a seqboat serve tokens file (magic or version)";
		goto bad;
	}
	if (h.fingerprint != sb_model_fingerprint(c->m)) {
		why = "belongs to another model (fingerprint)";
		goto bad;
	}
	size_t tok_bytes, need;
	if (h.n > SIZE_MAX / 8 || h.reply_len > SIZE_MAX / 4 || h.n_reply > h.n ||
	    !sb_size_mul((size_t)h.n, sizeof(int32_t), &tok_bytes) ||
	    !sb_size_add(sizeof h + 8, tok_bytes, &need) ||
	    !sb_size_add(need, (size_t)h.reply_len, &need) || need != len) {
		why = "has sizes that do not match its length";
		goto bad;
	}
	uint64_t sum;
	memcpy(&sum, buf + len - 8, 8);
	if (fnv1a(FNV_OFFSET, buf, len - 8) != sum) {
		why = "is corrupt (checksum)";
		goto bad;
	}
	const int32_t *toks = (const int32_t *)(void *)(buf + sizeof h);
	int V = sb_model_config(c->m)->vocab_size;
	int32_t *copy = malloc(tok_bytes ? tok_bytes : 1);
	if (!copy)
		goto bad;
	memcpy(copy, toks, tok_bytes);
	for (size_t i = 0; i < h.n; i++)
		if (copy[i] < 0 || copy[i] >= V) {
			free(copy);
			why = "holds a token id out of the vocabulary";
			goto bad;
		}
	e = entry_new(c, copy, (size_t)h.n, NULL, (size_t)h.n_reply, buf + sizeof h + tok_bytes,
	              (size_t)h.reply_len, h.flags & 1u);
	free(copy);
	if (!e)
		goto bad;
	fclose(f);
	free(buf);
	return e;
bad:
	serve_log("cache: ignoring %s: it %s", path, why);
	if (f)
		fclose(f);
	free(buf);
	return NULL;
}

typedef struct disk_item {
	char *name;              /* <hash>-<n> */
	time_t mtime;
} disk_item;

static int by_mtime_desc(const void *a, const void *b)
{
	const disk_item *x = a, *y = b;
	return x->mtime < y->mtime ? 1 : x->mtime > y->mtime ? -1 : strcmp(x->name, y->name);
}

/* Reads the directory's entries, newest first, while they fit. */
static int load_dir(serve_cache *c, sb_error *err)
{
	DIR *d = opendir(c->dir);
	if (!d)
		return sb_error_set(err, SB_ERR_IO, "%s: cannot read the cache directory: %s",
		                    c->dir, strerror(errno));
	disk_item *items = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	char path[4096];
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		if (l < 8 || strcmp(de->d_name + l - 7, ".tokens"))
			continue;
		snprintf(path, sizeof path, "%s/%s", c->dir, de->d_name);
		struct stat sb;
		if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
			continue;
		if (n == cap) {
			size_t nc = cap ? 2 * cap : 64;
			disk_item *ni = realloc(items, nc * sizeof *ni);
			if (!ni)
				break;
			items = ni;
			cap = nc;
		}
		if (!(items[n].name = strndup(de->d_name, l - 7)))
			break;
		items[n++].mtime = sb.st_mtime;
	}
	closedir(d);
	if (n)
		qsort(items, n, sizeof *items, by_mtime_desc);
	size_t loaded = 0;
	for (size_t i = 0; i < n; i++) {
		char tp[4200], sp[4200];
		snprintf(tp, sizeof tp, "%s/%s.tokens", c->dir, items[i].name);
		snprintf(sp, sizeof sp, "%s/%s.state", c->dir, items[i].name);
		serve_cache_entry *e = read_tokens_file(c, tp);
		if (!e)
			continue;
		char want[64];
		snprintf(want, sizeof want, "%016llx-%zu", (unsigned long long)e->hash, e->n);
		sb_error se = {0};
		if (strcmp(want, items[i].name)) {
			serve_log("cache: ignoring %s: its name does not match its tokens", tp);
		} else if (c->bytes + e->bytes > c->max_bytes) {
			/* Older than what fits: the cache would have evicted it. */
			unlink(tp);
			unlink(sp);
		} else if (!(e->st = sb_state_new(c->m, &se))) {
			serve_log("cache: %s", se.msg);
		} else if (sb_state_load(e->st, sp, &se) < 0) {
			serve_log("cache: ignoring %s: %s", sp, se.msg);
		} else if (sb_state_n_tokens(e->st) != e->n) {
			serve_log("cache: ignoring %s: it holds %llu tokens, its tokens file %zu", sp,
			          (unsigned long long)sb_state_n_tokens(e->st), e->n);
		} else if (!find_exact(c, e->hash, e->tokens, e->n) && entry_link(c, e)) {
			loaded++;
			e = NULL;
		}
		entry_free(e);
	}
	for (size_t i = 0; i < n; i++)
		free(items[i].name);
	free(items);
	if (loaded)
		serve_log("cache: %zu states (%zu bytes) read from %s", loaded, c->bytes, c->dir);
	return 0;
}

/* ---------------------------------------------------------------- API */

serve_cache *serve_cache_new(const sb_model *m, size_t max_bytes, const char *dir,
                             sb_error *err)
{
	serve_cache *c = calloc(1, sizeof *c);
	if (!c) {
		sb_error_set(err, SB_ERR_NOMEM, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&c->mu, NULL);
	c->m = m;
	c->state_bytes = sb_state_bytes(m);
	c->max_bytes = max_bytes;
	if (dir) {
		if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
			sb_error_set(err, SB_ERR_IO, "%s: cannot create the cache directory: %s", dir,
			             strerror(errno));
			goto fail;
		}
		if (!(c->dir = strdup(dir))) {
			sb_error_set(err, SB_ERR_NOMEM, "out of memory");
			goto fail;
		}
		if (load_dir(c, err) < 0)
			goto fail;
	}
	return c;
fail:
	serve_cache_free(c);
	return NULL;
}

void serve_cache_free(serve_cache *c)
{
	if (!c)
		return;
	serve_cache_entry *e = c->head;
	while (e) {
		serve_cache_entry *next = e->next;
		entry_free(e);
		e = next;
	}
	free(c->lengths);
	free(c->dir);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

static size_t use_prefix(serve_cache *c, const int32_t *tokens, size_t limit,
                         void (*use)(const sb_state *st, size_t n, void *arg), void *arg,
                         bool count)
{
	/* Prefix hashes first, without the lock. */
	uint64_t *ph = malloc((limit + 1) * sizeof *ph);
	if (!ph)
		return 0;
	uint64_t h = HASH_SEED;
	ph[0] = h;
	for (size_t i = 0; i < limit; i++)
		ph[i + 1] = h = hash_step(h, tokens[i]);
	size_t found = 0;
	pthread_mutex_lock(&c->mu);
	for (size_t i = c->n_lengths; i-- > 0 && !found;) {
		size_t n = c->lengths[i].n;
		if (n > limit || n == 0)
			continue;
		serve_cache_entry *e = find_exact(c, ph[n] ^ n, tokens, n);
		if (e) {
			lru_unlink(c, e);
			lru_push_front(c, e);
			use(e->st, n, arg);
			found = n;
		}
	}
	if (count && found)
		c->hits++;
	else if (count)
		c->misses++;
	pthread_mutex_unlock(&c->mu);
	free(ph);
	return found;
}

size_t serve_cache_use_prefix(serve_cache *c, const int32_t *tokens, size_t limit,
                              void (*use)(const sb_state *st, size_t n, void *arg), void *arg)
{
	return use_prefix(c, tokens, limit, use, arg, true);
}

size_t serve_cache_probe_prefix(serve_cache *c, const int32_t *tokens, size_t limit,
                                void (*use)(const sb_state *st, size_t n, void *arg), void *arg)
{
	return use_prefix(c, tokens, limit, use, arg, false);
}

bool serve_cache_reply_tokens(serve_cache *c, const int32_t *prefix, size_t n_prefix,
                              const char *text, size_t len, int32_t **out, size_t *n_out,
                              bool *open_user)
{
	uint64_t k = reply_key(text, len, n_prefix);
	bool ok = false;
	pthread_mutex_lock(&c->mu);
	for (serve_cache_entry *e = c->by_reply[k % N_BUCKETS]; e; e = e->rnext) {
		if (e->reply_key != k || e->n - e->n_reply != n_prefix || e->reply_len != len ||
		    memcmp(e->reply, text, len) ||
		    memcmp(e->tokens, prefix, n_prefix * sizeof *prefix))
			continue;
		int32_t *r = malloc((e->n_reply ? e->n_reply : 1) * sizeof *r);
		if (r) {
			memcpy(r, e->tokens + n_prefix, e->n_reply * sizeof *r);
			*out = r;
			*n_out = e->n_reply;
			*open_user = e->open_user;
			ok = true;
		}
		break;
	}
	pthread_mutex_unlock(&c->mu);
	return ok;
}

serve_cache_entry *serve_cache_store(serve_cache *c, const int32_t *tokens, size_t n,
                                     sb_state *st, size_t n_reply, const char *reply,
                                     size_t reply_len, bool open_user)
{
	serve_cache_entry *e = entry_new(c, tokens, n, st, n_reply, reply, reply_len, open_user);
	if (!e) {
		sb_state_free(st);
		return NULL;
	}
	serve_cache_entry *pinned = NULL;
	pthread_mutex_lock(&c->mu);
	serve_cache_entry *old = find_exact(c, e->hash, tokens, n);
	if (old) {
		lru_unlink(c, old);
		lru_push_front(c, old);
	} else if (entry_link(c, e)) {
		c->stores++;
		if (c->dir) {
			e->pins++;
			pinned = e;
		}
		e = NULL;
	}
	pthread_mutex_unlock(&c->mu);
	entry_free(e);
	return pinned;
}

void serve_cache_persist(serve_cache *c, serve_cache_entry *e)
{
	if (!e)
		return;
	char sp[4096], tp[4096];
	file_names(c, e, sp, tp, sizeof sp);
	/* The entry's buffers do not change while it is pinned. The state
	 * goes first: a tokens file is what makes a pair visible. */
	sb_error err = {0};
	int rc = sb_state_save(e->st, sp, &err);
	if (rc < 0)
		serve_log("cache: cannot write %s: %s", sp, err.msg);
	else if (write_tokens_file(c, e, tp) < 0)
		serve_log("cache: cannot write %s: %s", tp, strerror(errno));
	pthread_mutex_lock(&c->mu);
	e->pins--;
	bool gone = !e->linked, drop = gone && !e->pins;
	if (gone) {
		/* Evicted while being written: its files must not outlive it. */
		unlink(tp);
		unlink(sp);
	}
	pthread_mutex_unlock(&c->mu);
	if (drop)
		entry_free(e);
}

void serve_cache_stats_get(serve_cache *c, serve_cache_stats *out)
{
	pthread_mutex_lock(&c->mu);
	out->hits = c->hits;
	out->misses = c->misses;
	out->stores = c->stores;
	out->evictions = c->evictions;
	out->entries = c->entries;
	out->bytes = c->bytes;
	out->max_bytes = c->max_bytes;
	pthread_mutex_unlock(&c->mu);
}
