"""Executable docs: every fenced ```bash and ```python block of README.md, docs/*.md and experiments/README.md runs as
written (on the ``tiny`` model), or is run by a named test elsewhere — no block is silently skipped.

* Extraction: fenced blocks in document order; every fence must say ``bash``, ``python`` or ``text`` (``text`` is
  output or a synopsis, never run), so a command block cannot hide behind a missing language.
* Accounting (``test_every_block_is_run_or_covered``): each ``bash``/``python`` block is either run here or listed in
  ``COVERED`` (the test that executes it; the covering file must exist and name the doc and section), and each
  command of a run block is either run or listed in ``COVERED_COMMANDS`` (``make test``: CI's own entry point runs
  it; ``make demo``: its recipe, checked with ``make -n``, is ``unpact demo``, run by the README's next block).
  ``EXCEPTIONS`` (block -> reason, printed and counted) is empty and should stay so.
* Running (``test_doc_snippets_run``, one per doc): a fresh temporary directory per doc that mirrors the repository
  root (symlinks to ``.venv``, ``examples``, ``experiments``, ``Makefile``, ...; ``runs/`` starts empty), blocks in
  document order so a later block uses what an earlier one wrote. A bash block is split into commands (backslash
  continuations joined, a ``for ...; do ... done`` loop kept whole, comments dropped), each run by ``bash -e -o
  pipefail`` with ``.venv/bin`` first on PATH. The python blocks of one doc run in ONE interpreter (the venv's
  python, cwd = the doc's directory) in one namespace, like a notebook: the README's second block uses the first
  block's ``model``. Each block is saved to a file first (nnsight reads traced code back from its file).
* Checks: exit code 0 and no ``Traceback`` in the output; a failure names the doc, the block's first line and the
  command, with the output's tail. All of a doc's failures are reported together.
* ``SUBSTITUTIONS``: the docs describe SmolLM2 (30 layers, minutes per command); the test runs the ``tiny`` 2-layer
  model on its synthetic facts instead, through this small explicit table (applied to commands and python code;
  ``test_every_substitution_is_used`` fails when an entry no longer matches anything, so the table cannot rot).
* Sharing: an ``unpact`` command with ``--out`` whose other arguments read nothing the doc wrote (e.g. ``unpact
  unlearn --model tiny --method ga_gdr --out runs/ga_gdr``) runs once per session; a later doc that runs the same
  command gets a copy of its output.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = ("README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md")))
DOC_FILES = (*DOC_FILES, "experiments/README.md")
LANGUAGES = {"bash", "python", "text"}
RUN_LANGUAGES = {"bash", "python"}
COMMAND_TIMEOUT_S = 300
# What a doc's working directory shows of the repository (read-only use: the commands write under runs/ and the
# default unpact-runs/, both fresh per doc).
MIRRORED = ("Makefile", "pyproject.toml", "requirements.txt", "requirements-dev.txt", "examples")
MIRRORED = (*MIRRORED, "experiments", "scripts")


# -- the substitution table: SmolLM2 as documented -> tiny as tested -----------------------------------------------
@dataclass(frozen=True)
class Sub:
    pattern: str  # a regular expression (re.M), applied to each bash command and to each python block
    replacement: str
    reason: str

    def apply(self, text: str) -> tuple[str, int]:
        return re.subn(self.pattern, self.replacement, text, flags=re.M)


SUBSTITUTIONS = (
    Sub(r"\bsmollm2\b", "tiny", "the 2-layer tiny model instead of SmolLM2-135M (minutes per command on 2 cores)"),
    Sub(r"builtin:real_facts", "builtin:synthetic_facts", "the facts tiny was trained on"),
    Sub(
        r"^(unpact (?:attribute|evaluate|recover|unlearn))(?!.*--data )",
        r"\1 --data builtin:synthetic_facts",
        "the --data default (builtin:real_facts, SmolLM2's facts) made tiny's",
    ),
    Sub(
        r"^((?:\S*/)?(?:unpact demo|python experiments/(?:keyword_aware_unlearning|is_it_gone)\.py))(?!.*--model )",
        r"\1 --model tiny",
        "the --model default (smollm2) made tiny",
    ),
    Sub(
        r"examples/landmarks_people\.jsonl",
        "builtin:synthetic_facts",
        "some of its questions are longer than tiny's 64-token context (its other data with the three splits)",
    ),
    Sub(r"(quantization_probe\.py .*--schemes )source ", r"\1", "tiny was never a GGUF file: it has no source grid"),
    Sub(r"\bquantize:scheme=source\b", "quantize:scheme=q4_1", "tiny was never a GGUF file: it has no source grid"),
    Sub(r"(grid_snap_probe\.py .*--scheme )source\b", r"\1q4_1", "tiny was never a GGUF file: it has no source grid"),
    Sub(
        r"^(python experiments/(?:is_it_gone|keyword_aware_unlearning)\.py)(?!.*--attacks )",
        r"\1 --attacks quantize:scheme=int4 relearn_split logit_lens few_shot:shots=1",
        "several methods x the whole battery take minutes even on tiny (test_cli_recover.py runs 'all' on one)",
    ),
    Sub(
        r"^(python experiments/is_it_gone\.py.*--attacks )battery\b",
        r"\1quantize:scheme=int4 relearn_split logit_lens few_shot:shots=1",
        "several methods x the 19 battery conditions take minutes even on tiny (test_cli_recover.py runs 'all')",
    ),
    Sub(r"/models/Llama-2-7b-chat-hf", "tiny", "no 7B model (nor a GPU) on the test machine"),
    Sub(r"--device cuda --dtype bfloat16", "--device cpu --dtype bfloat16", "no GPU on the test machine"),
    Sub(r"--layer (?:[2-9]|[1-9]\d+)\b", "--layer 1", "tiny has layers 0 and 1"),
    Sub(r"\blayers=\d+-\d+", "layers=0-1", "tiny has layers 0 and 1"),
    Sub(r"\bablate_direction:layers=7\b", "ablate_direction:layers=0", "tiny has two layers (two distinct ones)"),
    Sub(r"\bablate_direction:layers=13\b", "ablate_direction:layers=1", "tiny has two layers (two distinct ones)"),
    Sub(r"\blayers=range\(\d+, \d+\)", "layers=range(0, 2)", "tiny has layers 0 and 1"),
    Sub(r"\bhook_name\((?:[2-9]|[1-9]\d+),", "hook_name(1,", "tiny has layers 0 and 1"),
    Sub(r"\bblocks\.(?:[2-9]|[1-9]\d+)\.", "blocks.1.", "tiny has layers 0 and 1"),
)


def substitute(text: str, counts: dict[int, int] | None = None) -> str:
    for i, sub in enumerate(SUBSTITUTIONS):
        text, n = sub.apply(text)
        if counts is not None:
            counts[i] = counts.get(i, 0) + n
    return text


# -- blocks ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    section: str  # the last heading above the block ("" before the first)

    @property
    def first_line(self) -> str:
        return next((ln.strip() for ln in self.code.splitlines() if ln.strip()), "")

    def __str__(self) -> str:
        return f"{self.doc}:{self.line} ```{self.lang} block starting {self.first_line!r}"


FENCE = re.compile(r"^(\s*)```(.*)$")


def extract_blocks(doc: str) -> list[Block]:
    """The fenced blocks of ``doc`` in order (a fence without a known language fails ``test_every_block_...``)."""
    lines = (REPO / doc).read_text().splitlines()
    blocks, section, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            section = line.lstrip("#").strip()
        m = FENCE.match(line)
        if m:
            lang = m.group(2).strip()
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            assert end is not None, f"{doc}:{i + 1}: unclosed ```{lang} block"
            blocks.append(Block(doc, i + 1, lang, "\n".join(lines[i + 1 : end]) + "\n", section))
            i = end
        i += 1
    return blocks


def split_commands(code: str) -> list[str]:
    """The commands of a bash block: comments dropped, backslash continuations joined, a for loop kept whole."""
    joined, cur = [], ""
    for raw in code.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            cur += line[:-1].rstrip() + " "
            continue
        cur += line.strip() if cur else line
        if cur.strip():
            joined.append(re.sub(r"\s+", " ", cur.strip()))
        cur = ""
    assert not cur, f"dangling continuation: {cur!r}"
    commands, loop = [], []
    for line in joined:
        if loop or re.match(r"^(for|while)\b", line):
            loop.append(line)
            if re.search(r"(^|;\s*|\s)done$", line):
                commands.append("\n".join(loop))
                loop = []
            continue
        commands.append(line)
    assert not loop, f"unterminated loop: {loop!r}"
    return commands


# -- what is run elsewhere ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Covered:
    by: str  # repository path of the test (or CI script) that runs it
    reason: str
    must_mention: tuple[str, ...]  # strings the covering file must contain (the doc, the section)


# (doc, section or None for every block of that language in the doc, language) -> the test that runs it
COVERED = {
    ("docs/hooks.md", None, "python"): Covered(
        "tests/unit/test_hook_vocabulary.py",
        "runs every python block of docs/hooks.md as a script (each loads tiny itself)",
        ('"docs" / "hooks.md"', "```python"),
    ),
    ("docs/recovery.md", "Adding a condition", "python"): Covered(
        "tests/unit/attacks/test_user_attacks.py",
        "execs the block and runs its conditions through run_recovery",
        ('"docs" / "recovery.md"', "## Adding a condition", "```python"),
    ),
    ("docs/unlearning.md", "Several processes: evaluate, attribute, recover", "bash"): Covered(
        "tests/unit/test_sharded_commands.py",
        "launches evaluate, recover and attribute with the block's accelerate config (2 processes, tiny) and "
        "checks that the block's commands are those",
        ('Path("docs") / "unlearning.md"', "Several processes: evaluate, attribute, recover", "```bash"),
    ),
    ("README.md", "On several GPUs", "bash"): Covered(
        "tests/unit/test_sharded_commands.py",
        "the same launch (evaluate, recover under the block's config) and unlearning under DDP in "
        "tests/unit/unlearning/test_distributed.py; checks that the block's commands are those",
        ('Path("README.md")', "On several GPUs", "```bash"),
    ),
    ("experiments/README.md", None, "python"): Covered(
        "tests/unit/test_experiments.py",
        "saves the block as my_study.py and runs it on the tiny demo's models",
        ('EXPERIMENTS / "README.md"', "```python"),
    ),
}
# (doc, command as written) -> what runs it instead
COVERED_COMMANDS = {
    ("README.md", "make test"): Covered(
        ".ci/run", "CI's entry point runs `make test` (which runs this very test)", ("make test",)
    ),
    ("README.md", "make demo"): Covered(
        "Makefile",
        "`make demo` = `make install` (CI's .ci/run installs first) + `.venv/bin/unpact demo` (checked with "
        "`make -n -o install demo`), and `unpact demo` runs as the README's `unpact demo --out runs/demo`",
        ("demo: install", "$(BIN)/unpact demo"),
    ),
}
# block (as ``str(Block)`` minus the doc's line number: "doc: first line") -> why it cannot run. Keep it empty.
EXCEPTIONS: dict[str, str] = {}


def covering(block: Block) -> Covered | None:
    for (doc, section, lang), cov in COVERED.items():
        if doc == block.doc and lang == block.lang and (section is None or section == block.section):
            return cov
    return None


def exception_key(block: Block) -> str:
    return f"{block.doc}: {block.first_line}"


def all_blocks() -> list[Block]:
    return [b for doc in DOC_FILES for b in extract_blocks(doc)]


def runnable(block: Block) -> bool:
    return block.lang in RUN_LANGUAGES and covering(block) is None and exception_key(block) not in EXCEPTIONS


DOCS_TO_RUN = [doc for doc in DOC_FILES if any(runnable(b) for b in extract_blocks(doc))]


# -- accounting tests (no model, milliseconds) ----------------------------------------------------------------------
def test_every_block_is_run_or_covered(capsys):
    blocks = all_blocks()
    counts: dict[str, dict[str, int]] = {doc: {"run": 0, "covered": 0, "exception": 0, "text": 0} for doc in DOC_FILES}
    used_covered = set()
    unknown = [f"{b} (fence language {b.lang!r})" for b in blocks if b.lang not in LANGUAGES]
    assert not unknown, f"every fence must be one of {sorted(LANGUAGES)}:\n" + "\n".join(unknown)
    for b in blocks:
        if b.lang == "text":
            counts[b.doc]["text"] += 1
        elif exception_key(b) in EXCEPTIONS:
            counts[b.doc]["exception"] += 1
        elif (cov := covering(b)) is not None:
            counts[b.doc]["covered"] += 1
            used_covered |= {k for k, v in COVERED.items() if v is cov}
        else:
            counts[b.doc]["run"] += 1
    with capsys.disabled():
        print("\ndocs snippets: run / covered elsewhere / explicit exceptions (text blocks, not run)")
        for doc, c in counts.items():
            print(f"  {doc}: {c['run']} / {c['covered']} / {c['exception']} ({c['text']})")
        for key, reason in EXCEPTIONS.items():
            print(f"  NOT RUN: {key}: {reason}")
    assert set(COVERED) == used_covered, f"COVERED entries that match no block: {set(COVERED) - used_covered}"
    stale = set(EXCEPTIONS) - {exception_key(b) for b in blocks}
    assert not stale, f"EXCEPTIONS that match no block: {stale}"
    for cov in [*COVERED.values(), *COVERED_COMMANDS.values()]:
        path = REPO / cov.by
        assert path.is_file(), f"{cov.by} (said to run a docs block) does not exist"
        text = path.read_text()
        for needle in cov.must_mention:
            assert needle in text, f"{cov.by} (said to run a docs block) does not contain {needle!r}"
    commands = {(b.doc, c) for b in blocks if runnable(b) and b.lang == "bash" for c in split_commands(b.code)}
    assert set(COVERED_COMMANDS) <= commands, f"COVERED_COMMANDS not in any doc: {set(COVERED_COMMANDS) - commands}"
    # the assumption behind `make demo` being covered: its recipe is exactly `unpact demo` once installed
    proc = subprocess.run(["make", "-s", "-n", "-o", "install", "demo"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.split() == [".venv/bin/unpact", "demo"], proc.stdout + proc.stderr


def test_every_substitution_is_used():
    counts: dict[int, int] = {}
    for b in all_blocks():
        if not runnable(b):
            continue
        if b.lang == "python":
            substitute(b.code, counts)
        else:
            for cmd in split_commands(b.code):
                if (b.doc, cmd) not in COVERED_COMMANDS:
                    substitute(cmd, counts)
    unused = [SUBSTITUTIONS[i] for i, n in sorted(counts.items()) if n == 0]
    assert not unused, f"substitutions that no longer match any docs snippet (remove them): {unused}"


def test_block_splitting():
    code = "a --x 1 \\\n    --y 2   # note\n# only a comment\nfor s in p q \\\n    r; do\n  echo $s\ndone  # end\nb\n"
    assert split_commands(code) == ["a --x 1 --y 2", "for s in p q r; do\necho $s\ndone", "b"]


# -- running: a warm interpreter that forks one process per command -------------------------------------------------
# Starting Python and importing torch, transformers, TransformerLens and nnsight costs ~8 s of CPU per command,
# several times the work of a command on tiny. So ``unpact ...`` and ``python SCRIPT.py ...`` reach a "zygote": one
# interpreter per session that imports the toolkit once and forks a fresh child per command (its own process, cwd,
# environment, argv, stdin/stdout/stderr and exit code; module state as after a fresh import). The commands still
# run through bash exactly as written; only ``unpact``, ``python`` and ``.venv/bin/python`` of the doc's working
# directory are small shims that hand their argv and file descriptors to the zygote (anything else `python` is asked
# to do runs the venv's real interpreter). UNPACT_DOCS_COLD=1 runs every command as a cold process instead.
ZYGOTE = r"""
import importlib, json, os, pkgutil, runpy, select, signal, socket, struct, sys, traceback

for name in ("torch", "transformers", "transformers.models.llama.modeling_llama", "pandas", "matplotlib.pyplot",
             "transformer_lens", "nnsight", "unpact_mech"):
    try:
        importlib.import_module(name)
    except Exception as err:  # preloading only saves time: the command itself reports a failing import
        print(f"zygote: preloading {name}: {err!r}", file=sys.stderr)
import unpact_mech
for info in pkgutil.walk_packages(unpact_mech.__path__, "unpact_mech.", onerror=lambda name: None):
    try:
        importlib.import_module(info.name)
    except Exception as err:
        print(f"zygote: preloading {info.name}: {err!r}", file=sys.stderr)


def child(req, fds):
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        os.close(fd)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    sys.argv = list(req["argv"])
    code = 0
    try:
        if req["kind"] == "unpact":  # what the console script does
            from unpact_mech.cli import main

            code = main()
        else:  # python SCRIPT ARGS
            sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code
    except BaseException:
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code & 0xFF)


server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
server.listen(16)
print("ready", flush=True)
running = {}  # pid -> the client's connection
while True:
    readable, _, _ = select.select([server, *running.values()], [], [], 0.02)
    for conn in readable:
        if conn is server:
            conn, _ = server.accept()
            data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
            while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
                more = conn.recv(1 << 16)
                if not more:
                    break
                data += more
            req = json.loads(data[4:])
            pid = os.fork()
            if pid == 0:
                server.close()
                for other in running.values():
                    other.close()
                conn.close()
                child(req, fds)
            for fd in fds:
                os.close(fd)
            running[pid] = conn
        else:  # the client went away (killed on a timeout): so does its command
            pid = next(p for p, c in running.items() if c is conn)
            os.kill(pid, signal.SIGKILL)
    for pid, conn in list(running.items()):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            try:
                conn.sendall(str(code if code >= 0 else 128 - code).encode())
            except OSError:
                pass
            conn.close()
            del running[pid]
"""
CLIENT = r"""
import json, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["UNPACT_DOCS_ZYGOTE"])
payload = json.dumps({"kind": sys.argv[1], "argv": sys.argv[2:], "cwd": os.getcwd(), "env": dict(os.environ)})
socket.send_fds(s, [struct.pack("!I", len(payload.encode())) + payload.encode()], [0, 1, 2])
answer = b""
while chunk := s.recv(64):
    answer += chunk
sys.exit(int(answer) if answer else 1)
"""
SHIMS = {
    "unpact": '#!/bin/sh\nexec "$UNPACT_DOCS_PYTHON" -S "$UNPACT_DOCS_CLIENT" unpact unpact "$@"\n',
    "python": '#!/bin/sh\ncase "$1" in *.py) [ -f "$1" ] && exec "$UNPACT_DOCS_PYTHON" -S "$UNPACT_DOCS_CLIENT" '
    'script "$@";; esac\nexec "$UNPACT_DOCS_PYTHON" "$@"\n',
}
SHIMS["python3"] = SHIMS["python"]


def environment(venv: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTEST_CURRENT_TEST", "PYTEST_VERSION"):
        env.pop(name, None)
    return env


@dataclass
class Launcher:
    venv: Path  # what a doc's working directory shows as .venv
    env: dict[str, str]


@pytest.fixture(scope="session")
def launcher(tmp_path_factory):
    real_venv = Path(sys.prefix)
    if os.environ.get("UNPACT_DOCS_COLD") == "1":
        yield Launcher(real_venv, environment(real_venv))
        return
    root = tmp_path_factory.mktemp("docs-launcher")
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    for entry in real_venv.iterdir():
        if entry.name != "bin":
            (venv / entry.name).symlink_to(entry)
    for entry in (real_venv / "bin").iterdir():
        if entry.name not in SHIMS:
            (venv / "bin" / entry.name).symlink_to(entry)
    for name, text in SHIMS.items():
        (venv / "bin" / name).write_text(text)
        (venv / "bin" / name).chmod(0o755)
    (root / "zygote.py").write_text(ZYGOTE)
    (root / "client.py").write_text(CLIENT)
    sock_dir = Path(tempfile.mkdtemp(prefix="unpact-docs-"))  # AF_UNIX paths are short
    env = environment(venv)
    real_python = real_venv / "bin" / "python"
    env.update(
        UNPACT_DOCS_PYTHON=str(real_python if real_python.exists() else sys.executable),
        UNPACT_DOCS_CLIENT=str(root / "client.py"),
        UNPACT_DOCS_ZYGOTE=str(sock_dir / "zygote.sock"),
    )
    proc = subprocess.Popen(
        [env["UNPACT_DOCS_PYTHON"], str(root / "zygote.py"), env["UNPACT_DOCS_ZYGOTE"]],
        cwd=root,
        env=environment(real_venv),
        stdout=subprocess.PIPE,
        stderr=open(root / "zygote.log", "w"),  # noqa: SIM115 (closed with the process)
        text=True,
        start_new_session=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], COMMAND_TIMEOUT_S)
        assert ready and proc.stdout.readline().strip() == "ready", (root / "zygote.log").read_text()
        yield Launcher(venv, env)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(sock_dir, ignore_errors=True)


WORKER = r"""
import json, os, sys, traceback
proto = os.fdopen(os.dup(1), "w", buffering=1)
namespace = {"__name__": "__main__"}
for request in sys.stdin:
    req = json.loads(request)
    sys.stdout.flush(); sys.stderr.flush()
    log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1); os.dup2(log, 2); os.close(log)
    ok = True
    try:
        with open(req["path"]) as f:
            exec(compile(f.read(), req["path"], "exec"), namespace)
    except SystemExit as e:
        ok = e.code in (None, 0)
        traceback.print_exc()
    except BaseException:
        ok = False
        traceback.print_exc()
    sys.stdout.flush(); sys.stderr.flush()
    proto.write(json.dumps({"ok": ok}) + "\n")
"""


class PythonSession:
    """One interpreter per doc (``.venv/bin/python`` of the doc's directory): its python blocks run in one
    namespace, in order, each saved to a file first."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        (cwd.parent / "docs_worker.py").write_text(WORKER)
        self.proc = subprocess.Popen(
            [str(cwd / ".venv" / "bin" / "python"), str(cwd.parent / "docs_worker.py")],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def run(self, path: Path, log: Path) -> tuple[bool, str]:
        self.proc.stdin.write(json.dumps({"path": str(path), "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], COMMAND_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        output = log.read_text() if log.exists() else ""
        if not line:
            self.close()
            return False, output + f"\n[no answer from the python worker within {COMMAND_TIMEOUT_S} s]"
        return json.loads(line)["ok"], output

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def out_dir(command: str) -> str | None:
    m = re.search(r"--out (\S+)", command)
    return m.group(1) if m else None


# command as run -> a pristine copy of its --out directory, for an identical command in a later doc
_SHARED: dict[str, Path] = {}


def shareable(command: str, cwd: Path) -> bool:
    """An ``unpact`` command with ``--out`` that reads nothing an earlier command wrote into ``cwd``."""
    out = out_dir(command)
    if not command.startswith("unpact ") or out is None or "\n" in command:
        return False
    written = [p.name for p in cwd.iterdir() if not p.is_symlink()]
    return not any(w != out and w.split("=")[-1].split("/")[0] in written for w in shlex.split(command)[2:])


def run_command(command: str, cwd: Path, env: dict[str, str], store: Path) -> tuple[bool, str, float]:
    start, out = time.monotonic(), out_dir(command)
    if command in _SHARED and out is not None and not (cwd / out).exists():
        shutil.copytree(_SHARED[command], cwd / out, symlinks=True)
        return True, "", 0.0
    share = shareable(command, cwd)
    proc = subprocess.Popen(
        ["bash", "-e", "-o", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return False, output + f"\n[killed after {COMMAND_TIMEOUT_S} s]", time.monotonic() - start
    ok = proc.returncode == 0 and "Traceback (most recent call last)" not in output
    if proc.returncode != 0:
        output += f"\n[exit code {proc.returncode}]"
    elif ok and share and (cwd / out).is_dir():
        _SHARED[command] = store / f"shared-{len(_SHARED)}"
        shutil.copytree(cwd / out, _SHARED[command], symlinks=True)
    return ok, output, time.monotonic() - start


def tail(text: str, n: int = 25) -> str:
    return "\n".join("    " + ln for ln in text.strip().splitlines()[-n:])


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("docs-shared")


@pytest.mark.parametrize("doc", DOCS_TO_RUN)
def test_doc_snippets_run(doc, tmp_path, launcher, shared_store, capsys):
    """Every runnable block of ``doc``, in order, in one working directory: exit 0, no traceback."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    for name in MIRRORED:
        if (REPO / name).exists():
            (cwd / name).symlink_to(REPO / name)
    (cwd / ".venv").symlink_to(launcher.venv)
    failures, timings = [], []
    python: PythonSession | None = None
    try:
        for n, block in enumerate(extract_blocks(doc)):
            if not runnable(block):
                continue
            if block.lang == "python":
                python = python or PythonSession(cwd, launcher.env)
                path = tmp_path / f"block{n}_line{block.line}.py"
                path.write_text(substitute(block.code))
                start = time.monotonic()
                ok, output = python.run(path, tmp_path / f"block{n}.log")
                ok = ok and "Traceback (most recent call last)" not in output
                timings.append((time.monotonic() - start, f"python block at line {block.line}"))
                if not ok:
                    failures.append(f"{block}\n  python block (run as {path}) failed:\n{tail(output)}")
                continue
            for command in split_commands(block.code):
                if (doc, command) in COVERED_COMMANDS:
                    continue
                run = substitute(command)
                ok, output, seconds = run_command(run, cwd, launcher.env, shared_store)
                timings.append((seconds, run))
                if not ok:
                    shown = command if run == command else f"{command}\n  run as:  {run}"
                    failures.append(f"{block}\n  command: {shown}\n  output:\n{tail(output)}")
    finally:
        if python is not None:
            python.close()
    with capsys.disabled():
        print(f"\n{doc}: {sum(s for s, _ in timings):.0f} s")
        for seconds, what in timings:
            print(f"  {seconds:6.1f} s  {what.splitlines()[0][:110]}")
    assert not failures, f"{len(failures)} docs snippet(s) of {doc} failed:\n\n" + "\n\n".join(failures)
