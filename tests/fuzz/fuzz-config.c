/*
 * fuzz-config.c - the config.yaml reader (sb_config_parse) on any bytes: a
 * refusal is one line; an accepted config keeps its documented ranges and
 * survives sb_config_to_yaml and back unchanged.
 */
#include <string.h>

#include "fuzz.h"
#include "seqboat.h"

static void check_str(const char *s)
{
	fuzz_check(memchr(s, 0, SB_CONFIG_STR) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	sb_error err = {0};
	sb_config cfg, again;
	memset(&cfg, 0, sizeof cfg);
	memset(&again, 0, sizeof again);
	if (sb_config_parse((const char *)data, size, "fuzz.yaml", &cfg, &err) < 0) {
		fuzz_check(err.code < 0 && err.msg[0]);
		fuzz_check(!strchr(err.msg, '\n'));
		return 0;
	}
	fuzz_check(cfg.vocab_size >= 1 && cfg.embed_dim >= 1 && cfg.z_dim >= 1 &&
	           cfg.z_dim % 2 == 0 && cfg.hidden_dim >= 1 && cfg.n_dim >= 1 &&
	           cfg.layers >= 1 && cfg.window >= 1 && cfg.ffn_dim >= 0);
	fuzz_check(cfg.bos_id >= -1 && cfg.bos_id < cfg.vocab_size);
	fuzz_check(cfg.eos_id >= -1 && cfg.eos_id < cfg.vocab_size);
	fuzz_check(cfg.pad_id >= -1 && cfg.pad_id < cfg.vocab_size);
	fuzz_check(cfg.unk_id >= -1 && cfg.unk_id < cfg.vocab_size);
	check_str(cfg.tokenizer_file);
	fuzz_check(!strstr(cfg.tokenizer_file, "..") && !strchr(cfg.tokenizer_file, '/'));
	check_str(cfg.name);
	check_str(cfg.chat_user_prefix);

	char *yaml = sb_config_to_yaml(&cfg, &err);
	fuzz_check(yaml != NULL);
	int rc = sb_config_parse(yaml, strlen(yaml), "fuzz.yaml (written)", &again, &err);
	if (rc < 0)
		fprintf(stderr, "written config refused: %s\n%s", err.msg, yaml);
	fuzz_check(rc == 0);
	fuzz_check(memcmp(&cfg, &again, sizeof cfg) == 0);
	free(yaml);
	return 0;
}
