/* model.c - placeholder until implemented. */
#include "seqboat.h"
