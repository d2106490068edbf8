/* tokenizer.c - placeholder until implemented. */
#include "seqboat.h"
