"""Every code block of the README runs as written, in the order a reader meets them.

How blocks are taken (the README's set-up section says the same to its readers):

- ```python, ```bash and ```sql blocks run in README order, in one scratch folder (so a block may
  read what an earlier one wrote: the query examples read the demo's files), with the test
  environment's console scripts first on the PATH. Python runs as a script, bash with ``set -e``,
  SQL through DuckDB. ``pip install`` lines are not run here: this environment has every extra
  already (``.ci/run`` installs it, and checks the plain install on its own).
- A block may carry, on the line before its opening fence, one HTML comment:
  ``<!-- readme-test: not run: REASON -->`` (it needs a GPU, the network, a cluster or the reader's
  own data; the reason is required), ``<!-- readme-test: synopsis -->`` (a command line with its
  options in brackets: each option must be one the command's ``--help`` lists, and every option
  ``--help`` lists must be there), or ``<!-- readme-test: with clay-serve -->`` (runs while
  ``clay-serve`` serves the demo engine on 127.0.0.1:8080 and 8081).
- Blocks without a language are sample output: not run.

A failure names the README line (of the block, and of the failing line where it can be told) and
the section, so that an edit to the README that breaks an example says where.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
RUN = ("python", "bash", "sql")
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!-- readme-test: (.*) -->$")
KINDS = ("not run: ", "synopsis", "with clay-serve")
SERVE_PORTS = (8080, 8081)  # what the README's client example names
TIMEOUT = 600


@dataclass(frozen=True)
class Block:
    line: int  # README line of the block's first code line
    lang: str
    code: str
    marker: str | None  # the readme-test comment before the fence, if any
    section: str

    def where(self) -> str:
        return f"README.md line {self.line} (```{self.lang} block in '{self.section}')"


def parse(text: str) -> tuple[list[Block], list[str]]:
    """The fenced blocks, and what is wrong with the markers (a marker not followed by a fence, an
    unknown kind, a "not run" without a reason)."""
    lines = text.splitlines()
    blocks, problems, section, k = [], [], "(top)", 0
    while k < len(lines):
        line = lines[k]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        marker = MARKER.match(line)
        if marker:
            kind = marker.group(1)
            if not kind.startswith(KINDS) or kind == "not run: " or kind.startswith("not run: ") and not kind[9:].strip():
                problems.append(f"README.md line {k + 1}: unknown or incomplete marker {line!r}")
            if k + 1 >= len(lines) or not FENCE.match(lines[k + 1]):
                problems.append(f"README.md line {k + 1}: a readme-test marker must be the line right before a ``` fence")
        fence = FENCE.match(line)
        if fence:
            end = next((j for j in range(k + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            previous = MARKER.match(lines[k - 1]) if k else None
            blocks.append(Block(k + 2, fence.group(1), "\n".join(lines[k + 1 : end]) + "\n",
                                previous.group(1) if previous else None, section))  # fmt: skip
            k = end
        k += 1
    return blocks, problems


BLOCKS, MARKER_PROBLEMS = parse(README.read_text())
RUNNABLE = [b for b in BLOCKS if b.lang in RUN and (b.marker is None or b.marker == "with clay-serve")]
SYNOPSES = [b for b in BLOCKS if b.marker == "synopsis"]


def test_every_block_is_run_checked_or_marked_with_a_reason():
    """A block this test would silently leave out is an error: a language it does not run, without
    a marker saying why; a synopsis that is not a bash block."""
    problems = list(MARKER_PROBLEMS)
    for block in BLOCKS:
        if block.lang and block.lang not in RUN and block.marker is None:
            problems.append(f"{block.where()}: ```{block.lang} is not run here; mark it <!-- readme-test: not run: REASON -->")
        if block.marker == "synopsis" and block.lang != "bash":
            problems.append(f"{block.where()}: a synopsis is a ```bash block")
    assert not problems, "\n".join(problems)
    assert len(RUNNABLE) >= 5 and len(SYNOPSES) >= 3  # the parser found the README's blocks


def console_env() -> dict[str, str]:
    """This environment's console scripts (clay-run, clay-bench...) first on the PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return ReadmeSession(tmp_path_factory.mktemp("readme"))


class ReadmeSession:
    """Runs the runnable blocks in README order in one folder, each once; a block's test runs
    every block before it first (a later block may use what an earlier one wrote)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.scripts = folder / "work", folder / "scripts"
        self.folder.mkdir()
        self.scripts.mkdir()
        self.failed: dict[int, str] = {}
        self.skipped: dict[int, str] = {}
        self.done: set[int] = set()

    def run_through(self, block: Block) -> str | None:
        """Run every block up to ``block``; its failure message, or ``None`` (a block that cannot
        run on this machine skips its own test, not the tests of the blocks after it)."""
        for earlier in RUNNABLE[: RUNNABLE.index(block) + 1]:
            if earlier.line not in self.done:
                self.done.add(earlier.line)
                try:
                    error = self.run(earlier)
                except pytest.skip.Exception as reason:
                    self.skipped[earlier.line], error = str(reason), None
                if error:
                    self.failed[earlier.line] = error
        if block.line in self.skipped:
            pytest.skip(self.skipped[block.line])
        error = self.failed.get(block.line)
        before = [line for line in self.failed if line < block.line]
        if error and before:
            error += f"\n(earlier blocks failed too, at README.md line {', '.join(map(str, before))}: this one may need them)"
        return error

    def run(self, block: Block) -> str | None:
        if block.marker == "with clay-serve":
            return self.with_server(block)
        result = getattr(self, f"run_{block.lang}")(block)
        if result.returncode == 0:
            return None
        return f"{block.where()} failed (exit {result.returncode}){self.failing_line(block, result.stderr)}:\n" + (
            (result.stdout[-1500:] + "\n" + result.stderr[-3000:]).strip()
        )

    def with_server(self, block: Block) -> str | None:
        from clay.benchmarks.serve_load import running_server
        from clay.runtime.demo import DEMO_ENGINE

        taken = f"port 8080 or 8081 is taken on this machine; {block.where()} calls clay-serve there"
        for port in SERVE_PORTS:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    pytest.skip(taken)
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(running_server(DEMO_ENGINE, ports=SERVE_PORTS))
            except RuntimeError as exc:  # taken since the probe (another run of this test, say)
                if "cannot listen on" in str(exc):
                    pytest.skip(taken)
                raise
            return self.run(Block(block.line, block.lang, block.code, None, block.section))

    def script(self, block: Block, text: str, suffix: str) -> Path:
        path = self.scripts / f"readme-line-{block.line}{suffix}"
        path.write_text(text)
        return path

    def run_python(self, block: Block) -> subprocess.CompletedProcess:
        path = self.script(block, block.code, ".py")
        return subprocess.run([sys.executable, str(path)], cwd=self.folder, env=console_env(), capture_output=True,
                              text=True, timeout=TIMEOUT)  # fmt: skip

    def run_bash(self, block: Block) -> subprocess.CompletedProcess:
        lines, continued = [], False
        for line in block.code.splitlines():  # same line count: README lines stay countable
            skip = continued or line.strip().startswith("pip install")
            continued = skip and line.rstrip().endswith("\\")
            lines.append(f": not run here: {line.strip()!r}" if skip else line)
        header = 'set -eo pipefail\ntrap \'echo "README.md line $((LINENO + OFFSET)) failed: $BASH_COMMAND" >&2\' ERR\n'
        path = self.script(block, header.replace("OFFSET", str(block.line - 3)) + "\n".join(lines) + "\n", ".sh")
        return subprocess.run(["bash", str(path)], cwd=self.folder, env=console_env(), capture_output=True, text=True,
                              timeout=TIMEOUT)  # fmt: skip

    def run_sql(self, block: Block) -> subprocess.CompletedProcess:
        path = self.script(block, block.code, ".sql")
        code = "import duckdb, sys\nrows = duckdb.sql(open(sys.argv[1]).read()).fetchall()\nprint(len(rows), 'rows')\n"
        return subprocess.run([sys.executable, "-c", code, str(path)], cwd=self.folder, env=console_env(),
                              capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip

    def failing_line(self, block: Block, stderr: str) -> str:
        """The README line a Python traceback points at, where it does."""
        found = re.findall(rf'File "[^"]*readme-line-{block.line}\.py", line (\d+)', stderr)
        return f" at README.md line {block.line + int(found[-1]) - 1}" if found else ""


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"line{b.line}-{b.lang}" for b in RUNNABLE])
def test_readme_block_runs_as_written(session, block):
    error = session.run_through(block)
    assert error is None, error


def help_options(command: str) -> set[str]:
    """The long options ``command --help`` lists (its option lines, not its prose)."""
    result = subprocess.run([command, "--help"], env=console_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command} --help: {result.stderr[-1000:]}"
    options = result.stdout.split("Options:", 1)[-1]
    return set(re.findall(r"^\s{2,}(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", options, flags=re.MULTILINE)) - {"--help"}


@pytest.mark.parametrize("block", SYNOPSES, ids=[f"line{b.line}-{b.code.split()[0]}" for b in SYNOPSES])
def test_readme_synopsis_lists_the_commands_options(block):
    command = block.code.split()[0]
    documented = set(re.findall(r"--[a-z0-9][a-z0-9-]*", block.code))
    offered = help_options(command)
    assert offered, f"{command} --help lists no option: the test cannot read it"
    missing, unknown = sorted(offered - documented), sorted(documented - offered)
    assert not missing and not unknown, (
        f"{block.where()}: the {command} synopsis lacks {missing or 'nothing'} and names {unknown or 'nothing'} "
        f"that {command} --help does not list"
    )
