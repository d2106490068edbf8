#!/usr/bin/python3
"""The bundled model (models/sotu-small): it loads and is the default, it
scores the first 2000 tokens of the test split as its model card says (the
card's figure comes from the PyTorch evaluator, not from seqboat), and
greedy completion is deterministic."""

import json
import os
import re
import subprocess
import unittest

SRCDIR = os.environ.get("SB_SRCDIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SEQBOAT = os.environ.get("SB_SEQBOAT", os.path.join(SRCDIR, "build", "seqboat"))
MODEL = os.path.join(SRCDIR, "models", "sotu-small")
HEAD = os.path.join(SRCDIR, "tests", "data", "sotu-test-head.txt")


def run(*args):
    env = dict(os.environ)
    env.pop("SEQBOAT_MODEL", None)
    return subprocess.run([SEQBOAT] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=env)


class Bundled(unittest.TestCase):
    def test_bundled_is_the_default_model(self):
        r = run("info", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        info = json.loads(r.stdout)
        self.assertEqual(info["name"], "sotu-small")
        self.assertEqual(os.path.realpath(info["model_dir"]), os.path.realpath(MODEL))
        # The size limits the project set for the bundled model.
        self.assertLessEqual(info["file_bytes"], 25 * 1000 * 1000)

    def test_bundled_scores_test_head_as_the_card_says(self):
        with open(os.path.join(MODEL, "README.md"), encoding="utf-8") as f:
            card = f.read()
        m = re.search(r"first 2000 tokens of the test split.*?\*\*([0-9.]+) bits per byte\*\*",
                      card, re.S)
        self.assertIsNotNone(m, "the model card states no figure for the test head")
        want = float(m.group(1))
        r = run("perplexity", "-m", MODEL, "-f", HEAD, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        got = json.loads(r.stdout)
        self.assertEqual(got["tokens_scored"], 2000)
        self.assertEqual(got["bytes"], os.path.getsize(HEAD))
        self.assertLess(abs(got["bits_per_byte"] - want), 0.01,
                        "bits per byte %.4f, card says %.4f" % (got["bits_per_byte"], want))

    def test_bundled_greedy_completion_is_deterministic(self):
        outs = []
        for seed in ("1", "2", "1"):
            r = run("complete", "-m", MODEL, "--temp", "0", "-n", "40", "--seed", seed,
                    "--format", "jsonl", "--no-timings", "-p", "Our economy is")
            self.assertEqual(r.returncode, 0, r.stderr)
            rec = json.loads(r.stdout)
            self.assertEqual(rec["completion_tokens"], 40)
            self.assertTrue(rec["completion"].strip())
            outs.append(rec["completion"])
        self.assertEqual(outs[0], outs[1])
        self.assertEqual(outs[0], outs[2])


if __name__ == "__main__":
    unittest.main(verbosity=2)
