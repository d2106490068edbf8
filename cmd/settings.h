/* settings.h - what a `complete -o FILE` run records beside its output
 * (FILE.settings.json): the model, every setting that changes what an
 * item produces, and a fingerprint of the input, so that --resume can
 * refuse to continue FILE with other ones (the file would mix two runs). */
#ifndef SB_CLI_SETTINGS_H
#define SB_CLI_SETTINGS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* FILE.settings.json for the output FILE (malloc'd; NULL when out of
 * memory). */
char *cli_settings_path(const char *out_path);

/* Writes settings (a JSON object) to path atomically. Prints the error;
 * returns 0 or an exit status. */
int cli_settings_write(const char *path, const json_t *settings);

/* --resume: compares settings with those recorded at path. Absent: 0 (an
 * output of an earlier version, or a run that wrote nothing yet). Equal:
 * 0. Different: one error line naming each setting that differs (now and
 * then) and CLI_EXIT_USAGE, unless force, which warns and returns 0.
 * Unreadable: an error and its exit status. */
int cli_settings_check(const char *path, const json_t *settings, bool force);

/* FNV-1a, 64 bits, continued from h (start with CLI_FNV_START): the
 * input's fingerprint is this over its item lines. */
#define CLI_FNV_START UINT64_C(0xcbf29ce484222325)
uint64_t cli_fnv64(uint64_t h, const void *p, size_t n);

#endif
