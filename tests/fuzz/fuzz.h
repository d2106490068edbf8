/*
 * fuzz.h - what every fuzz target defines: libFuzzer's entry point. The same
 * target file links either with libFuzzer (-Dfuzzers=true, clang) or with
 * replay.c, which feeds it the files of its corpus so that every compiler
 * replays the corpora as a normal test.
 *
 * A target must not leak, must not keep state between calls that changes
 * what a later input does, and aborts (through fuzz_check) only when an
 * invariant that holds for every input is broken.
 */
#ifndef SB_FUZZ_H
#define SB_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define fuzz_check(cond)                                                          \
	do {                                                                      \
		if (!(cond)) {                                                    \
			fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, \
			        __LINE__, #cond);                                 \
			abort();                                                  \
		}                                                                 \
	} while (0)

#endif
