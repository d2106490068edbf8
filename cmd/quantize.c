/* quantize.c - `seqboat quantize`: rewrite a model's weight matrices as
 * F32, F16, BF16 or 8-bit blocks (q8: int8 weights with one F16 scale per
 * 32), the fewer bytes each decoded token reads. Vectors stay float32. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include "common.h"
#include "internal.h"

static const char usage_text[] =
	"usage: seqboat quantize [-m DIR] -o OUTDIR --type q8|f16|bf16|f32\n\n"
	"Writes a copy of the model whose weight matrices are stored in another\n"
	"format. q8 keeps each weight as an 8-bit integer with one F16 scale per\n"
	"block of 32 (about 1.06 bytes per weight); norms, EMA parameters and biases\n"
	"stay float32. The config and tokenizer files are copied unchanged.\n\n"
	"  -m, --model DIR    the model to convert (default: the bundled model)\n"
	"  -o, --output DIR   the new model directory (must not exist)\n"
	"      --type TYPE    q8, f16, bf16 or f32\n"
	"  -h, --help         show this help\n";

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

static int copy_file(const char *from, const char *to)
{
	char *buf;
	size_t len;
	int rc = cli_read_file(from, CLI_LIMIT_MODEL_FILE, "a model directory's file", &buf, &len);
	if (rc)
		return rc;
	FILE *f = fopen(to, "wb");
	if (!f || fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
		cli_error("%s: cannot write: %s", to, strerror(errno));
		free(buf);
		return CLI_EXIT_IO;
	}
	free(buf);
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
static int convert(const sb_st_file *st, const sb_tensor *t, const char *type, out_tensor *o,
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
	if (!mat || !strcmp(type, "f32")) {
		o[0].dtype = SB_DTYPE_F32;
		o[0].data = w;
		return o[0].name ? 0 : -1;
	}
	if (!strcmp(type, "f16") || !strcmp(type, "bf16")) {
		uint16_t *h = malloc(n * 2);
		if (!h) {
			free(w);
			return -1;
		}
		bool f16 = !strcmp(type, "f16");
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

int cmd_quantize(int argc, char **argv)
{
	static const struct option opts[] = {
		{"model", required_argument, 0, 'm'},
		{"output", required_argument, 0, 'o'},
		{"type", required_argument, 0, 'T'},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	const char *dir = NULL, *outdir = NULL, *type = NULL;
	int o;
	while ((o = getopt_long(argc, argv, "m:o:h", opts, NULL)) != -1) {
		switch (o) {
		case 'm': dir = optarg; break;
		case 'o': outdir = optarg; break;
		case 'T': type = optarg; break;
		case 'h': fputs(usage_text, stdout); return 0;
		default: return cli_bad_option("quantize", argv);
		}
	}
	if (cli_no_operands("quantize", argc, argv))
		return CLI_EXIT_USAGE;
	if (!outdir || !type) {
		cli_error("quantize: -o and --type are required (see 'seqboat quantize --help')");
		return CLI_EXIT_USAGE;
	}
	if (strcmp(type, "q8") && strcmp(type, "f16") && strcmp(type, "bf16") && strcmp(type, "f32")) {
		cli_error("--type: expected q8, f16, bf16 or f32, got '%s'", type);
		return CLI_EXIT_USAGE;
	}
	if (!*outdir) {
		cli_error("quantize: -o: empty directory name");
		return CLI_EXIT_USAGE;
	}
	/* lstat: a link, even a dangling one, is something already there. */
	struct stat sbuf;
	if (lstat(outdir, &sbuf) == 0) {
		cli_error("%s: already exists; choose a new directory", outdir);
		return CLI_EXIT_USAGE;
	}
	sb_model *m;
	int rc = cli_load_model(dir, &m, NULL, SB_BYTES_AUTO);
	if (rc)
		return rc;
	const sb_config *c = sb_model_config(m);
	const sb_st_file *st = m->st;
	sb_error err = {0};
	size_t count = sb_st_count(st);
	out_tensor *outs = calloc(2 * count + 1, sizeof *outs);
	sb_st_entry *entries = calloc(2 * count + 1, sizeof *entries);
	size_t n_out = 0;
	char tmp[4096], path[4200], src[4200];
	tmp[0] = 0;
	if (!outs || !entries) {
		cli_error("quantize: out of memory");
		rc = CLI_EXIT_SOFTWARE;
		goto out;
	}
	for (size_t i = 0; i < count; i++) {
		const sb_tensor *t = sb_st_tensor_at(st, i);
		if (ends_with(t->name, SB_Q8_SCALE_SUFFIX) || !strcmp(t->name, "version"))
			continue; /* scales are rebuilt with their matrix */
		int k;
		if (convert(st, t, type, outs + n_out, &k) < 0) {
			cli_error("quantize: out of memory converting '%s'", t->name);
			rc = CLI_EXIT_SOFTWARE;
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
	snprintf(tmp, sizeof tmp, "%s.tmpXXXXXX", outdir);
	if (!mkdtemp(tmp)) {
		cli_error("%s: cannot create: %s", outdir, strerror(errno));
		tmp[0] = 0;
		rc = CLI_EXIT_IO;
		goto out;
	}
	/* mkdtemp makes the directory private; a model directory is not. */
	mode_t mask = umask(0);
	umask(mask);
	chmod(tmp, 0777 & ~mask);
	const char *meta[] = {"format", "pt", "seqboat_quantized", type, NULL};
	if (!join(path, sizeof path, tmp, "model.safetensors")) {
		cli_error("%s: path too long", outdir);
		rc = CLI_EXIT_USAGE;
		goto out;
	}
	if (sb_st_write(path, entries, n_out, meta, &err) < 0) {
		rc = cli_fail(&err);
		goto out;
	}
	if (!join(src, sizeof src, sb_model_dir(m), "config.yaml") ||
	    !join(path, sizeof path, tmp, "config.yaml")) {
		cli_error("%s: path too long", outdir);
		rc = CLI_EXIT_USAGE;
		goto out;
	}
	if ((rc = copy_file(src, path)))
		goto out;
	if (!join(src, sizeof src, sb_model_dir(m), c->tokenizer_file) ||
	    !join(path, sizeof path, tmp, c->tokenizer_file)) {
		cli_error("%s: path too long", outdir);
		rc = CLI_EXIT_USAGE;
		goto out;
	}
	if (access(src, R_OK) == 0 && (rc = copy_file(src, path)))
		goto out;
	/* The result must load before it takes the final name. */
	sb_model *check = sb_model_load(tmp, &err);
	if (!check) {
		rc = cli_fail(&err);
		goto out;
	}
	fprintf(stderr, "seqboat: %s: %llu parameters, weights %zu bytes (was %zu)\n", outdir,
	        (unsigned long long)sb_model_n_params(check), sb_model_file_bytes(check),
	        sb_model_file_bytes(m));
	sb_model_free(check);
	if (rename(tmp, outdir) != 0) {
		cli_error("%s: cannot rename into place: %s", outdir, strerror(errno));
		rc = CLI_EXIT_IO;
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
	sb_model_free(m);
	return rc;
}
