#!/usr/bin/python3
"""`seqboat bench` on a fixture model: every output format parses and holds
llama-bench's fields plus seqboat's, the figures are consistent with their
samples, and memory stays flat from depth 0 to depth 200000 (the state is
filled by real prefill, so depth costs time, not memory). This checks what
bench reports, never how fast anything is."""

import csv
import io
import json
import os
import statistics
import subprocess
import tempfile
import unittest
import xml.etree.ElementTree as ET

MODELS = os.environ.get("SB_FIXTURE_MODELS")
SEQBOAT = os.environ.get("SB_SEQBOAT")
MIB = 1024 * 1024

LLAMA_BENCH_FIELDS = [
    "build_commit", "cpu_info", "backends", "model_filename", "model_type", "model_size",
    "model_n_params", "n_threads", "n_prompt", "n_gen", "n_depth", "test_time", "avg_ns",
    "stddev_ns", "avg_ts", "stddev_ts", "samples_ns", "samples_ts",
]
SEQBOAT_FIELDS = ["state_bytes", "window", "act_bias", "act_rate", "rss_bytes", "peak_rss_bytes"]


def run(*args, check=True):
    r = subprocess.run([SEQBOAT] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    if check and r.returncode != 0:
        raise AssertionError("seqboat %s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr))
    return r


@unittest.skipUnless(SEQBOAT and MODELS, "needs SB_SEQBOAT and SB_FIXTURE_MODELS (run through meson test)")
class Bench(unittest.TestCase):
    model = property(lambda self: os.path.join(MODELS, "rotary-softmax"))

    def info(self):
        return json.loads(run("info", "-m", self.model, "--json").stdout)

    def test_json_holds_every_field(self):
        info = self.info()
        rows = json.loads(run("bench", "-m", self.model, "-p", "32,16", "-n", "8", "-d", "0,100",
                              "-t", "1", "-r", "3", "-o", "json").stdout)
        # depth outer, then pp sizes, then tg sizes, as llama-bench orders them
        self.assertEqual([(r["n_depth"], r["n_prompt"], r["n_gen"]) for r in rows],
                         [(0, 32, 0), (0, 16, 0), (0, 0, 8), (100, 32, 0), (100, 16, 0), (100, 0, 8)])
        for r in rows:
            for k in LLAMA_BENCH_FIELDS + SEQBOAT_FIELDS:
                self.assertIn(k, r)
            self.assertEqual(r["n_threads"], 1)
            self.assertEqual(r["model_n_params"], info["n_params"])
            self.assertEqual(r["model_size"], info["file_bytes"])
            self.assertEqual(r["state_bytes"], info["state_bytes"])
            self.assertEqual(r["window"], info["window"])
            self.assertEqual(len(r["samples_ns"]), 3)
            self.assertEqual(len(r["samples_ts"]), 3)
            n = r["n_prompt"] + r["n_gen"]
            for ns, ts in zip(r["samples_ns"], r["samples_ts"]):
                self.assertGreater(ns, 0)
                self.assertAlmostEqual(ts, n * 1e9 / ns, delta=1e-6 * ts)
            self.assertAlmostEqual(r["avg_ts"], statistics.mean(r["samples_ts"]), delta=1e-6 * r["avg_ts"])
            self.assertAlmostEqual(r["stddev_ts"], statistics.stdev(r["samples_ts"]),
                                   delta=1e-6 * r["avg_ts"])
            self.assertLessEqual(abs(r["avg_ns"] - statistics.mean(r["samples_ns"])), 1)
            self.assertEqual(len(r["act_rate"]), info["layers"])
            for a in r["act_rate"]:
                self.assertTrue(0.0 <= a <= 1.0)
                # a rate over n tokens and 3 runs is a multiple of 1/(3n)
                self.assertAlmostEqual(a * 3 * n, round(a * 3 * n), delta=1e-9)
            self.assertGreater(r["rss_bytes"], 0)
            self.assertGreaterEqual(r["peak_rss_bytes"], r["rss_bytes"])
            self.assertRegex(r["test_time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

    def test_jsonl_csv_and_md_agree(self):
        args = ["bench", "-m", self.model, "-p", "16", "-n", "4", "-t", "1", "-r", "2"]
        lines = run(*args, "-o", "jsonl").stdout.splitlines()
        objs = [json.loads(l) for l in lines]
        self.assertEqual([(o["n_prompt"], o["n_gen"]) for o in objs], [(16, 0), (0, 4)])
        rows = list(csv.DictReader(io.StringIO(run(*args, "-o", "csv").stdout)))
        self.assertEqual(len(rows), 2)
        for row in rows:
            for k in LLAMA_BENCH_FIELDS + SEQBOAT_FIELDS:
                self.assertIn(k, row)
            self.assertEqual(len(row["samples_ns"].split()), 2)
            self.assertEqual(int(row["state_bytes"]), objs[0]["state_bytes"])
        md = run(*args).stdout.splitlines()
        self.assertRegex(md[0], r"^\| model +\|.*\| +threads \| +test \| +t/s \|.*\|$")
        self.assertTrue(md[1].startswith("| ---"))
        # the table, a blank line and llama-bench's build footer
        self.assertEqual(len(md), 6)
        self.assertIn(" pp16 ", md[2])
        self.assertIn(" tg4 ", md[3])
        self.assertEqual(md[4], "")
        self.assertRegex(md[5], r"^build: \S+ \(\S+\)$")
        self.assertEqual(md[5].split()[1], objs[0]["build_commit"])

    def test_md_table_fits_120_columns(self):
        md = run("bench", "-m", self.model, "-p", "16", "-n", "4", "-pg", "16,4", "-d", "0,100000",
                 "-t", "1", "-r", "1", "--no-warmup").stdout.splitlines()
        table = [l for l in md if l.startswith("|")]
        self.assertEqual(len(table), 2 + 6)
        for l in table:
            self.assertLessEqual(len(l), 120, l)
        self.assertIn(" pp16+tg4 @ d100000 |", table[-1])

    def test_pg_ranges_and_order(self):
        rows = [json.loads(l) for l in run("bench", "-m", self.model, "-p", "8-32+8", "-n", "2-8*2",
                                           "-pg", "16,4", "-pg", "8,2", "-t", "1", "-r", "2",
                                           "-o", "jsonl").stdout.splitlines()]
        self.assertEqual([(r["n_prompt"], r["n_gen"]) for r in rows],
                         [(8, 0), (16, 0), (24, 0), (32, 0), (0, 2), (0, 4), (0, 8), (16, 4), (8, 2)])
        for r in rows[-2:]:
            # a pp+tg test counts the prompt and the generated tokens
            n = r["n_prompt"] + r["n_gen"]
            for ns, ts in zip(r["samples_ns"], r["samples_ts"]):
                self.assertAlmostEqual(ts, n * 1e9 / ns, delta=1e-6 * ts)
        md = run("bench", "-m", self.model, "-p", "0", "-n", "0", "-pg", "16,4", "-t", "1", "-r", "1").stdout
        self.assertIn(" pp16+tg4 |", md)
        for bad in (["-pg", "16"], ["-pg", "1,2,3"], ["-pg", "0,0"], ["-p", "64-16"], ["-p", "1-8*1"],
                    ["-p", "8-x"], ["-d", "0-10*2"]):
            with self.subTest(args=bad):
                r = run("bench", "-m", self.model, *bad, check=False)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertEqual(r.stdout, "")
                self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)

    def test_sql_loads_into_sqlite(self):
        import sqlite3
        sql = run("bench", "-m", self.model, "-p", "16", "-n", "4", "-t", "1", "-r", "2", "-o", "sql").stdout
        db = sqlite3.connect(":memory:")
        db.executescript(sql)
        db.executescript(sql)   # CREATE TABLE IF NOT EXISTS: a second run appends
        got = db.execute("SELECT n_prompt, n_gen, n_threads, avg_ts, typeof(avg_ts), typeof(n_prompt), "
                         "samples_ns, model_type FROM test").fetchall()
        self.assertEqual([(g[0], g[1], g[2]) for g in got], [(16, 0, 1), (0, 4, 1)] * 2)
        for g in got:
            self.assertGreater(g[3], 0)
            self.assertEqual((g[4], g[5]), ("real", "integer"))
            self.assertEqual(len(g[6].split()), 2)
            self.assertTrue(g[7].startswith("seqboat "))

    def test_progress_lines(self):
        r = run("bench", "-m", self.model, "-p", "16", "-n", "4", "-d", "0,50", "-t", "1", "-r", "2",
                "-o", "jsonl", "--progress")
        self.assertEqual(len(r.stdout.splitlines()), 4)
        err = r.stderr.splitlines()
        self.assertIn("bench: test 1/4: pp16, 1 thread: warm-up run", err)
        self.assertIn("bench: test 4/4: tg4 @ d50: run 2/2", err)
        self.assertIn("bench: filling depth 50 (untimed)", err)
        self.assertEqual(len([l for l in err if ": run " in l]), 8)

    def test_threads_above_the_cores_warn_and_0_is_all(self):
        r = run("bench", "-m", self.model, "-p", "8", "-n", "0", "-t", "0,1000", "-r", "1", "-o", "jsonl")
        rows = [json.loads(l) for l in r.stdout.splitlines()]
        cores = len(os.sched_getaffinity(0))
        self.assertEqual([x["n_threads"] for x in rows], [cores, 1000])
        self.assertIn("warning: --threads 1000", r.stderr)

    # ASan's quarantine and shadow memory grow RSS with the work done, so
    # resident memory says nothing about the state under a sanitizer.
    @unittest.skipIf(os.environ.get("SB_SANITIZER"), "RSS is not meaningful under a sanitizer")
    def test_memory_is_flat_from_depth_0_to_200000(self):
        runs = {}
        for d in ("0", "200000"):
            rows = [json.loads(l) for l in run("bench", "-m", self.model, "-p", "64", "-n", "16", "-d", d,
                                               "-t", "1", "-r", "2", "-o", "jsonl").stdout.splitlines()]
            self.assertEqual({r["n_depth"] for r in rows}, {int(d)})
            runs[d] = rows
        for a, b in zip(runs["0"], runs["200000"]):
            self.assertEqual(a["state_bytes"], b["state_bytes"])
            self.assertLess(abs(a["peak_rss_bytes"] - b["peak_rss_bytes"]), MIB,
                            "peak RSS %d at depth 0, %d at depth 200000" % (a["peak_rss_bytes"],
                                                                             b["peak_rss_bytes"]))
            self.assertLess(abs(a["rss_bytes"] - b["rss_bytes"]), MIB)

    def test_plot_is_an_svg_with_a_line_per_test(self):
        with tempfile.TemporaryDirectory(prefix="sb-test-bench-") as tmp:
            path = os.path.join(tmp, "plot.svg")
            run("bench", "-m", self.model, "-p", "16", "-n", "4", "-d", "0,10,1000", "-t", "1", "-r", "2",
                "-o", "jsonl", "--plot", path)
            self.assertEqual(os.listdir(tmp), ["plot.svg"])
            root = ET.parse(path).getroot()
            self.assertEqual(root.tag, "{http://www.w3.org/2000/svg}svg")
            lines = root.findall("{http://www.w3.org/2000/svg}polyline")
            # pp16 and tg4 in tokens/s, peak and current RSS in memory
            self.assertEqual(len(lines), 4)
            for pl in lines:
                self.assertEqual(len(pl.get("points").split()), 3)

    def test_plot_of_one_depth_has_a_bar_per_test(self):
        with tempfile.TemporaryDirectory(prefix="sb-test-bench-") as tmp:
            path = os.path.join(tmp, "plot.svg")
            rows = [json.loads(l) for l in run("bench", "-m", self.model, "-p", "16", "-n", "4", "-d", "100",
                                               "-t", "1", "-r", "2", "-o", "jsonl", "--plot", path).stdout.splitlines()]
            root = ET.parse(path).getroot()
            ns = "{http://www.w3.org/2000/svg}"
            bars = [r for r in root.iter(ns + "rect") if r.get("class") == "bar"]
            # per test: tokens/s, peak RSS, RSS after
            self.assertEqual(len(bars), 3 * len(rows))
            for b in bars:
                self.assertGreater(float(b.get("height")), 0)
                self.assertGreater(float(b.get("width")), 0)
            ts = [float(b.get("height")) for b in bars[0::3]]
            # bar heights are proportional to the tokens/s
            self.assertAlmostEqual(ts[0] / ts[1], rows[0]["avg_ts"] / rows[1]["avg_ts"], delta=0.02 * ts[0] / ts[1])
            texts = " ".join(t.text or "" for t in root.iter(ns + "text"))
            self.assertIn("pp16 @ d100, 1 thr", texts)
            self.assertIn("tg4 @ d100, 1 thr", texts)

    def test_refusals(self):
        for bad in (["-o", "xml"], ["-p", "1,x"], ["-t", "-1"], ["-r", "0"], ["-p", "0", "-n", "0"], ["extra"]):
            with self.subTest(args=bad):
                r = run("bench", "-m", self.model, *bad, check=False)
                self.assertEqual(r.returncode, 2)
                self.assertEqual(r.stdout, "")
        r = run("bench", "--help")
        self.assertIn("--n-depth", r.stdout)


if __name__ == "__main__":
    unittest.main()
