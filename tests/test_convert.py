#!/usr/bin/python3
"""tools/convert_fairseq.py on the official fixtures: every tensor, the
config, the dtypes, the C loader's opinion, and refusals."""

import argparse
import os
import subprocess
import sys
import tempfile
import unittest
import zipfile

import torch
import yaml

SRCDIR = os.environ.get("SB_SRCDIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
FIXTURES = os.environ.get("SB_FIXTURES", os.path.join(SRCDIR, "tests", "fixtures"))
SEQBOAT = os.environ.get("SB_SEQBOAT")
TOOLS = os.path.join(SRCDIR, "tools")
CONVERTER = os.path.join(TOOLS, "convert_fairseq.py")
CASES = ("rotary-softmax", "simple-relu2-ffn")

sys.path.insert(0, TOOLS)
from seqboat_torch import safetensors_io  # noqa: E402


def official(case):
    """The fixture checkpoint, loaded by plain torch.load: the fixtures are
    trusted and this path shares no code with the converter's loader."""
    return torch.load(os.path.join(FIXTURES, case, "checkpoint.pt"), map_location="cpu",
                      weights_only=False)


def convert(ckpt, dict_path, out, *extra):
    return subprocess.run([sys.executable, CONVERTER, ckpt, dict_path, "-o", out] + list(extra),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


def rounded(t, dtype):
    """The checkpoint tensor rounded as the file should hold it, widened
    back to float32 by torch."""
    if dtype == "f16":
        return t.half().float()
    if dtype == "bf16":
        return t.bfloat16().float()
    return t.float()


class ConvertFixtures(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="sb-test-convert-")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def check_case(self, case, dtype):
        out = os.path.join(self.tmp.name, "%s-%s" % (case, dtype))
        src = os.path.join(FIXTURES, case)
        r = convert(os.path.join(src, "checkpoint.pt"), os.path.join(src, "dict.txt"),
                    out, "--dtype", dtype, "--name", case)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "")
        self.assertEqual(sorted(os.listdir(out)), ["config.yaml", "dict.txt", "model.safetensors"])

        ck = official(case)
        sd = ck["model"]
        args = vars(ck["args"])
        tensors, dtypes, _ = safetensors_io.read(os.path.join(out, "model.safetensors"))
        want_dtype = {"f32": "F32", "f16": "F16", "bf16": "BF16"}[dtype]

        tied = args["share_decoder_input_output_embed"]
        expected_names = {k[len("decoder."):] for k in sd if k != "decoder.version"}
        if tied:
            self.assertIn("decoder.output_projection.weight", sd)
            self.assertEqual(sd["decoder.output_projection.weight"].data_ptr(),
                             sd["decoder.embed_tokens.weight"].data_ptr())
            expected_names.discard("output_projection.weight")
        self.assertEqual(set(tensors), expected_names)
        for name in sorted(expected_names):
            ref = sd["decoder." + name]
            got = tensors[name]
            self.assertEqual(list(got.shape), list(ref.shape), name)
            self.assertEqual(dtypes[name], want_dtype, name)
            want = rounded(ref, dtype)
            self.assertTrue(torch.equal(torch.from_numpy(got.copy()), want),
                            "%s (%s) differs from the checkpoint" % (name, dtype))
        # move.delta keeps its trailing 1 (docs/computation.md section 5 shape).
        self.assertEqual(list(tensors["layers.0.slag_layer.move.delta"].shape),
                         [args["decoder_embed_dim"], args["decoder_n_dim"], 1])

        with open(os.path.join(out, "config.yaml")) as f:
            cfg = yaml.safe_load(f)
        self.assertEqual(cfg["format"], 1)
        a = cfg["architecture"]
        self.assertEqual(a["vocab_size"], sd["decoder.embed_tokens.weight"].shape[0])
        self.assertEqual(a["embed_dim"], args["decoder_embed_dim"])
        self.assertEqual(a["z_dim"], args["decoder_z_dim"])
        self.assertEqual(a["hidden_dim"], args["decoder_hidden_dim"])
        self.assertEqual(a["n_dim"], args["decoder_n_dim"])
        self.assertEqual(a["layers"], args["decoder_layers"])
        self.assertEqual(a["window"], args["decoder_chunk_size"])
        self.assertEqual(a["ffn_dim"], max(args["decoder_ffn_embed_dim"], 0))
        self.assertEqual(a["max_positions"], args["max_target_positions"])
        self.assertEqual(a["truncation_length"], args["truncation_length"])
        self.assertEqual(a["rel_pos_bias"], args["rel_pos_bias"])
        self.assertEqual(a["attention"], args["attention_activation_fn"])
        self.assertEqual(a["norm"], args["normalization_type"])
        self.assertEqual(a["activation"], args["activation_fn"])
        self.assertIs(a["normalize_before"], args["normalize_before"])
        self.assertIs(a["affine_final_norm"], not args["no_affine_final_norm"])
        self.assertIs(a["scale_embedding"], not args["no_scale_embedding"])
        self.assertIs(a["tied_embeddings"], tied)
        self.assertEqual(cfg["tokenizer"], {"type": "fairseq", "file": "dict.txt",
                                            "byte_symbols": "auto", "bos_id": 2,
                                            "eos_id": 2, "pad_id": 1, "unk_id": 3})
        self.assertIn("checkpoint.pt", cfg["provenance"]["source"])
        self.assertEqual(cfg["provenance"]["name"], case)
        with open(os.path.join(src, "dict.txt"), "rb") as f1, \
                open(os.path.join(out, "dict.txt"), "rb") as f2:
            self.assertEqual(f1.read(), f2.read())

        if SEQBOAT and os.path.exists(SEQBOAT):
            r = subprocess.run([SEQBOAT, "info", "-m", out], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True)
            self.assertEqual(r.returncode, 0, "seqboat info -m %s: %s" % (out, r.stderr))
        else:
            sys.stderr.write("SB_SEQBOAT unset or missing: skipping 'seqboat info' on %s\n" % out)

    def test_rotary_softmax_f32(self):
        self.check_case("rotary-softmax", "f32")

    def test_rotary_softmax_f16(self):
        self.check_case("rotary-softmax", "f16")

    def test_rotary_softmax_bf16(self):
        self.check_case("rotary-softmax", "bf16")

    def test_simple_relu2_ffn_f32(self):
        self.check_case("simple-relu2-ffn", "f32")

    def test_simple_relu2_ffn_f16(self):
        self.check_case("simple-relu2-ffn", "f16")

    def test_simple_relu2_ffn_bf16(self):
        self.check_case("simple-relu2-ffn", "bf16")


class ConvertRefusals(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="sb-test-convert-")
        self.dict = os.path.join(FIXTURES, "rotary-softmax", "dict.txt")

    def tearDown(self):
        self.tmp.cleanup()

    def modified(self, **changes):
        ck = official("rotary-softmax")
        for k, v in changes.items():
            setattr(ck["args"], k, v)
        path = os.path.join(self.tmp.name, "checkpoint.pt")
        torch.save(ck, path)
        return path

    def assert_refused(self, ckpt, needle, status=65):
        out = os.path.join(self.tmp.name, "out")
        r = convert(ckpt, self.dict, out)
        self.assertEqual(r.returncode, status, r.stderr)
        self.assertIn(needle, r.stderr)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertFalse(os.path.exists(out))
        # No temporary directory is left next to the output either.
        self.assertEqual([n for n in os.listdir(self.tmp.name) if n.startswith(".convert-")], [])

    def test_refuses_local_pos(self):
        self.assert_refused(self.modified(local_pos=True), "local_pos")

    def test_refuses_adaptive_input(self):
        self.assert_refused(self.modified(adaptive_input=True), "adaptive_input")

    def test_refuses_adaptive_softmax(self):
        self.assert_refused(self.modified(adaptive_softmax_cutoff="10,20"),
                            "adaptive_softmax_cutoff")

    def test_refuses_normalize_embedding(self):
        self.assert_refused(self.modified(normalize_embedding=True), "normalize_embedding")

    def test_refuses_batchnorm(self):
        self.assert_refused(self.modified(normalization_type="batchnorm"), "batchnorm")
        self.assert_refused(self.modified(normalization_type="syncbatchnorm"), "syncbatchnorm")

    def test_refuses_unknown_attention_and_activation(self):
        self.assert_refused(self.modified(attention_activation_fn="sigmoid"), "sigmoid")
        self.assert_refused(self.modified(activation_fn="tanh"), "tanh")
        self.assert_refused(self.modified(rel_pos_bias="t5"), "t5")

    def test_refuses_shape_mismatch(self):
        # The args say W is fine but Z is 16: every mx_proj shape is wrong.
        self.assert_refused(self.modified(decoder_z_dim=16), "has shape [2, 32], expected [2, 16]")

    def test_refuses_code_in_pickle(self):
        # A pickle that would run a command when unpickled by plain torch.load.
        marker = os.path.join(self.tmp.name, "pwned")

        class Evil:
            def __reduce__(self):
                return (os.system, ("touch " + marker,))

        ck = official("rotary-softmax")
        ck["extra_state"] = {"x": Evil()}
        path = os.path.join(self.tmp.name, "checkpoint.pt")
        torch.save(ck, path)
        self.assert_refused(path, "system")
        self.assertFalse(os.path.exists(marker))

    def test_refuses_code_in_legacy_pickle(self):
        marker = os.path.join(self.tmp.name, "pwned")

        class Evil:
            def __reduce__(self):
                return (os.system, ("touch " + marker,))

        ck = official("rotary-softmax")
        ck["extra_state"] = {"x": Evil()}
        path = os.path.join(self.tmp.name, "checkpoint.pt")
        torch.save(ck, path, _use_new_zipfile_serialization=False)
        self.assert_refused(path, "system")
        self.assertFalse(os.path.exists(marker))

    def test_reads_legacy_format(self):
        # torch < 1.6 wrote checkpoints in the pre-zip format.
        ck = official("simple-relu2-ffn")
        path = os.path.join(self.tmp.name, "checkpoint.pt")
        torch.save(ck, path, _use_new_zipfile_serialization=False)
        self.assertFalse(zipfile.is_zipfile(path))
        out = os.path.join(self.tmp.name, "legacy")
        r = convert(path, self.dict, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        tensors, _, _ = safetensors_io.read(os.path.join(out, "model.safetensors"))
        for k, v in ck["model"].items():
            name = k[len("decoder."):]
            if name in ("version", "output_projection.weight"):
                continue
            self.assertTrue(torch.equal(torch.from_numpy(tensors[name]), v), name)

    def test_refuses_nonempty_outdir_without_force(self):
        out = os.path.join(self.tmp.name, "out")
        os.mkdir(out)
        with open(os.path.join(out, "keep"), "w") as f:
            f.write("x")
        ck = os.path.join(FIXTURES, "rotary-softmax", "checkpoint.pt")
        r = convert(ck, self.dict, out)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertEqual(os.listdir(out), ["keep"])
        r = convert(ck, self.dict, out, "--force")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(os.listdir(out)), ["config.yaml", "dict.txt", "model.safetensors"])

    def test_untied_writes_both(self):
        ck = official("rotary-softmax")
        ck["args"].share_decoder_input_output_embed = False
        sd = ck["model"]
        sd["decoder.output_projection.weight"] = sd["decoder.output_projection.weight"].clone() * 2
        path = os.path.join(self.tmp.name, "checkpoint.pt")
        torch.save(ck, path)
        out = os.path.join(self.tmp.name, "untied")
        r = convert(path, self.dict, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        tensors, _, _ = safetensors_io.read(os.path.join(out, "model.safetensors"))
        self.assertTrue(torch.equal(torch.from_numpy(tensors["output_projection.weight"]),
                                    sd["decoder.output_projection.weight"]))
        self.assertTrue(torch.equal(torch.from_numpy(tensors["embed_tokens.weight"]),
                                    sd["decoder.embed_tokens.weight"]))
        with open(os.path.join(out, "config.yaml")) as f:
            self.assertIs(yaml.safe_load(f)["architecture"]["tied_embeddings"], False)

    def test_tied_but_different_is_refused(self):
        ck = official("rotary-softmax")
        sd = ck["model"]
        sd["decoder.output_projection.weight"] = sd["decoder.embed_tokens.weight"].clone() + 1
        path = os.path.join(self.tmp.name, "checkpoint.pt")
        torch.save(ck, path)
        self.assert_refused(path, "output_projection")


class SafetensorsIO(unittest.TestCase):
    def test_bf16_rounding_matches_torch(self):
        # Values at and around rounding ties, plus specials.
        base = torch.randn(4096, generator=torch.Generator().manual_seed(3))
        bits = base.view(torch.int32)
        ties = ((bits & ~0xFFFF) | 0x8000).view(torch.float32)
        vals = torch.cat([base, ties, torch.tensor([0.0, -0.0, float("inf"), -float("inf"),
                                                    3.3895e38, 1e-40])])
        mine = safetensors_io.bf16_bits_to_f32(safetensors_io.f32_to_bf16_bits(vals.numpy()))
        self.assertTrue(torch.equal(torch.from_numpy(mine), vals.bfloat16().float()))

    def test_header_is_padded_json(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "t.safetensors")
            safetensors_io.write(p, {"a": torch.arange(3, dtype=torch.float32)})
            with open(p, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                self.assertEqual(n % 8, 0)
                h = f.read(n).decode()
                self.assertIn('"a"', h)
                self.assertEqual(h, h.rstrip(" ") + " " * (len(h) - len(h.rstrip(" "))))


if __name__ == "__main__":
    unittest.main(verbosity=2)
