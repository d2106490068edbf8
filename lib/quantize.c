/*
 * quantize.c - a copy of a model directory whose weight matrices are
 * stored as F32, F16, BF16 or 8-bit blocks (q8: int8 weights with one F16
 * scale per 32), the fewer bytes each decoded token reads. Vectors stay
 * float32.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

/* The limit on config.yaml and tokenizer files copied along. */
#define COPY_LIMIT ((size_t)64 << 20)

const char *sb_quant_type_name(sb_quant_type t)
{
	switch (t) {
	case SB_QUANT_F32: return "f32";
	case SB_QUANT_F16: return "f16";
	case SB_QUANT_BF16: return "bf16";
	case SB_QUANT_Q8: return "q8";
	}
	return "?";
}

bool sb_quant_type_parse(const char *s, sb_quant_type *t)
{
	for (int i = SB_QUANT_F32; i <= SB_QUANT_Q8; i++)
		if (s && !strcmp(s, sb_quant_type_name((sb_quant_type)i))) {
			*t = (sb_quant_type)i;
			return true;
		}
	return false;
}

/* Names of the tensors that are weight matrices (read by sb_mat). */
static bool is_matrix(const char *name)
{
	static const char *suffixes[] = {"hx_proj.weight", "mx_proj.weight", "h_proj.weight",
	                                 "fc1.weight", "fc2.weight"};
	if (!strcmp(name, "embed_tokens.weight") || !strcmp(name, "output_projection.weight"))
		return true;
	size_t n = strlen(name);
	for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
		size_t k = strlen(suffixes[i]);
		if (n > k && !strcmp(name + n - k, suffixes[i]) && name[n - k - 1] == '.')
			return true;
	}
	return false;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n >= k && !strcmp(s + n - k, suffix);
}

/* The tensor widened to float32 (a q8 matrix is dequantized). */
static float *widen_tensor(const sb_st_file *st, const sb_tensor *t)
{
	float *out = malloc((size_t)t->numel * sizeof(float));
	if (!out)
		return NULL;
	if (t->dtype == SB_DTYPE_I8) {
		char sname[512];
		snprintf(sname, sizeof sname, "%s" SB_Q8_SCALE_SUFFIX, t->name);
		const sb_tensor *sc = sb_st_find(st, sname);
		sb_mat w = {.dtype = SB_DTYPE_I8, .data = t->data, .scales = sc->data,
		            .rows = (int)t->shape[0], .cols = (int)t->shape[1]};
		for (int r = 0; r < w.rows; r++)
			sb_mat_row(&w, r, out + (size_t)r * w.cols);
	} else {
		sb_widen(t->dtype, t->data, out, t->numel);
	}
	return out;
}

static int copy_file(const char *from, const char *to, sb_error *err)
{
	char *buf;
	size_t len;
	int rc = sb_file_read(from, COPY_LIMIT, "a model directory's file", &buf, &len, err);
	if (rc < 0)
		return rc;
	FILE *f = fopen(to, "wb");
	bool ok = f && fwrite(buf, 1, len, f) == len;
	if (f && fclose(f) != 0)
		ok = false;
	free(buf);
	if (!ok)
		return sb_error_set(err, SB_ERR_IO, "%s: cannot write: %s", to, strerror(errno));
	return 0;
}

/* dir/name into buf; false if it does not fit. */
static bool join(char *buf, size_t cap, const char *dir, const char *name)
{
	int n = snprintf(buf, cap, "%s/%s", dir, name);
	return n >= 0 && (size_t)n < cap;
}

typedef struct out_tensor {
	char *name;
	sb_dtype dtype;
	int ndim;
	uint64_t shape[SB_MAX_DIMS];
	void *data;
} out_tensor;

/* Converts one tensor into 1 or 2 output tensors (q8 adds its scales). */
static int convert(const sb_st_file *st, const sb_tensor *t, sb_quant_type type, out_tensor *o,
                   int *n_out)
{
	float *w = widen_tensor(st, t);
	if (!w)
		return -1;
	size_t n = t->numel;
	o[0] = (out_tensor){.name = strdup(t->name), .ndim = t->ndim};
	memcpy(o[0].shape, t->shape, sizeof t->shape);
	*n_out = 1;
	bool mat = is_matrix(t->name) && t->ndim == 2;
	if (!mat || type == SB_QUANT_F32) {
		o[0].dtype = SB_DTYPE_F32;
		o[0].data = w;
		return o[0].name ? 0 : -1;
	}
	if (type == SB_QUANT_F16 || type == SB_QUANT_BF16) {
		uint16_t *h = malloc(n * 2);
		if (!h) {
			free(w);
			return -1;
		}
		bool f16 = type == SB_QUANT_F16;
		for (size_t i = 0; i < n; i++)
			h[i] = f16 ? sb_f32_to_f16(w[i]) : sb_f32_to_bf16(w[i]);
		free(w);
		o[0].dtype = f16 ? SB_DTYPE_F16 : SB_DTYPE_BF16;
		o[0].data = h;
		return o[0].name ? 0 : -1;
	}
	/* q8: per block, scale = absmax / 127 rounded to F16, then
	 * q = round(w / scale) clamped to [-127, 127]. */
	const size_t rows = t->shape[0], cols = t->shape[1];
	const size_t nb = (cols + SB_Q8_BLOCK - 1) / SB_Q8_BLOCK;
	int8_t *q = malloc(n);
	uint16_t *sc = malloc(rows * nb * 2);
	char *sname = malloc(strlen(t->name) + sizeof SB_Q8_SCALE_SUFFIX);
	if (!q || !sc || !sname) {
		free(w);
		free(q);
		free(sc);
		free(sname);
		return -1;
	}
	for (size_t r = 0; r < rows; r++)
		for (size_t b = 0; b < nb; b++) {
			size_t i0 = r * cols + b * SB_Q8_BLOCK;
			size_t end = (b + 1) * SB_Q8_BLOCK < cols ? SB_Q8_BLOCK : cols - b * SB_Q8_BLOCK;
			float amax = 0.0f;
			for (size_t i = 0; i < end; i++)
				amax = fmaxf(amax, fabsf(w[i0 + i]));
			uint16_t hs = sb_f32_to_f16(amax / 127.0f);
			float d = sb_f16_to_f32(hs), inv = d > 0.0f ? 1.0f / d : 0.0f;
			sc[r * nb + b] = hs;
			for (size_t i = 0; i < end; i++) {
				float v = roundf(w[i0 + i] * inv);
				q[i0 + i] = (int8_t)(v > 127.0f ? 127 : v < -127.0f ? -127 : v);
			}
		}
	free(w);
	sprintf(sname, "%s%s", t->name, SB_Q8_SCALE_SUFFIX);
	o[0].dtype = SB_DTYPE_I8;
	o[0].data = q;
	o[1] = (out_tensor){.name = sname, .dtype = SB_DTYPE_F16, .ndim = 2,
	                    .shape = {rows, nb}, .data = sc};
	*n_out = 2;
	return o[0].name ? 0 : -1;
}

int sb_model_quantize(const sb_model *m, const char *outdir, sb_quant_type type, sb_error *err)
{
	if (!outdir || !*outdir)
		return sb_error_set(err, SB_ERR_ARG, "quantize: empty output directory name");
	if (type < SB_QUANT_F32 || type > SB_QUANT_Q8)
		return sb_error_set(err, SB_ERR_ARG, "quantize: unknown weight type %d", (int)type);
	/* lstat: a link, even a dangling one, is something already there. */
	struct stat sbuf;
	if (lstat(outdir, &sbuf) == 0)
		return sb_error_set(err, SB_ERR_ARG, "%s: already exists; choose a new directory",
		                    outdir);
	/* Non-finite weights would be written as they are (or as NaN q8
	 * scales): refused before anything is written. */
	if (sb_model_check_weights(m, err) < 0)
		return err ? err->code : SB_ERR_FORMAT;
	const sb_config *c = &m->cfg;
	const sb_st_file *st = m->st;
	int rc = 0;
	size_t count = sb_st_count(st);
	out_tensor *outs = calloc(2 * count + 1, sizeof *outs);
	sb_st_entry *entries = calloc(2 * count + 1, sizeof *entries);
	size_t n_out = 0;
	char tmp[4096], path[4200], src[4200];
	tmp[0] = 0;
	if (!outs || !entries) {
		rc = sb_error_set(err, SB_ERR_NOMEM, "quantize: out of memory");
		goto out;
	}
	for (size_t i = 0; i < count; i++) {
		const sb_tensor *t = sb_st_tensor_at(st, i);
		if (ends_with(t->name, SB_Q8_SCALE_SUFFIX) || !strcmp(t->name, "version"))
			continue; /* scales are rebuilt with their matrix */
		int k;
		if (convert(st, t, type, outs + n_out, &k) < 0) {
			rc = sb_error_set(err, SB_ERR_NOMEM, "quantize: out of memory converting '%s'",
			                  t->name);
			goto out;
		}
		n_out += (size_t)k;
	}
	for (size_t i = 0; i < n_out; i++)
		entries[i] = (sb_st_entry){.name = outs[i].name, .dtype = outs[i].dtype,
		                           .ndim = outs[i].ndim, .data = outs[i].data};
	for (size_t i = 0; i < n_out; i++)
		memcpy(entries[i].shape, outs[i].shape, sizeof outs[i].shape);

	/* Build the directory under a temporary name, then rename it into
	 * place: an interrupted run leaves no half-written model. */
	if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmpXXXXXX", outdir) >= sizeof tmp) {
		tmp[0] = 0;
		rc = sb_error_set(err, SB_ERR_ARG, "%s: path too long", outdir);
		goto out;
	}
	if (!mkdtemp(tmp)) {
		rc = sb_error_set(err, SB_ERR_IO, "%s: cannot create: %s", outdir, strerror(errno));
		tmp[0] = 0;
		goto out;
	}
	/* mkdtemp makes the directory private; a model directory is not. */
	mode_t mask = umask(0);
	umask(mask);
	chmod(tmp, 0777 & ~mask);
	const char *meta[] = {"format", "pt", "seqboat_quantized", sb_quant_type_name(type), NULL};
	if (!join(path, sizeof path, tmp, "model.safetensors")) {
		rc = sb_error_set(err, SB_ERR_ARG, "%s: path too long", outdir);
		goto out;
	}
	if ((rc = sb_st_write(path, entries, n_out, meta, err)) < 0)
		goto out;
	if (!join(src, sizeof src, m->dir, "config.yaml") ||
	    !join(path, sizeof path, tmp, "config.yaml")) {
		rc = sb_error_set(err, SB_ERR_ARG, "%s: path too long", outdir);
		goto out;
	}
	if ((rc = copy_file(src, path, err)) < 0)
		goto out;
	if (!join(src, sizeof src, m->dir, c->tokenizer_file) ||
	    !join(path, sizeof path, tmp, c->tokenizer_file)) {
		rc = sb_error_set(err, SB_ERR_ARG, "%s: path too long", outdir);
		goto out;
	}
	if (access(src, R_OK) == 0 && (rc = copy_file(src, path, err)) < 0)
		goto out;
	/* The result must load before it takes the final name. */
	sb_model *check = sb_model_load(tmp, err);
	if (!check) {
		rc = err ? err->code : SB_ERR_FORMAT;
		goto out;
	}
	/* A finite F32 weight beyond F16's range became an infinity. */
	sb_error cerr = {0};
	if (sb_model_check_weights(check, &cerr) < 0) {
		const char *what = strstr(cerr.msg, "model.safetensors: ");
		rc = sb_error_set(err, SB_ERR_FORMAT,
		                  "%s: not written: %s after conversion (a weight out of the target type's range)",
		                  outdir, what ? what : cerr.msg);
		sb_model_free(check);
		goto out;
	}
	sb_model_free(check);
	if (rename(tmp, outdir) != 0) {
		rc = sb_error_set(err, SB_ERR_IO, "%s: cannot rename into place: %s", outdir,
		                  strerror(errno));
		goto out;
	}
	tmp[0] = 0;
out:
	if (tmp[0]) {
		/* remove what was written of the temporary directory */
		const char *names[] = {"model.safetensors", "config.yaml", c->tokenizer_file};
		for (size_t i = 0; i < 3; i++)
			if (join(path, sizeof path, tmp, names[i]))
				unlink(path);
		rmdir(tmp);
	}
	for (size_t i = 0; outs && i < n_out; i++) {
		free(outs[i].name);
		free(outs[i].data);
	}
	free(outs);
	free(entries);
	return rc;
}
