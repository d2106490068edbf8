/* utf8.c - placeholder until implemented. */
#include "seqboat.h"
