/* safetensors.c - the safetensors reader (validating, mmap) and writer.
 *
 * Layout: u64 little-endian header length n, n bytes of JSON, then the data
 * area. The JSON maps tensor names to {"dtype", "shape", "data_offsets"}
 * (offsets relative to the data area) plus an optional "__metadata__" map of
 * strings. The reader trusts nothing: every rule is checked before a file is
 * handed out, so the rest of seqboat can index tensors without checks. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "seqboat.h"

/* The limit the reference implementation applies: a larger header is a
 * malformed (or hostile) file, not a real model. */
#define HEADER_MAX 100000000u
#define METADATA_KEY "__metadata__"

_Static_assert(sizeof(json_int_t) == 8, "offsets are written as 64-bit JSON integers");

struct sb_st_file {
	const uint8_t *base;     /* the whole file */
	size_t size;
	void *map;               /* NULL for sb_st_open_memory */
	json_t *header;          /* owns the tensor names and metadata strings */
	json_t *metadata;        /* borrowed from header, or NULL */
	sb_tensor *tensors;      /* (n) in data-offset order */
	size_t n;
	const sb_tensor **by_name; /* (n) the tensors sorted by name */
	void **copies;           /* aligned copies of unaligned tensors */
	size_t n_copies;
};

/* Where each tensor's bytes lie while the header is being checked. */
typedef struct span {
	uint64_t begin, end;
	size_t index;            /* into the header's tensor list */
} span;

static void format_shape(char *buf, size_t cap, const uint64_t *shape, int ndim)
{
	size_t used = 0;
	int w = snprintf(buf, cap, "[");
	for (int i = 0; i < ndim && w >= 0; i++) {
		used += (size_t)w;
		if (used >= cap)
			return;
		w = snprintf(buf + used, cap - used, "%s%" PRIu64, i ? ", " : "",
		             shape[i]);
	}
	if (w >= 0 && used + (size_t)w < cap)
		snprintf(buf + used + (size_t)w, cap - used - (size_t)w, "]");
}

static bool dtype_parse(const char *s, sb_dtype *out)
{
	for (int d = 0; d < SB_DTYPE_COUNT; d++) {
		if (strcmp(s, sb_dtype_name((sb_dtype)d)) == 0) {
			*out = (sb_dtype)d;
			return true;
		}
	}
	return false;
}

static int check_metadata(json_t *meta, const char *label, sb_error *err)
{
	if (!json_is_object(meta))
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: " METADATA_KEY " is not a JSON object", label);
	const char *key;
	json_t *v;
	json_object_foreach(meta, key, v) {
		if (!json_is_string(v))
			return sb_error_set(err, SB_ERR_FORMAT,
			                    "%s: " METADATA_KEY " entry '%s' is not a string",
			                    label, key);
	}
	return SB_OK;
}

/* Reads one non-negative JSON integer. */
static bool get_u64(json_t *v, uint64_t *out)
{
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return false;
	*out = (uint64_t)json_integer_value(v);
	return true;
}

/* Checks one header entry and fills t (all but data) and its span. */
static int check_tensor(const char *label, const char *name, json_t *obj,
                        size_t data_size, sb_tensor *t, span *sp,
                        sb_error *err)
{
	if (name[0] == 0)
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: a tensor has an empty name", label);
	if (!json_is_object(obj))
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: tensor '%s' is not a JSON object", label, name);
	const char *key;
	json_t *v;
	json_object_foreach(obj, key, v) {
		if (strcmp(key, "dtype") && strcmp(key, "shape") &&
		    strcmp(key, "data_offsets"))
			return sb_error_set(err, SB_ERR_FORMAT,
			                    "%s: tensor '%s' has unknown field '%s'",
			                    label, name, key);
	}
	static const char *const fields[] = {"dtype", "shape", "data_offsets"};
	for (size_t i = 0; i < 3; i++) {
		if (!json_object_get(obj, fields[i]))
			return sb_error_set(err, SB_ERR_FORMAT,
			                    "%s: tensor '%s' has no %s", label, name,
			                    fields[i]);
	}

	t->name = name;
	json_t *dt = json_object_get(obj, "dtype");
	if (!json_is_string(dt))
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: tensor '%s' dtype is not a string", label, name);
	if (!dtype_parse(json_string_value(dt), &t->dtype))
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: tensor '%s' has unknown dtype '%s'", label,
		                    name, json_string_value(dt));

	json_t *shape = json_object_get(obj, "shape");
	if (!json_is_array(shape))
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: tensor '%s' shape is not an array", label, name);
	if (json_array_size(shape) > SB_MAX_DIMS)
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: tensor '%s' shape has %zu dimensions, at most %d supported",
		                    label, name, json_array_size(shape), SB_MAX_DIMS);
	t->ndim = (int)json_array_size(shape);
	size_t numel = 1;
	bool overflow = false;
	for (int i = 0; i < t->ndim; i++) {
		if (!get_u64(json_array_get(shape, (size_t)i), &t->shape[i]))
			return sb_error_set(err, SB_ERR_FORMAT,
			                    "%s: tensor '%s' shape[%d] is not a non-negative integer",
			                    label, name, i);
		if (t->shape[i] > SIZE_MAX || !sb_size_mul(numel, (size_t)t->shape[i], &numel))
			overflow = true;
	}
	char shp[160];
	format_shape(shp, sizeof shp, t->shape, t->ndim);
	if (overflow || !sb_size_mul(numel, sb_dtype_size(t->dtype), &t->nbytes))
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: tensor '%s' shape %s is too large (size overflows)",
		                    label, name, shp);
	t->numel = numel;

	json_t *offs = json_object_get(obj, "data_offsets");
	if (!json_is_array(offs) || json_array_size(offs) != 2 ||
	    !get_u64(json_array_get(offs, 0), &sp->begin) ||
	    !get_u64(json_array_get(offs, 1), &sp->end))
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: tensor '%s' data_offsets is not [begin, end] with non-negative integers",
		                    label, name);
	if (sp->begin > sp->end)
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64 "] begin after end",
		                    label, name, sp->begin, sp->end);
	if (sp->end - sp->begin != t->nbytes)
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64 " bytes, expected %zu (%s %s)",
		                    label, name, sp->begin, sp->end,
		                    sp->end - sp->begin, t->nbytes,
		                    sb_dtype_name(t->dtype), shp);
	if (sp->end > data_size)
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64 "] run past the data area (%zu bytes)",
		                    label, name, sp->begin, sp->end, data_size);
	return SB_OK;
}

static int span_cmp(const void *a, const void *b)
{
	const span *x = a, *y = b;
	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return x->index < y->index ? -1 : x->index > y->index;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp((*(const sb_tensor *const *)a)->name,
	              (*(const sb_tensor *const *)b)->name);
}

/* Sorted by begin, the tensors must tile the data area exactly. */
static int check_tiling(const char *label, span *spans, const sb_tensor *ts,
                        size_t n, size_t data_size, sb_error *err)
{
	qsort(spans, n, sizeof *spans, span_cmp);
	uint64_t at = 0;
	for (size_t i = 0; i < n; i++) {
		const span *s = &spans[i];
		const char *name = ts[s->index].name;
		if (s->begin > at)
			return sb_error_set(err, SB_ERR_FORMAT,
			                    "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64 "] leave a gap: bytes [%" PRIu64 ", %" PRIu64 ") belong to no tensor",
			                    label, name, s->begin, s->end, at, s->begin);
		if (s->begin < at) {
			const span *p = &spans[i - 1];
			return sb_error_set(err, SB_ERR_FORMAT,
			                    "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64 "] overlap tensor '%s' [%" PRIu64 ", %" PRIu64 "]",
			                    label, name, s->begin, s->end,
			                    ts[p->index].name, p->begin, p->end);
		}
		at = s->end;
	}
	if (at != data_size)
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: %" PRIu64 " trailing bytes after the last tensor (data area is %zu bytes, tensors end at %" PRIu64 ")",
		                    label, (uint64_t)data_size - at, data_size, at);
	return SB_OK;
}

/* Validates buf and builds f's tensor table. f->base and f->size are set. */
static int parse(sb_st_file *f, const char *label, sb_error *err)
{
	int rc = SB_OK;
	span *spans = NULL;
	sb_tensor *raw = NULL;

	if (f->size < 8) {
		rc = sb_error_set(err, SB_ERR_FORMAT,
		                  "%s: file is %zu bytes, too short for the 8-byte header length",
		                  label, f->size);
		goto out;
	}
	uint64_t hlen = 0;
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | f->base[i];
	if (hlen > HEADER_MAX) {
		rc = sb_error_set(err, SB_ERR_FORMAT,
		                  "%s: header length %" PRIu64 " exceeds the limit of %u bytes",
		                  label, hlen, HEADER_MAX);
		goto out;
	}
	if (hlen > f->size - 8) {
		rc = sb_error_set(err, SB_ERR_FORMAT,
		                  "%s: header length %" PRIu64 " runs past the end of the file (%zu bytes)",
		                  label, hlen, f->size);
		goto out;
	}
	size_t data_size = f->size - 8 - (size_t)hlen;
	const uint8_t *data = f->base + 8 + hlen;

	json_error_t jerr;
	f->header = json_loadb((const char *)f->base + 8, (size_t)hlen,
	                       JSON_REJECT_DUPLICATES, &jerr);
	if (!f->header) {
		rc = sb_error_set(err, SB_ERR_FORMAT,
		                  "%s: header is not valid JSON: %s (line %d, column %d)",
		                  label, jerr.text, jerr.line, jerr.column);
		goto out;
	}
	if (!json_is_object(f->header)) {
		rc = sb_error_set(err, SB_ERR_FORMAT,
		                  "%s: header is not a JSON object", label);
		goto out;
	}

	size_t n = json_object_size(f->header);
	f->metadata = json_object_get(f->header, METADATA_KEY);
	if (f->metadata) {
		rc = check_metadata(f->metadata, label, err);
		if (rc)
			goto out;
		n--;
	}
	raw = calloc(n ? n : 1, sizeof *raw);
	spans = calloc(n ? n : 1, sizeof *spans);
	f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
	f->by_name = calloc(n ? n : 1, sizeof *f->by_name);
	f->copies = calloc(n ? n : 1, sizeof *f->copies);
	if (!raw || !spans || !f->tensors || !f->by_name || !f->copies) {
		rc = sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory for %zu tensors",
		                  label, n);
		goto out;
	}

	size_t i = 0;
	const char *key;
	size_t key_len;
	json_t *v;
	json_object_keylen_foreach(f->header, key, key_len, v) {
		if (strlen(key) != key_len) {
			rc = sb_error_set(err, SB_ERR_FORMAT,
			                  "%s: a header key contains a NUL byte", label);
			goto out;
		}
		if (strcmp(key, METADATA_KEY) == 0)
			continue;
		rc = check_tensor(label, key, v, data_size, &raw[i], &spans[i], err);
		if (rc)
			goto out;
		spans[i].index = i;
		i++;
	}
	rc = check_tiling(label, spans, raw, n, data_size, err);
	if (rc)
		goto out;

	for (i = 0; i < n; i++) {
		sb_tensor *t = &f->tensors[i];
		*t = raw[spans[i].index];
		size_t align = sb_dtype_size(t->dtype);
		const uint8_t *p = data + spans[i].begin;
		if (t->nbytes == 0) {
			/* Nothing will be read; any aligned address will do. */
			static const uint64_t none;
			t->data = &none;
		} else if ((uintptr_t)p % align == 0) {
			t->data = p;
		} else {
			/* malloc's alignment covers every dtype (at most 8 bytes). */
			void *copy = malloc(t->nbytes);
			if (!copy) {
				rc = sb_error_set(err, SB_ERR_NOMEM,
				                  "%s: out of memory copying tensor '%s' (%zu bytes)",
				                  label, t->name, t->nbytes);
				goto out;
			}
			memcpy(copy, p, t->nbytes);
			f->copies[f->n_copies++] = copy;
			t->data = copy;
		}
		f->by_name[i] = t;
	}
	f->n = n;
	qsort(f->by_name, n, sizeof *f->by_name, name_cmp);
out:
	free(raw);
	free(spans);
	return rc;
}

static void file_free(sb_st_file *f)
{
	if (!f)
		return;
	for (size_t i = 0; i < f->n_copies; i++)
		free(f->copies[i]);
	free(f->copies);
	free(f->by_name);
	free(f->tensors);
	json_decref(f->header);
	if (f->map)
		munmap(f->map, f->size);
	free(f);
}

sb_st_file *sb_st_open_memory(const void *buf, size_t len, const char *label,
                              sb_error *err)
{
	if (!label)
		label = "<memory>";
	if (!buf && len) {
		sb_error_set(err, SB_ERR_ARG, "%s: NULL buffer", label);
		return NULL;
	}
	sb_st_file *f = calloc(1, sizeof *f);
	if (!f) {
		sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", label);
		return NULL;
	}
	f->base = buf;
	f->size = len;
	if (parse(f, label, err)) {
		file_free(f);
		return NULL;
	}
	return f;
}

sb_st_file *sb_st_open(const char *path, sb_error *err)
{
	sb_st_file *f = NULL;
	int fd = -1;
	if (!path) {
		sb_error_set(err, SB_ERR_ARG, "sb_st_open: NULL path");
		goto fail;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		sb_error_set(err, SB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
		goto fail;
	}
	struct stat st;
	if (fstat(fd, &st) != 0) {
		sb_error_set(err, SB_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		sb_error_set(err, SB_ERR_IO, "%s: not a regular file", path);
		goto fail;
	}
	if ((uint64_t)st.st_size > SIZE_MAX) {
		sb_error_set(err, SB_ERR_IO, "%s: too large to map", path);
		goto fail;
	}
	f = calloc(1, sizeof *f);
	if (!f) {
		sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", path);
		goto fail;
	}
	f->size = (size_t)st.st_size;
	if (f->size > 0) {
		void *map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			sb_error_set(err, SB_ERR_IO, "%s: cannot mmap: %s", path,
			             strerror(errno));
			goto fail;
		}
		f->map = map;
		f->base = map;
	}
	close(fd);
	fd = -1;
	if (parse(f, path, err))
		goto fail;
	return f;
fail:
	if (fd >= 0)
		close(fd);
	file_free(f);
	return NULL;
}

size_t sb_st_count(const sb_st_file *f)
{
	return f ? f->n : 0;
}

const sb_tensor *sb_st_tensor_at(const sb_st_file *f, size_t i)
{
	return f && i < f->n ? &f->tensors[i] : NULL;
}

const sb_tensor *sb_st_find(const sb_st_file *f, const char *name)
{
	if (!f || !name)
		return NULL;
	size_t lo = 0, hi = f->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const sb_tensor *t = f->by_name[mid];
		int c = strcmp(name, t->name);
		if (c == 0)
			return t;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

const char *sb_st_metadata(const sb_st_file *f, const char *key)
{
	if (!f || !f->metadata || !key)
		return NULL;
	return json_string_value(json_object_get(f->metadata, key));
}

size_t sb_st_file_size(const sb_st_file *f)
{
	return f ? f->size : 0;
}

void sb_st_close(sb_st_file *f)
{
	file_free(f);
}

/* ------------------------------------------------------------------ write */

/* The header JSON for entries, in their order, with consecutive offsets. */
static int build_header(const char *path, const sb_st_entry *entries, size_t n,
                        const char *const *meta_kv, size_t *sizes,
                        json_t **out, sb_error *err)
{
	int rc = SB_OK;
	json_t *root = json_object();
	json_t *meta = NULL;
	if (!root) {
		rc = sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", path);
		goto out;
	}
	if (meta_kv) {
		meta = json_object();
		if (!meta || json_object_set(root, METADATA_KEY, meta)) {
			rc = sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", path);
			goto out;
		}
		for (size_t i = 0; meta_kv[i]; i += 2) {
			if (!meta_kv[i + 1]) {
				rc = sb_error_set(err, SB_ERR_ARG,
				                  "%s: metadata key '%s' has no value",
				                  path, meta_kv[i]);
				goto out;
			}
			if (json_object_get(meta, meta_kv[i])) {
				rc = sb_error_set(err, SB_ERR_ARG,
				                  "%s: metadata key '%s' given twice",
				                  path, meta_kv[i]);
				goto out;
			}
			if (json_object_set_new(meta, meta_kv[i],
			                        json_string(meta_kv[i + 1]))) {
				rc = sb_error_set(err, SB_ERR_ARG,
				                  "%s: metadata '%s' is not valid UTF-8",
				                  path, meta_kv[i]);
				goto out;
			}
		}
	}
	size_t at = 0;
	for (size_t i = 0; i < n; i++) {
		const sb_st_entry *e = &entries[i];
		const char *name = e->name ? e->name : "";
		if (!name[0] || strcmp(name, METADATA_KEY) == 0) {
			rc = sb_error_set(err, SB_ERR_ARG,
			                  "%s: entry %zu has an invalid name '%s'", path, i,
			                  name);
			goto out;
		}
		if ((unsigned)e->dtype >= SB_DTYPE_COUNT || e->ndim < 0 ||
		    e->ndim > SB_MAX_DIMS) {
			rc = sb_error_set(err, SB_ERR_ARG,
			                  "%s: tensor '%s' has an invalid dtype or ndim",
			                  path, name);
			goto out;
		}
		if (json_object_get(root, name)) {
			rc = sb_error_set(err, SB_ERR_ARG,
			                  "%s: duplicate tensor name '%s'", path, name);
			goto out;
		}
		json_t *obj = json_object();
		json_t *shape = NULL, *offs = NULL;
		/* Each new value is handed to its parent at once (the _new
		 * setters take the reference even on failure), so nothing
		 * leaks on any exit. */
		bool ok = !json_object_set_new(root, name, obj) &&
		          !json_object_set_new(obj, "dtype",
		                               json_string(sb_dtype_name(e->dtype))) &&
		          !json_object_set_new(obj, "shape", shape = json_array()) &&
		          !json_object_set_new(obj, "data_offsets", offs = json_array());
		if (!ok) {
			rc = sb_error_set(err, SB_ERR_ARG,
			                  "%s: cannot encode tensor '%s' (invalid UTF-8 or out of memory)",
			                  path, name);
			goto out;
		}
		size_t numel = 1, end = 0;
		for (int d = 0; d < e->ndim; d++) {
			ok = ok && e->shape[d] <= (uint64_t)SIZE_MAX &&
			     e->shape[d] <= (uint64_t)INT64_MAX &&
			     sb_size_mul(numel, (size_t)e->shape[d], &numel) &&
			     !json_array_append_new(shape,
			                            json_integer((json_int_t)e->shape[d]));
		}
		ok = ok && sb_size_mul(numel, sb_dtype_size(e->dtype), &sizes[i]) &&
		     sb_size_add(at, sizes[i], &end) &&
		     end <= (uint64_t)INT64_MAX &&
		     !json_array_append_new(offs, json_integer((json_int_t)at)) &&
		     !json_array_append_new(offs, json_integer((json_int_t)end));
		if (!ok) {
			rc = sb_error_set(err, SB_ERR_ARG,
			                  "%s: tensor '%s' is too large", path, name);
			goto out;
		}
		if (sizes[i] && !e->data) {
			rc = sb_error_set(err, SB_ERR_ARG,
			                  "%s: tensor '%s' has no data", path, name);
			goto out;
		}
		at = end;
	}
	*out = root;
	root = NULL;
out:
	json_decref(meta);
	json_decref(root);
	return rc;
}

int sb_st_write(const char *path, const sb_st_entry *entries, size_t n,
                const char *const *meta_kv, sb_error *err)
{
	int rc = SB_OK;
	size_t *sizes = NULL;
	json_t *root = NULL;
	char *text = NULL;

	if (!path || (n && !entries))
		return sb_error_set(err, SB_ERR_ARG, "sb_st_write: NULL argument");
	sizes = calloc(n ? n : 1, sizeof *sizes);
	if (!sizes) {
		rc = sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", path);
		goto out;
	}
	rc = build_header(path, entries, n, meta_kv, sizes, &root, err);
	if (rc)
		goto out;
	text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (!text) {
		rc = sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", path);
		goto out;
	}
	/* Padding keeps the data area 8-byte aligned in the file, so that a
	 * reader's mmap needs no copies. */
	size_t hlen = strlen(text);
	size_t padded = (hlen + 7) / 8 * 8;
	uint8_t head[8];
	for (int i = 0; i < 8; i++)
		head[i] = (uint8_t)((uint64_t)padded >> (8 * i));
	static const char spaces[8] = "        ";

	sb_file_out o;
	if ((rc = sb_file_out_open(&o, path, err)))
		goto out;
	bool ok = fwrite(head, 1, 8, o.f) == 8 && fwrite(text, 1, hlen, o.f) == hlen &&
	          fwrite(spaces, 1, padded - hlen, o.f) == padded - hlen;
	for (size_t i = 0; ok && i < n; i++)
		ok = fwrite(entries[i].data, 1, sizes[i], o.f) == sizes[i];
	if (!ok) {
		rc = sb_error_set(err, SB_ERR_IO, "%s: write failed: %s", path, strerror(errno));
		sb_file_out_abort(&o);
		goto out;
	}
	rc = sb_file_out_commit(&o, err);
out:
	free(text);
	json_decref(root);
	free(sizes);
	return rc;
}
