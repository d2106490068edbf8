#!/usr/bin/env python3
"""Every command of README.md, run as written, so the README cannot rot.

The commands are the lines of its ```sh blocks (comments and blank lines
aside). They run in README order in one scratch directory that links to
each entry of the source tree, with build/ linked to the build directory
under test, so that a command writes its files (prompts.jsonl, out.jsonl,
flat.svg, my-model) there and nowhere else. Each must exit 0.
tests/readme-skip.txt lists the few that are not run, each with a reason.

The first block must hold exactly the README's two commands: set up and run
the main job, set up and run the tests. .ci/run runs both as written in a
fresh copy of the checkout; here the first runs without its set-up part
(which would reconfigure the build directory under test) and the second is
this suite itself.
"""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.environ.get("SB_SRCDIR", os.path.join(HERE, ".."))
BUILDDIR = os.environ.get("SB_BUILDDIR", os.path.join(SRCDIR, "build"))
README = os.path.join(SRCDIR, "README.md")
SKIPS = os.path.join(SRCDIR, "tests", "readme-skip.txt")
TIMEOUT = 600  # seconds per command


def sh_blocks(path):
    """[(first line number, [(line number, command)])] of the ```sh blocks."""
    blocks, cur = [], None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if cur is None:
                if line.strip() == "```sh":
                    cur = (n, [])
            elif line.startswith("```"):
                blocks.append(cur)
                cur = None
            elif line.strip() and not line.lstrip().startswith("#"):
                cur[1].append((n, line))
    if cur is not None:
        raise ValueError(f"{path}:{cur[0]}: ```sh block never closed")
    return blocks


def key(command):
    """The command without a trailing comment set off by two spaces."""
    return re.sub(r"\s{2,}#.*$", "", command).rstrip()


def skip_list(path):
    """{command: reason} from readme-skip.txt."""
    skips, pending = {}, None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            if line.startswith("skip: ") and pending is None:
                pending = line[len("skip: "):]
            elif line.startswith("why: ") and pending is not None and line[5:].strip():
                skips[pending] = line[5:].strip()
                pending = None
            else:
                raise ValueError(f"{path}:{n}: expected 'skip: COMMAND' then 'why: REASON'")
    if pending is not None:
        raise ValueError(f"{path}: 'skip: {pending}' has no 'why:' line")
    return skips


class Readme(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.blocks = sh_blocks(README)
        cls.skips = skip_list(SKIPS)

    def test_starts_with_the_two_commands(self):
        self.assertTrue(self.blocks, "README.md has no ```sh block")
        with open(README, encoding="utf-8") as f:
            head = [l.rstrip("\n") for l in f][:4]
        self.assertEqual(head[2], "```sh", "README.md must open with its two commands")
        first, cmds = self.blocks[0]
        self.assertEqual(first, 3)
        self.assertEqual(len(cmds), 2, "the first block must hold exactly two commands")
        run, test = cmds[0][1], cmds[1][1]
        self.assertRegex(run, r"^scripts/setup( --?[a-z-]+)* && build/seqboat complete ")
        self.assertRegex(test, r"^scripts/setup( --?[a-z-]+)* && meson test -C build\b")
        with open(os.path.join(SRCDIR, ".ci", "run"), encoding="utf-8") as f:
            ci = f.read()
        # .ci/run takes both commands from the README, not from a copy.
        self.assertIn('"$(readme_command 1)"', ci)
        self.assertIn('"$(readme_command 2)"', ci)

    def test_nothing_refers_outside_the_repository(self):
        # The project stands on its own: no tracked file names the folder
        # next to the checkout that the fixtures once came from.
        outside = ".." + "/shared"
        try:
            files = subprocess.run(["git", "-C", SRCDIR, "ls-files", "-z"], check=True,
                                   capture_output=True).stdout.decode().split("\0")
        except (OSError, subprocess.CalledProcessError):
            self.skipTest("not a git checkout")
        hits = []
        for name in filter(None, files):
            path = os.path.join(SRCDIR, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    if outside.encode() in f.read():
                        hits.append(name)
        self.assertEqual(hits, [], f"files that refer to {outside}")

    def test_skip_list_is_current(self):
        commands = {key(c) for _, cmds in self.blocks for _, c in cmds}
        stale = [c for c in self.skips if c not in commands]
        self.assertEqual(stale, [], "tests/readme-skip.txt names commands README.md no longer has")

    def test_commands_run(self):
        if os.environ.get("SB_SANITIZER"):
            self.skipTest("the README's commands run on the normal build; the other "
                          "tests cover the same code under " + os.environ["SB_SANITIZER"])
        scratch = tempfile.mkdtemp(prefix="seqboat-readme.")
        self.addCleanup(shutil.rmtree, scratch, True)
        for name in os.listdir(SRCDIR):
            if name not in ("build", ".git"):
                os.symlink(os.path.join(os.path.abspath(SRCDIR), name), os.path.join(scratch, name))
        os.symlink(os.path.abspath(BUILDDIR), os.path.join(scratch, "build"))
        env = {k: v for k, v in os.environ.items() if k != "SEQBOAT_MODEL"}
        ran = 0
        for b, (first, cmds) in enumerate(self.blocks):
            for n, command in cmds:
                k = key(command)
                if k in self.skips:
                    print(f"README.md:{n}: skipped ({self.skips[k]}): {command}")
                    continue
                if b == 0:
                    # Its set-up part would reconfigure the build under test.
                    command = re.sub(r"^scripts/setup( --?[a-z-]+)* && ", "", command)
                with self.subTest(line=n, command=command):
                    try:
                        p = subprocess.run(["bash", "-c", command], cwd=scratch, env=env,
                                           stdin=subprocess.DEVNULL, capture_output=True,
                                           timeout=TIMEOUT)
                    except subprocess.TimeoutExpired:
                        self.fail(f"README.md:{n}: still running after {TIMEOUT} s: {command}")
                    print(f"README.md:{n}: exit {p.returncode}: {command}")
                    self.assertEqual(
                        p.returncode, 0,
                        f"README.md:{n}: exit {p.returncode}: {command}\n"
                        f"stdout: {p.stdout.decode(errors='replace')[-2000:]}\n"
                        f"stderr: {p.stderr.decode(errors='replace')[-2000:]}\n"
                        "(make it work from a fresh clone, or list it in "
                        "tests/readme-skip.txt with the reason)")
                    ran += 1
        self.assertGreater(ran, 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
