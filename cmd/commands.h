/* commands.h - the subcommands of the seqboat binary (one file each). Each
 * takes the arguments after its name (argv[0] is the subcommand name) and
 * returns the process exit status. */
#ifndef SB_COMMANDS_H
#define SB_COMMANDS_H

int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_complete(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_activations(int argc, char **argv);

int cmd_quantize(int argc, char **argv);

#endif
