#!/bin/sh
# Makes spm-tiny.model and spm-tiny-spaces.model, the small SentencePiece
# models of test-tokenizer.c,
# from spm-corpus.txt with spm_train (Debian package sentencepiece 0.1.97).
# byte_fallback: characters outside the vocabulary become <0xAB> pieces,
# so the tests exercise byte pieces on text the corpus never saw.
set -eu
cd "$(dirname "$0")"
spm_train --input=spm-corpus.txt --model_prefix=spm-tiny \
	--vocab_size=400 --model_type=unigram --byte_fallback=true \
	--character_coverage=0.98 --num_threads=1 --normalization_rule_name=identity \
	--seed_sentencepiece_size=10000 \
	--unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --minloglevel=2
# The same keeping repeated spaces: decoding then drops only the first
# leading space (add_dummy_prefix without remove_extra_whitespaces).
spm_train --input=spm-corpus.txt --model_prefix=spm-tiny-spaces \
	--vocab_size=400 --model_type=unigram --byte_fallback=true \
	--character_coverage=0.98 --num_threads=1 --normalization_rule_name=identity \
	--remove_extra_whitespaces=false --seed_sentencepiece_size=10000 \
	--unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --minloglevel=2
rm -f spm-tiny.vocab spm-tiny-spaces.vocab
