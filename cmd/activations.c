/* activations.c - `seqboat activations`: which tokens of a text each
 * layer's router sent to attention, drawn as the paper's figure of learned
 * activation patterns: the text once per layer, activated tokens
 * highlighted, with each layer's activation rate. Writes a self-contained
 * HTML page (no scripts, fonts or links to fetch) or an SVG picture. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "common.h"
#include "report.h"

static const char usage_text[] =
	"usage: seqboat activations [-m DIR] (-p TEXT | -f FILE | --ids \"ID ...\")\n"
	"                           [-o FILE] [--format html|svg] [--no-bos]\n"
	"                           [--act-bias X] [-t N] [--device D]\n\n"
	"Reads a text and shows, for every layer, which of its tokens the router\n"
	"activated (sent to the gated attention over the window), and each layer's\n"
	"activation rate. The page is self-contained: it opens in any browser.\n\n"
	"  -m, --model DIR     model directory (default: the bundled model)\n"
	"  -p, --prompt TEXT   the text\n"
	"  -f, --file FILE     read the text from FILE ('-': standard input)\n"
	"      --ids IDS       token ids instead of a text, read as given (no\n"
	"                      beginning-of-sequence id is added)\n"
	"  -o, --output FILE   write the page to FILE, atomically (default: stdout)\n"
	"      --format F      html or svg (default: svg if FILE ends in .svg, else html)\n"
	"      --no-bos        do not start the text with the beginning-of-sequence id\n"
	"      --act-bias X    shift the routers: positive = fewer activations (default 0)\n"
	"  -t, --threads N     threads (default and 0: all cores; more than the cores\n"
	"                      are lowered to their number, with a warning)\n"
	"      --device D      compute on D: cpu (default), or cuda / cuda:N where\n"
	"                      this build has the CUDA backend\n"
	"  -h, --help          show this help\n";

enum { OPT_IDS = 256, OPT_FORMAT, OPT_NO_BOS, OPT_ACT_BIAS, OPT_DEVICE };

/* What each token shows: its text, or (for control ids and bytes that do
 * not complete a character yet) its piece, drawn as special. */
typedef struct act_token {
	char *text;              /* malloc'd, NUL-terminated */
	bool special;
} act_token;

typedef struct act_page {
	const sb_model *m;
	const int32_t *ids;      /* (T) */
	act_token *tok;          /* (T) */
	const uint8_t *act;      /* (L, T) */
	size_t T, L;
	float act_bias;
} act_page;

static char *dup_n(const char *s, size_t n)
{
	char *p = malloc(n + 1);
	if (p) {
		memcpy(p, s, n);
		p[n] = 0;
	}
	return p;
}

/* The display text of every token, through the streaming decoder so that
 * a character split over several byte tokens shows at the token that
 * completes it. Without a tokenizer the ids are shown. */
static int token_texts(const sb_tokenizer *tk, const int32_t *ids, size_t T, act_token *out,
                       sb_error *err)
{
	sb_detok *d = NULL;
	if (tk && !(d = sb_detok_new(tk, err)))
		return err->code;
	int rc = 0;
	for (size_t t = 0; t < T && rc == 0; t++) {
		const char *s = "";
		size_t n = 0;
		if (d && (rc = sb_detok_push(d, ids[t], &s, &n, err)) < 0)
			break;
		char buf[32];
		if (n == 0) {
			const char *piece = tk ? sb_tokenizer_piece(tk, ids[t]) : NULL;
			if (!piece) {
				snprintf(buf, sizeof buf, "#%d", (int)ids[t]);
				piece = buf;
			}
			s = piece;
			n = strlen(piece);
			out[t].special = true;
		}
		if (!(out[t].text = dup_n(s, n)))
			rc = sb_error_set(err, SB_ERR_NOMEM, "out of memory");
	}
	sb_detok_free(d);
	return rc;
}

static double layer_rate(const act_page *p, size_t l, size_t *n_on)
{
	size_t k = 0;
	for (size_t t = 0; t < p->T; t++)
		k += p->act[l * p->T + t] != 0;
	*n_on = k;
	return p->T ? (double)k / (double)p->T : 0.0;
}

/* ------------------------------------------------------------------ html */

static void html_token_text(FILE *f, const char *s)
{
	for (const char *q = s; *q;) {
		size_t run = strcspn(q, "\n\r");
		cli_xml_escape(f, q, run);
		q += run;
		if (*q == '\n')
			fputs("\xe2\x86\xb5\n", f);      /* U+21B5 and the break itself */
		else if (*q == '\r')
			fputs("\xe2\x90\x8d", f);        /* U+240D */
		if (*q)
			q++;
	}
}

static void write_html(FILE *f, const act_page *p)
{
	const sb_config *c = sb_model_config(p->m);
	const char *name = c->name[0] ? c->name : sb_model_dir(p->m);
	fputs("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
	      "<title>seqboat activations: ", f);
	cli_xml_escape(f, name, strlen(name));
	fputs("</title>\n<style>\n"
	      "body{font-family:sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}\n"
	      "h1{font-size:20px}\n"
	      "p.note{color:#555;font-size:14px}\n"
	      "table.rates{border-collapse:collapse;font-size:13px;margin:12px 0 24px}\n"
	      "table.rates td,table.rates th{padding:3px 10px;text-align:right}\n"
	      "table.rates td.strip{text-align:left}\n"
	      ".bar{display:inline-block;height:10px;background:#e69138;vertical-align:middle}\n"
	      ".barbg{display:inline-block;width:160px;height:10px;background:#eee;vertical-align:middle}\n"
	      ".layer{margin:18px 0;border-top:1px solid #ddd;padding-top:8px}\n"
	      ".lh{font-weight:bold;font-size:14px;margin-bottom:6px}\n"
	      ".txt{font-family:monospace;font-size:14px;white-space:pre-wrap;line-height:1.9;word-break:break-all}\n"
	      ".txt span{padding:2px 0;border-radius:2px}\n"
	      ".txt span.on{background:#f9cb9c;box-shadow:inset 0 -2px 0 #e69138}\n"
	      ".txt span.sp{color:#999;font-size:11px}\n"
	      "</style>\n</head>\n<body>\n<h1>Router activations</h1>\n<p class=\"note\">model ", f);
	cli_xml_escape(f, name, strlen(name));
	fprintf(f, ": %zu token%s, %zu layer%s, attention window %d activated tokens, router bias %g.<br>\n"
	           "A highlighted token is one its layer's router activated: that layer's gated "
	           "attention read it (and it joined the window); the others passed through the "
	           "EMA only. Hover over a token for its position and id.</p>\n",
	        p->T, p->T == 1 ? "" : "s", p->L, p->L == 1 ? "" : "s", c->window,
	        (double)p->act_bias);

	fputs("<table class=\"rates\">\n<tr><th>layer</th><th>activated</th><th>rate</th><th></th>"
	      "<th style=\"text-align:left\">where (token 0 at the left)</th></tr>\n", f);
	const double strip_w = 600.0, cell = p->T ? strip_w / (double)p->T : 0;
	for (size_t l = 0; l < p->L; l++) {
		size_t on;
		double r = layer_rate(p, l, &on);
		fprintf(f, "<tr><td>%zu</td><td>%zu / %zu</td><td>%.1f%%</td>"
		           "<td><span class=\"barbg\"><span class=\"bar\" style=\"width:%.1fpx\"></span></span></td>"
		           "<td class=\"strip\"><svg width=\"%.0f\" height=\"12\" role=\"img\">"
		           "<rect width=\"%.0f\" height=\"12\" fill=\"#eee\"/>",
		        l, on, p->T, 100 * r, 160 * r, strip_w, strip_w);
		for (size_t t = 0; t < p->T; t++)
			if (p->act[l * p->T + t])
				fprintf(f, "<rect x=\"%.2f\" width=\"%.2f\" height=\"12\" fill=\"#e69138\"/>",
				        cell * (double)t, cell > 1 ? cell : 1.0);
		fputs("</svg></td></tr>\n", f);
	}
	fputs("</table>\n", f);

	for (size_t l = 0; l < p->L; l++) {
		size_t on;
		double r = layer_rate(p, l, &on);
		fprintf(f, "<div class=\"layer\">\n<div class=\"lh\">layer %zu: %.1f%% activated "
		           "(%zu of %zu tokens)</div>\n<div class=\"txt\">", l, 100 * r, on, p->T);
		for (size_t t = 0; t < p->T; t++) {
			const act_token *k = &p->tok[t];
			bool a = p->act[l * p->T + t] != 0;
			fprintf(f, "<span%s%s%s title=\"token %zu, id %d%s\">", a || k->special ? " class=\"" : "",
			        a ? (k->special ? "on sp" : "on") : k->special ? "sp" : "",
			        a || k->special ? "\"" : "", t, (int)p->ids[t], a ? ", activated" : "");
			html_token_text(f, k->text);
			fputs("</span>", f);
		}
		fputs("</div>\n</div>\n", f);
	}
	fputs("</body>\n</html>\n", f);
}

/* ------------------------------------------------------------------- svg */

#define SVG_W 1000
#define SVG_LEFT 20
#define SVG_CHAR_W 7.8     /* advance of a 13px monospace character */
#define SVG_LINE_H 20
#define SVG_HEAD_H 26

/* Columns a string takes in a monospace font: East Asian wide characters
 * take two. */
static size_t columns(const char *s)
{
	size_t n = 0;
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; u[i];) {
		uint32_t cp = u[i];
		size_t len = u[i] < 0x80 ? 1 : u[i] < 0xe0 ? 2 : u[i] < 0xf0 ? 3 : 4;
		for (size_t k = 1; k < len && u[i + k]; k++)
			cp = cp << 6 | (u[i + k] & 0x3f);
		if (len == 3)
			cp &= 0xffff;
		n += (len >= 3 && cp >= 0x2e80) ? 2 : 1;
		i += len;
		while (u[i] && (u[i] & 0xc0) == 0x80)
			i++;
	}
	return n;
}

/* What a token shows in SVG, which has no line breaks of its own: a
 * newline is drawn as U+21B5 and ends the line (*newline). malloc'd. */
static char *svg_label(const char *s, bool *newline)
{
	size_t n = strlen(s);
	char *out = malloc(3 * n + 1), *o = out;
	*newline = false;
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\n') {
			memcpy(o, "\xe2\x86\xb5", 3);
			o += 3;
			*newline = true;
		} else if (s[i] == '\t') {
			memcpy(o, "\xe2\x86\x92", 3);
			o += 3;
		} else if (s[i] == '\r') {
			memcpy(o, "\xe2\x90\x8d", 3);
			o += 3;
		} else {
			*o++ = s[i];
		}
	}
	*o = 0;
	return out;
}

static int write_svg(FILE *f, const act_page *p)
{
	const sb_config *c = sb_model_config(p->m);
	const char *name = c->name[0] ? c->name : sb_model_dir(p->m);
	/* One layout of the text, the same in every layer's block. */
	double *x = malloc(p->T * sizeof *x), *w = malloc(p->T * sizeof *w);
	size_t *line = malloc(p->T * sizeof *line);
	char **label = calloc(p->T, sizeof *label);
	int rc = 0;
	if (!x || !w || !line || !label) {
		rc = SB_ERR_NOMEM;
		goto out;
	}
	double cx = SVG_LEFT;
	size_t ln = 0;
	for (size_t t = 0; t < p->T; t++) {
		bool nl;
		if (!(label[t] = svg_label(p->tok[t].text, &nl))) {
			rc = SB_ERR_NOMEM;
			goto out;
		}
		w[t] = (double)columns(label[t]) * SVG_CHAR_W;
		if (w[t] < SVG_CHAR_W / 2)
			w[t] = SVG_CHAR_W / 2;
		if (cx + w[t] > SVG_W - SVG_LEFT && cx > SVG_LEFT) {
			cx = SVG_LEFT;
			ln++;
		}
		x[t] = cx;
		line[t] = ln;
		cx += w[t];
		if (nl) {
			cx = SVG_LEFT;
			ln++;
		}
	}
	const size_t n_lines = p->T ? line[p->T - 1] + 1 : 1;
	const double block_h = SVG_HEAD_H + (double)n_lines * SVG_LINE_H + 14;
	const double top = 70;
	const int H = (int)(top + block_h * (double)p->L + 10);
	fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	           "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
	           "font-family=\"sans-serif\" font-size=\"13\">\n"
	           "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
	           "<text x=\"%d\" y=\"26\" font-size=\"18\" font-weight=\"bold\">Router activations: ",
	        SVG_W, H, SVG_W, H, SVG_LEFT);
	cli_xml_escape(f, name, strlen(name));
	fprintf(f, "</text>\n<text x=\"%d\" y=\"48\" fill=\"#555\">%zu token%s, %zu layer%s, window %d, "
	           "router bias %g; highlighted: activated (read by the layer's attention)</text>\n",
	        SVG_LEFT, p->T, p->T == 1 ? "" : "s", p->L, p->L == 1 ? "" : "s", c->window,
	        (double)p->act_bias);
	for (size_t l = 0; l < p->L; l++) {
		size_t on;
		double r = layer_rate(p, l, &on);
		double y0 = top + block_h * (double)l;
		fprintf(f, "<g>\n<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n"
		           "<text x=\"%d\" y=\"%.1f\" font-weight=\"bold\">layer %zu: %.1f%% activated (%zu of %zu)</text>\n"
		           "<rect x=\"%d\" y=\"%.1f\" width=\"160\" height=\"9\" fill=\"#eee\"/>"
		           "<rect x=\"%d\" y=\"%.1f\" width=\"%.1f\" height=\"9\" fill=\"#e69138\"/>\n",
		        SVG_LEFT, y0, SVG_W - SVG_LEFT, y0, SVG_LEFT, y0 + 18, l, 100 * r, on, p->T,
		        SVG_W - SVG_LEFT - 160, y0 + 9, SVG_W - SVG_LEFT - 160, y0 + 9, 160 * r);
		for (size_t t = 0; t < p->T; t++) {
			double ty = y0 + SVG_HEAD_H + (double)line[t] * SVG_LINE_H;
			bool a = p->act[l * p->T + t] != 0;
			if (a)
				fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%d\" rx=\"2\" "
				           "fill=\"#f9cb9c\" stroke=\"#e69138\" stroke-width=\"0.8\"/>\n",
				        x[t], ty, w[t], SVG_LINE_H - 3);
			fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-family=\"monospace\" "
			           "style=\"white-space:pre\" xml:space=\"preserve\"%s><title>token %zu, id %d</title>",
			        x[t], ty + 13, p->tok[t].special ? " fill=\"#999\"" : "", t, (int)p->ids[t]);
			cli_xml_escape(f, label[t], strlen(label[t]));
			fputs("</text>\n", f);
		}
		fputs("</g>\n", f);
	}
	fputs("</svg>\n", f);
out:
	for (size_t t = 0; label && t < p->T; t++)
		free(label[t]);
	free(label);
	free(x);
	free(w);
	free(line);
	return rc;
}

/* ------------------------------------------------------------------ main */

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n >= k && !strcmp(s + n - k, suffix);
}

int cmd_activations(int argc, char **argv)
{
	static const struct option opts[] = {
		{"model", required_argument, 0, 'm'},
		{"prompt", required_argument, 0, 'p'},
		{"file", required_argument, 0, 'f'},
		{"ids", required_argument, 0, OPT_IDS},
		{"output", required_argument, 0, 'o'},
		{"format", required_argument, 0, OPT_FORMAT},
		{"no-bos", no_argument, 0, OPT_NO_BOS},
		{"act-bias", required_argument, 0, OPT_ACT_BIAS},
		{"threads", required_argument, 0, 't'},
		{"device", required_argument, 0, OPT_DEVICE},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	const char *dir = NULL, *prompt = NULL, *file = NULL, *ids_arg = NULL, *outp = "-",
	           *format = NULL;
	bool bos = true;
	float act_bias = 0.0f;
	int threads = 0, o;
	const char *device = NULL;
	while ((o = getopt_long(argc, argv, "m:p:f:o:t:h", opts, NULL)) != -1) {
		switch (o) {
		case 'm': dir = optarg; break;
		case 'p': prompt = optarg; break;
		case 'f': file = optarg; break;
		case OPT_IDS: ids_arg = optarg; break;
		case 'o': outp = optarg; break;
		case OPT_FORMAT:
			if (strcmp(optarg, "html") && strcmp(optarg, "svg")) {
				cli_error("--format: expected html or svg, got '%s'", optarg);
				return CLI_EXIT_USAGE;
			}
			format = optarg;
			break;
		case OPT_NO_BOS: bos = false; break;
		case OPT_ACT_BIAS:
			if (!cli_parse_act_bias(optarg, &act_bias))
				return CLI_EXIT_USAGE;
			break;
		case 't':
			if (!cli_parse_threads(optarg, &threads))
				return CLI_EXIT_USAGE;
			break;
		case OPT_DEVICE: device = optarg; break;
		case 'h': fputs(usage_text, stdout); return 0;
		default: return cli_bad_option("activations", argv);
		}
	}
	if (cli_no_operands("activations", argc, argv))
		return CLI_EXIT_USAGE;
	if ((prompt != NULL) + (file != NULL) + (ids_arg != NULL) != 1) {
		cli_error("activations: give exactly one of -p TEXT, -f FILE and --ids "
		          "(see 'seqboat activations --help')");
		return CLI_EXIT_USAGE;
	}
	bool svg = format ? !strcmp(format, "svg") : ends_with(outp, ".svg");

	sb_model *m = NULL;
	sb_tokenizer *tk = NULL;
	sb_ctx *ctx = NULL;
	sb_state *st = NULL;
	char *text = NULL;
	int32_t *ids = NULL;
	uint8_t *act = NULL;
	act_page page = {0};
	cli_outfile out = {0};
	size_t T = 0, len = 0;
	sb_error err = {0};
	int rc;
	if (ids_arg && (rc = cli_parse_ids("--ids", ids_arg, &ids, &T)))
		goto out;
	if (file && (rc = cli_read_file(file, CLI_LIMIT_TEXT, "a text file", &text, &len)))
		goto out;
	if ((rc = cli_load_model(dir, &m, NULL, SB_BYTES_AUTO)))
		goto out;
	/* With --ids the page can still be drawn without a tokenizer (ids
	 * stand in for text); a text needs one. */
	if (!(tk = sb_tokenizer_load_for_model(m, SB_BYTES_AUTO, &err)) && !ids_arg) {
		rc = cli_fail(&err);
		goto out;
	}
	if (!ids_arg) {
		const char *s = prompt ? prompt : text;
		size_t n = prompt ? strlen(prompt) : len;
		if (sb_tokenizer_encode(tk, s, n, bos, &ids, &T, &err) < 0) {
			sb_error_prefix(&err, prompt ? "--prompt" : file);
			rc = cli_fail(&err);
			goto out;
		}
	}
	if (T == 0) {
		cli_error("activations: the input has no tokens");
		rc = CLI_EXIT_DATA;
		goto out;
	}
	const size_t L = (size_t)sb_model_config(m)->layers;
	size_t na;
	if (!sb_size_mul(L, T, &na) || !(act = calloc(na, 1)) ||
	    !(page.tok = calloc(T, sizeof *page.tok))) {
		cli_error("activations: out of memory for %zu tokens", T);
		rc = CLI_EXIT_SOFTWARE;
		goto out;
	}
	sb_ctx_params cp = sb_ctx_default_params();
	cp.n_threads = threads;
	cp.act_bias = act_bias;
	cp.device = device;
	if (!(ctx = sb_ctx_new(m, &cp, &err)) || !(st = sb_ctx_state_new(ctx, &err))) {
		rc = cli_fail(&err);
		goto out;
	}
	sb_outputs outs = {.act = act, .stride = T};
	if (sb_prefill(ctx, st, ids, T, &outs, &err) < 0) {
		if (ids_arg)
			sb_error_prefix(&err, "--ids");
		rc = cli_fail(&err);
		goto out;
	}
	if (token_texts(tk, ids, T, page.tok, &err) < 0) {
		rc = cli_fail(&err);
		goto out;
	}
	page.m = m;
	page.ids = ids;
	page.act = act;
	page.T = T;
	page.L = L;
	page.act_bias = act_bias;
	if ((rc = cli_outfile_open(&out, outp)))
		goto out;
	if (svg) {
		if (write_svg(out.f, &page) < 0) {
			cli_error("activations: out of memory drawing %zu tokens", T);
			rc = CLI_EXIT_SOFTWARE;
			goto out;
		}
	} else {
		write_html(out.f, &page);
	}
	rc = cli_outfile_commit(&out);
out:
	if (rc)
		cli_outfile_abort(&out);
	for (size_t t = 0; page.tok && t < T; t++)
		free(page.tok[t].text);
	free(page.tok);
	free(act);
	free(ids);
	free(text);
	sb_state_free(st);
	sb_ctx_free(ctx);
	sb_tokenizer_free(tk);
	sb_model_free(m);
	return rc;
}
