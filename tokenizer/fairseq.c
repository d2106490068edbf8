/* fairseq.c - the fairseq dictionary (dict.txt) and its two text forms.
 *
 * Ids 0..3 are <s> <pad> </s> <unk>, implicit as in fairseq's Dictionary;
 * then one "<symbol> <count>[ #fairseq:overwrite]" line per id. The byte
 * form (the paper's enwik8 models) spells every symbol as a byte's decimal
 * value and uses </s> for the newline. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

#define FS_OVERWRITE_FLAG "#fairseq:overwrite"

static const char *const fs_specials[4] = {"<s>", "<pad>", "</s>", "<unk>"};

static uint64_t fs_hash(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull;   /* FNV-1a */
	for (size_t i = 0; i < n; i++) {
		h ^= (uint8_t)s[i];
		h *= 1099511628211ull;
	}
	return h;
}

/* The slot of symbol s[0..n): where it is, or the empty slot to put it. */
static size_t fs_slot(const sb_tokenizer *t, const char *s, size_t n)
{
	size_t mask = t->table_cap - 1;
	size_t i = (size_t)fs_hash(s, n) & mask;
	for (;;) {
		int32_t id = t->table[i];
		if (id < 0)
			return i;
		const char *sym = t->sym[id];
		if (strlen(sym) == n && memcmp(sym, s, n) == 0)
			return i;
		i = (i + 1) & mask;
	}
}

static int32_t fs_lookup(const sb_tokenizer *t, const char *s, size_t n)
{
	int32_t id = t->table[fs_slot(t, s, n)];
	return id >= 0 ? id : t->unk;
}

/* "0".."255" without leading zeros: the symbols of the byte form. */
static int fs_byte_value(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 3 || (n > 1 && s[0] == '0'))
		return -1;
	int v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v <= 255 ? v : -1;
}

/* The largest dict.txt read (real dictionaries are a few MB). */
#define FS_FILE_MAX ((size_t)64 << 20)

/* Reads dict.txt whole, with a limit. A leading UTF-8 byte order mark is
 * skipped, as every text file seqboat reads skips it: it names the
 * encoding and is no part of the first symbol. */
static int fs_read_file(const char *path, char **buf, size_t *len, sb_error *err)
{
	int rc = sb_file_read(path, FS_FILE_MAX, "a fairseq dictionary", buf, len, err);
	if (rc == 0 && *len >= 3 && !memcmp(*buf, "\xEF\xBB\xBF", 3)) {
		memmove(*buf, *buf + 3, *len - 3 + 1);
		*len -= 3;
	}
	return rc;
}

/* Splits one line (already without its newline) as fairseq does:
 * rstrip, then the count after the last space, after an optional
 * overwrite flag. The line is modified: the symbol ends up NUL-terminated
 * at line[0]. */
static int fs_parse_line(char *line, size_t n, const char *path, size_t lineno,
                         size_t *sym_len, bool *overwrite, sb_error *err)
{
	while (n > 0 && (line[n - 1] == ' ' || line[n - 1] == '\t' ||
	                 line[n - 1] == '\r' || line[n - 1] == '\v' ||
	                 line[n - 1] == '\f'))
		n--;
	line[n] = 0;
	if (n == 0)
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s:%zu: empty line, expected '<symbol> <count>'", path, lineno);
	if (memchr(line, 0, n))
		return sb_error_set(err, SB_ERR_FORMAT, "%s:%zu: NUL byte in the line", path, lineno);
	char *sp = strrchr(line, ' ');
	*overwrite = false;
	if (sp && strcmp(sp + 1, FS_OVERWRITE_FLAG) == 0) {
		*overwrite = true;
		*sp = 0;
		sp = strrchr(line, ' ');
	}
	if (!sp)
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s:%zu: missing count, expected '<symbol> <count>', got '%.40s'",
		                    path, lineno, line);
	const char *count = sp + 1;
	if (!*count)
		return sb_error_set(err, SB_ERR_FORMAT, "%s:%zu: missing count after the symbol",
		                    path, lineno);
	uint64_t c = 0;
	for (const char *q = count; *q; q++) {
		if (*q < '0' || *q > '9' || c > (UINT64_MAX - 9) / 10)
			return sb_error_set(err, SB_ERR_FORMAT,
			                    "%s:%zu: count '%.40s' is not a non-negative integer",
			                    path, lineno, count);
		c = c * 10 + (uint64_t)(*q - '0');
	}
	*sp = 0;
	*sym_len = (size_t)(sp - line);
	if (*sym_len == 0)
		return sb_error_set(err, SB_ERR_FORMAT, "%s:%zu: empty symbol before the count",
		                    path, lineno);
	size_t bad = sb_utf8_valid(line, *sym_len);
	if (bad != *sym_len)
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s:%zu: symbol is not valid UTF-8 (byte %zu)", path, lineno, bad);
	return 0;
}

/* Fills t's byte tables and info for the byte form. `lines` maps id to its
 * dict.txt line for messages. */
static int fs_setup_bytes(sb_tokenizer *t, const size_t *lines, const char *path,
                          bool forced, sb_error *err)
{
	for (int i = 0; i < 256; i++)
		t->byte_id[i] = -1;
	for (int id = 4; id < t->n_vocab; id++) {
		int v = fs_byte_value(t->sym[id]);
		if (v < 0 || t->byte_id[v] >= 0) {
			if (!forced)
				return 1;
			if (v < 0)
				return sb_error_set(err, SB_ERR_FORMAT,
				                    "%s:%zu: symbol '%.40s' is not a byte value 0..255, "
				                    "but byte symbols were asked for",
				                    path, lines[id], t->sym[id]);
			return sb_error_set(err, SB_ERR_FORMAT,
			                    "%s:%zu: byte symbol '%s' repeats line %zu", path,
			                    lines[id], t->sym[id], lines[t->byte_id[v]]);
		}
		t->byte_id[v] = id;
	}
	return 0;
}

int sb_fairseq_load(sb_tokenizer *t, const char *path, sb_bytes_mode bytes,
                    sb_error *err)
{
	char *buf = NULL;
	size_t len = 0, *lines = NULL;
	int rc = fs_read_file(path, &buf, &len, err);
	if (rc)
		return rc;

	size_t n_lines = 0;
	for (size_t i = 0; i < len; i++)
		n_lines += buf[i] == '\n';
	if (len > 0 && buf[len - 1] != '\n')
		n_lines++;
	if (n_lines == 0) {
		rc = sb_error_set(err, SB_ERR_FORMAT, "%s: empty dictionary, expected '<symbol> <count>' lines", path);
		goto out;
	}
	size_t n_ids, bytes_needed, table_cap = 1;
	if (!sb_size_add(n_lines, 4, &n_ids) || n_ids > INT32_MAX / 4) {
		rc = sb_error_set(err, SB_ERR_FORMAT, "%s: too many symbols (%zu)", path, n_lines);
		goto out;
	}
	while (table_cap < 2 * n_ids)
		table_cap *= 2;
	t->kind = SB_TOK_FAIRSEQ;
	t->n_vocab = (int)n_ids;
	t->bos = 2;
	t->eos = 2;
	t->pad = 1;
	t->unk = 3;
	t->table_cap = table_cap;
	t->sym = calloc(n_ids, sizeof *t->sym);
	t->info = calloc(n_ids, sizeof *t->info);
	t->table = malloc(table_cap * sizeof *t->table);
	lines = calloc(n_ids, sizeof *lines);
	/* The pool holds the file's bytes plus the specials' names. */
	if (!sb_size_add(len, 32, &bytes_needed) || !t->sym || !t->info ||
	    !t->table || !lines || !(t->pool = malloc(bytes_needed))) {
		rc = sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory for %zu symbols", path, n_ids);
		goto out;
	}
	memset(t->table, 0xff, table_cap * sizeof *t->table);
	char *pool = t->pool;
	for (int id = 0; id < 4; id++) {
		size_t n = strlen(fs_specials[id]);
		memcpy(pool, fs_specials[id], n + 1);
		t->sym[id] = pool;
		pool += n + 1;
		t->table[fs_slot(t, t->sym[id], n)] = id;
	}
	memcpy(pool, buf, len);
	size_t start = 0, lineno = 0;
	for (size_t id = 4; id < n_ids; id++) {
		size_t end = start;
		while (end < len && pool[end] != '\n')
			end++;
		lineno++;
		char *line = pool + start;
		size_t sym_len = 0;
		bool overwrite = false;
		rc = fs_parse_line(line, end - start, path, lineno, &sym_len, &overwrite, err);
		if (rc)
			goto out;
		size_t slot = fs_slot(t, line, sym_len);
		if (t->table[slot] >= 0 && !overwrite) {
			int32_t prev = t->table[slot];
			if (prev < 4)
				rc = sb_error_set(err, SB_ERR_FORMAT,
				                  "%s:%zu: symbol '%.40s' is one of the implicit specials (id %d)",
				                  path, lineno, line, prev);
			else
				rc = sb_error_set(err, SB_ERR_FORMAT,
				                  "%s:%zu: duplicate symbol '%.40s' (first on line %zu)",
				                  path, lineno, line, lines[prev]);
			goto out;
		}
		/* As fairseq's add_symbol(overwrite=True): a new id whose symbol
		 * now maps to it. */
		t->sym[id] = line;
		lines[id] = lineno;
		t->table[slot] = (int32_t)id;
		start = end + 1;
	}

	bool want = bytes == SB_BYTES_ON;
	if (bytes != SB_BYTES_OFF) {
		rc = fs_setup_bytes(t, lines, path, bytes == SB_BYTES_ON, err);
		if (rc < 0)
			goto out;
		want = rc == 0;
		rc = 0;
	}
	t->bytes = want;

	for (int id = 0; id < t->n_vocab; id++) {
		sb_piece_info *pi = &t->info[id];
		if (id == 0 || id == 1) {
			pi->kind = SB_PIECE_SKIP;
		} else if (id == 2) {
			pi->kind = SB_PIECE_NEWLINE;
		} else if (id == 3 && t->bytes) {
			/* no byte spells an unknown byte */
			pi->kind = SB_PIECE_TEXT;
			pi->text = SB_UTF8_REPLACEMENT;
		} else if (t->bytes) {
			pi->kind = SB_PIECE_BYTE;
			pi->byte = (uint8_t)fs_byte_value(t->sym[id]);
		} else {
			pi->kind = SB_PIECE_TEXT;
			pi->text = t->sym[id];
		}
	}
out:
	free(buf);
	free(lines);
	return rc;
}

void sb_fairseq_free(sb_tokenizer *t)
{
	free(t->sym);
	free(t->pool);
	free(t->table);
}

static bool fs_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

int sb_fairseq_encode(const sb_tokenizer *t, const char *text, size_t len,
                      bool add_bos, int32_t **ids, size_t *n_ids, sb_error *err)
{
	/* At most one id per byte, plus bos. */
	size_t cap;
	if (!sb_size_add(len, 2, &cap) || !sb_size_mul(cap, sizeof(int32_t), &cap))
		return sb_error_set(err, SB_ERR_NOMEM, "text of %zu bytes is too long to encode", len);
	int32_t *v = malloc(cap);
	if (!v)
		return sb_error_set(err, SB_ERR_NOMEM, "out of memory encoding %zu bytes", len);
	size_t n = 0;
	if (add_bos)
		v[n++] = t->bos;
	if (t->bytes) {
		for (size_t i = 0; i < len; i++) {
			uint8_t b = (uint8_t)text[i];
			int32_t id = b == '\n' ? t->eos : t->byte_id[b];
			v[n++] = id >= 0 ? id : t->unk;
		}
	} else {
		size_t i = 0;
		while (i < len) {
			if (text[i] == '\n') {
				v[n++] = t->eos;
				i++;
			} else if (fs_space(text[i])) {
				i++;
			} else {
				size_t j = i;
				while (j < len && text[j] != '\n' && !fs_space(text[j]))
					j++;
				v[n++] = fs_lookup(t, text + i, j - i);
				i = j;
			}
		}
	}
	*ids = v;
	*n_ids = n;
	return 0;
}
