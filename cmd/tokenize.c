/* tokenize.c - `seqboat tokenize`: text to token ids with a model's
 * tokenizer, or ids back to text. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "common.h"

static const char usage_text[] =
	"usage: seqboat tokenize [-m DIR] [--byte-symbols auto|on|off] [--no-bos]\n"
	"                        [--pieces] [TEXT | -f FILE]\n"
	"       seqboat tokenize --decode [-m DIR] [--pieces] [IDS... | -f FILE]\n\n"
	"Encodes UTF-8 text (the argument, FILE, or standard input when it is not a\n"
	"terminal; -f - reads a terminal too) with the model's\n"
	"tokenizer and prints the ids on one line, separated by spaces. With --decode,\n"
	"reads token ids (separated by spaces or commas) and prints their text.\n\n"
	"  -m, --model DIR        model directory (default: the bundled model)\n"
	"  -f, --file FILE        read the text or ids from FILE ('-': standard input)\n"
	"  -d, --decode           turn ids into text\n"
	"  -p, --pieces           print one 'id<TAB>piece' line per token instead\n"
	"      --no-bos           do not start the ids with the beginning-of-sequence id\n"
	"      --byte-symbols M   fairseq dictionaries: auto (detect), on or off\n"
	"  -h, --help             show this help\n";

enum { OPT_NO_BOS = 256, OPT_BYTES };

static bool parse_bytes_mode(const char *s, sb_bytes_mode *out)
{
	if (!strcmp(s, "auto"))
		*out = SB_BYTES_AUTO;
	else if (!strcmp(s, "on") || !strcmp(s, "true"))
		*out = SB_BYTES_ON;
	else if (!strcmp(s, "off") || !strcmp(s, "false"))
		*out = SB_BYTES_OFF;
	else
		return false;
	return true;
}

static void print_pieces(const sb_tokenizer *tok, const int32_t *ids, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf("%ld\t%s\n", (long)ids[i], sb_tokenizer_piece(tok, ids[i]));
}

/* The ids of the positional arguments, or of the file (stdin by default). */
static int read_ids(int argc, char **argv, const char *file, int32_t **ids, size_t *n)
{
	if (optind >= argc) {
		char *buf;
		size_t len;
		int rc = cli_read_file(file ? file : "-", CLI_LIMIT_TEXT, "a text file", &buf, &len);
		if (rc)
			return rc;
		rc = cli_parse_ids(file ? file : "standard input", buf, ids, n);
		free(buf);
		return rc;
	}
	int32_t *all = NULL;
	size_t total = 0;
	for (int i = optind; i < argc; i++) {
		int32_t *part;
		size_t k;
		int rc = cli_parse_ids("tokenize", argv[i], &part, &k);
		if (rc) {
			free(all);
			return rc;
		}
		int32_t *grown = realloc(all, (total + k + 1) * sizeof *all);
		if (!grown) {
			free(part);
			free(all);
			cli_error("tokenize: out of memory");
			return CLI_EXIT_SOFTWARE;
		}
		all = grown;
		memcpy(all + total, part, k * sizeof *all);
		total += k;
		free(part);
	}
	*ids = all;
	*n = total;
	return 0;
}

static int run_decode(const sb_tokenizer *tok, const int32_t *ids, size_t n, bool pieces)
{
	sb_error err = {0};
	for (size_t i = 0; i < n; i++) {
		if (ids[i] >= sb_tokenizer_vocab_size(tok)) {
			cli_error("tokenize: token id %ld is out of range (the tokenizer has %d ids)",
			          (long)ids[i], sb_tokenizer_vocab_size(tok));
			return CLI_EXIT_DATA;
		}
	}
	if (pieces) {
		print_pieces(tok, ids, n);
		return 0;
	}
	char *text;
	size_t len;
	if (sb_tokenizer_decode(tok, ids, n, &text, &len, &err))
		return cli_fail(&err);
	fwrite(text, 1, len, stdout);
	/* A terminal gets a final newline; a pipe gets the exact text. */
	if (cli_isatty(stdout) && (len == 0 || text[len - 1] != '\n'))
		putchar('\n');
	free(text);
	return 0;
}

static int run_encode(const sb_tokenizer *tok, const char *text, size_t len,
                      const char *label, bool bos, bool pieces)
{
	sb_error err = {0};
	int32_t *ids;
	size_t n;
	if (sb_tokenizer_encode(tok, text, len, bos, &ids, &n, &err)) {
		sb_error_prefix(&err, label);
		return cli_fail(&err);
	}
	if (pieces) {
		print_pieces(tok, ids, n);
	} else {
		for (size_t i = 0; i < n; i++)
			printf(i ? " %ld" : "%ld", (long)ids[i]);
		putchar('\n');
	}
	free(ids);
	return 0;
}

int cmd_tokenize(int argc, char **argv)
{
	static const struct option opts[] = {
		{"model", required_argument, 0, 'm'},
		{"file", required_argument, 0, 'f'},
		{"decode", no_argument, 0, 'd'},
		{"pieces", no_argument, 0, 'p'},
		{"no-bos", no_argument, 0, OPT_NO_BOS},
		{"byte-symbols", required_argument, 0, OPT_BYTES},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	const char *dir = NULL, *file = NULL;
	bool decode = false, pieces = false, bos = true;
	sb_bytes_mode bytes = SB_BYTES_AUTO;
	int o;
	while ((o = getopt_long(argc, argv, "m:f:dph", opts, NULL)) != -1) {
		switch (o) {
		case 'm': dir = optarg; break;
		case 'f': file = optarg; break;
		case 'd': decode = true; break;
		case 'p': pieces = true; break;
		case OPT_NO_BOS: bos = false; break;
		case OPT_BYTES:
			if (!parse_bytes_mode(optarg, &bytes)) {
				cli_error("--byte-symbols: expected auto, on or off, got '%s'", optarg);
				return CLI_EXIT_USAGE;
			}
			break;
		case 'h': fputs(usage_text, stdout); return 0;
		default: return cli_bad_option("tokenize", argv);
		}
	}
	if (file && optind < argc) {
		cli_error("tokenize: give either -f FILE or an argument, not both");
		return CLI_EXIT_USAGE;
	}
	if (!decode && argc - optind > 1) {
		cli_error("tokenize: expected one TEXT argument, got %d (quote the text)",
		          argc - optind);
		return CLI_EXIT_USAGE;
	}

	/* Nothing given and a terminal on standard input: say what is
	 * expected instead of waiting silently (as complete does). "-f -"
	 * asks for the terminal on purpose: then say how to end the text. */
	if (optind >= argc && cli_isatty(stdin)) {
		if (!file) {
			cli_error(decode ? "tokenize: no ids (give IDS..., -f FILE, or pipe them in; "
			                   "-f - reads the terminal)"
			                 : "tokenize: no text (give TEXT, -f FILE, or pipe it in; "
			                   "-f - reads the terminal)");
			return CLI_EXIT_USAGE;
		}
		if (!strcmp(file, "-"))
			fprintf(stderr, "tokenize: reading %s from the terminal; end it with Ctrl-D\n",
			        decode ? "ids" : "text");
	}

	sb_model *m;
	sb_tokenizer *tok;
	int rc = cli_load_model(dir, &m, &tok, bytes);
	if (rc)
		return rc;
	if (decode) {
		int32_t *ids = NULL;
		size_t n = 0;
		rc = read_ids(argc, argv, file, &ids, &n);
		if (!rc)
			rc = run_decode(tok, ids, n, pieces);
		free(ids);
	} else if (optind < argc) {
		rc = run_encode(tok, argv[optind], strlen(argv[optind]), "argument", bos, pieces);
	} else {
		char *buf;
		size_t len;
		rc = cli_read_file(file ? file : "-", CLI_LIMIT_TEXT, "a text file", &buf, &len);
		if (!rc) {
			rc = run_encode(tok, buf, len, file && strcmp(file, "-") ? file : "standard input",
			                bos, pieces);
			free(buf);
		}
	}
	if (fflush(stdout) != 0 || ferror(stdout)) {
		cli_error("tokenize: cannot write to standard output: %s", strerror(errno));
		if (!rc)
			rc = CLI_EXIT_IO;
	}
	sb_tokenizer_free(tok);
	sb_model_free(m);
	return rc;
}
