#include "commands.h"
#include "common.h"
int cmd_tokenize(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	cli_error("not implemented yet");
	return 1;
}
