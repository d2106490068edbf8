/* main.c - global flags, the command table and dispatch. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "common.h"
#include "seqboat.h"

static const struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
} commands[] = {
	{"info", cmd_info, "show a model's architecture, sizes and state bytes"},
	{"tokenize", cmd_tokenize, "turn text into token ids, or ids into text"},
	{"quantize", cmd_quantize, "store a model's weights as q8, f16, bf16 or f32"},
	{"logits", cmd_logits, "write logits and router decisions for token ids"},
	{"complete", cmd_complete, "complete prompts from flags, a file or stdin (text or JSONL)"},
	{"merge", cmd_merge, "join the outputs of complete --shard runs in input order"},
	{"chat", cmd_chat, "talk with a model (line editing, /undo, /save, /load)"},
	{"serve", cmd_serve, "an OpenAI-compatible HTTP server whose conversations resume in O(1)"},
	{"bench", cmd_bench, "measure prefill and generation speed and memory at any depth"},
	{"perplexity", cmd_perplexity, "score a text: mean NLL, perplexity, bits per token and per byte"},
	{"activations", cmd_activations, "draw which tokens each layer's router activated (HTML or SVG)"},
};

#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *out)
{
	fprintf(out,
	        "usage: seqboat <command> [options]\n"
	        "       seqboat help [COMMAND] | --help | --version\n\n"
	        "Runs SeqBoat language models with a constant-size state per sequence.\n\n"
	        "commands:\n");
	for (size_t i = 0; i < N_COMMANDS; i++)
		fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
	fprintf(out, "\n'seqboat help <command>' (or 'seqboat <command> -h') describes a command's\noptions and their defaults.\n"
	             "Without -m, commands use the bundled model (%s).\n",
	        cli_default_model_dir());
}

int main(int argc, char **argv)
{
	cli_init(argc, argv);
	opterr = 0; /* commands report bad options in one line of their own */
	if (argc < 2) {
		usage(stderr);
		return CLI_EXIT_USAGE;
	}
	const char *name = argv[1];
	if (!strcmp(name, "help") && argc > 2) {
		/* seqboat help CMD = seqboat CMD --help */
		for (size_t i = 0; i < N_COMMANDS; i++)
			if (!strcmp(argv[2], commands[i].name)) {
				char *args[] = {argv[2], "--help", NULL};
				return commands[i].fn(2, args);
			}
		cli_error("help: unknown command '%s' (see 'seqboat --help')", argv[2]);
		return CLI_EXIT_USAGE;
	}
	if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(name, "--version") || !strcmp(name, "-V")) {
		printf("seqboat %s\n", SB_VERSION);
		return 0;
	}
	for (size_t i = 0; i < N_COMMANDS; i++)
		if (!strcmp(name, commands[i].name))
			return commands[i].fn(argc - 1, argv + 1);
	cli_error("unknown command '%s' (see 'seqboat --help')", name);
	return CLI_EXIT_USAGE;
}
