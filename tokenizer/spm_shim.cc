// spm_shim.cc - placeholder
#include "tokenizer.h"
