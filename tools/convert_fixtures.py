#!/usr/bin/python3
"""Converts the official parity fixtures into model directories for the C
tests (a build step, run by tests/meson.build's 'fixture_models' target).

    convert_fixtures.py FIXTURES_DIR OUT_DIR STAMP CASE...

Each FIXTURES_DIR/CASE/{checkpoint.pt,dict.txt} becomes OUT_DIR/CASE (f32),
replacing what was there; STAMP is written last, for the build tool.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import convert_fairseq  # noqa: E402


def main(argv):
    if len(argv) < 4:
        sys.stderr.write("usage: convert_fixtures.py FIXTURES_DIR OUT_DIR STAMP CASE...\n")
        return 2
    fixtures, out, stamp, cases = argv[0], argv[1], argv[2], argv[3:]
    for case in cases:
        src = os.path.join(fixtures, case)
        convert_fairseq.main([os.path.join(src, "checkpoint.pt"),
                              os.path.join(src, "dict.txt"),
                              "-o", os.path.join(out, case), "--force",
                              "--name", case, "--dtype", "f32"])
    with open(stamp, "w") as f:
        f.write("\n".join(cases) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
