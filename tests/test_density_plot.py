#!/usr/bin/python3
"""tools/data/plot_density_curve.py: the model card's plot is what the script
draws from the committed figures (so the picture cannot drift from the
numbers), every measured point is on it, and a file that is not a figures
file gets one error line and exit status 65."""

import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

SRCDIR = os.environ.get("SB_SRCDIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
PLOT = os.path.join(SRCDIR, "tools", "data", "plot_density_curve.py")
FIGURES = os.path.join(SRCDIR, "models", "sotu-small", "density-curve.json")
SVG = os.path.join(SRCDIR, "models", "sotu-small", "density-curve.svg")
sys.path.insert(0, os.path.join(SRCDIR, "tools", "data"))

from plot_density_curve import label_of  # noqa: E402


def plot(figures, out):
    return subprocess.run([sys.executable, PLOT, figures, "-o", out], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)


class DensityPlot(unittest.TestCase):
    def test_committed_plot_is_drawn_from_committed_figures(self):
        with tempfile.TemporaryDirectory(prefix="sb-test-plot-") as tmp:
            out = os.path.join(tmp, "curve.svg")
            r = plot(FIGURES, out)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, "")
            with open(out, encoding="utf-8") as f, open(SVG, encoding="utf-8") as g:
                self.assertEqual(f.read(), g.read(),
                                 "regenerate models/sotu-small/density-curve.svg with "
                                 "tools/data/plot_density_curve.py")

    def test_every_point_with_test_figures_is_labelled(self):
        with open(FIGURES, encoding="utf-8") as f:
            fig = json.load(f)
        with open(SVG, encoding="utf-8") as f:
            svg = f.read()
        drawn = [p for p in fig["points"] if p.get("seqboat", {}).get("test")]
        self.assertGreaterEqual(len([p for p in drawn if p["kind"] in ("trained", "layer")]), 4)
        for p in drawn:
            self.assertIn(">%s</text>" % label_of(p), svg)
        # one marker per point: circles, triangles and squares
        markers = len(re.findall(r"<circle ", svg)) + len(re.findall(r"<path d=\"M", svg)) \
            + len(re.findall(r"<rect x=\"[0-9.]+\" y=\"[0-9.]+\" width=\"7\"", svg))
        legend = len({p["kind"] for p in drawn})
        self.assertEqual(markers, len(drawn) + legend)

    def test_not_a_figures_file(self):
        with tempfile.TemporaryDirectory(prefix="sb-test-plot-") as tmp:
            bad = os.path.join(tmp, "bad.json")
            with open(bad, "w") as f:
                json.dump({"points": [{"name": "x"}]}, f)
            out = os.path.join(tmp, "out.svg")
            r = plot(bad, out)
            self.assertEqual(r.returncode, 65)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
            self.assertIn("bad.json", r.stderr)
            self.assertFalse(os.path.exists(out))
            r = plot(os.path.join(tmp, "missing.json"), out)
            self.assertEqual(r.returncode, 74)
            self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    unittest.main(verbosity=2)
