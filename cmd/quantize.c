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
	sb_quant_type qt;
	if (!sb_quant_type_parse(type, &qt)) {
		cli_error("--type: expected q8, f16, bf16 or f32, got '%s'", type);
		return CLI_EXIT_USAGE;
	}
	if (!*outdir) {
		cli_error("quantize: -o: empty directory name");
		return CLI_EXIT_USAGE;
	}
	/* lstat: a link, even a dangling one, is something already there
	 * (checked before the model is loaded; sb_model_quantize checks too). */
	struct stat sbuf;
	if (lstat(outdir, &sbuf) == 0) {
		cli_error("%s: already exists; choose a new directory", outdir);
		return CLI_EXIT_USAGE;
	}
	sb_model *m;
	int rc = cli_load_model(dir, &m, NULL, SB_BYTES_AUTO);
	if (rc)
		return rc;
	sb_error err = {0};
	if (sb_model_quantize(m, outdir, qt, &err) < 0) {
		rc = cli_fail(&err);
		sb_model_free(m);
		return rc;
	}
	sb_model *out = sb_model_load(outdir, &err);
	if (out) {
		fprintf(stderr, "seqboat: %s: %llu parameters, weights %zu bytes (was %zu)\n", outdir,
		        (unsigned long long)sb_model_n_params(out), sb_model_file_bytes(out),
		        sb_model_file_bytes(m));
		sb_model_free(out);
	}
	sb_model_free(m);
	return 0;
}
