"""Every fenced code block of README.md and docs/**/*.md runs here, or is marked as not runnable here.

Blocks are collected per page, in order, one test per block (id ``PAGE:LINE``, the line of the
opening fence):

- ``python`` blocks run with ``exec``. The python blocks of one page share one namespace, in page
  order, and every page runs in its own fresh temporary folder (the working directory).
- ``bash`` / ``sh`` / ``shell`` / ``console`` blocks run line by line (``\\`` continuations joined,
  ``#`` comments dropped; in ``console`` blocks only the ``$ `` lines). ``faceparse ...`` runs as
  ``sys.executable -m faceparse.cli ...``; ``python -m ...`` and ``python SCRIPT.py ...`` run with
  ``sys.executable`` (a script path is taken relative to the repository when it is not in the page's
  folder). Leading ``NAME=value`` words set environment variables. Anything else (``make``, ``pip``,
  ``git``, pipes, loops...) fails: such a block must be marked.
- ``yaml`` blocks are parsed with ``yaml.safe_load``; every ``class_path`` in them must import and
  accept its ``init_args``.
- Other blocks (no language, ``text``...) are data and are not collected.

A block that cannot run here is marked on the line right before its opening fence with an HTML
comment, which Markdown renders invisibly; the reason is required::

    <!-- doc-test: skip needs CelebAMask-HQ data -->

A marked block is still checked as far as that is possible without running it: python blocks
compile, their imports resolve, ``faceparse.NAME`` attributes exist and ``build_model`` /
``build_dataset`` / ``build_loss`` name registered entries; ``faceparse`` commands exist, their
``--options`` exist, and packaged config names resolve; ``python SCRIPT.py`` scripts exist and
define the ``--options`` used.

docs/quickstart.md is not run here: tests/cli/test_docs.py runs it as written and checks what it promises.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import os
import re
import shlex
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PYTHON_LANGS = {"python", "py", "python3"}
SHELL_LANGS = {"bash", "sh", "shell", "console"}
YAML_LANGS = {"yaml", "yml"}
COLLECTED_LANGS = PYTHON_LANGS | SHELL_LANGS | YAML_LANGS
COVERED_ELSEWHERE = {
    "docs/quickstart.md": "tests/cli/test_docs.py::test_quickstart_runs_as_written runs this page as written",
}
COMMAND_TIMEOUT_S = 300

FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[^\s`{]*)")
MARK = re.compile(r"^\s*<!--\s*doc-test\s*:?(?P<body>.*?)-->\s*$")
SKIP = re.compile(r"^skip\b[\s:]*(?P<reason>.*)$", re.S)
SHELL_OPERATORS = {"&&", "||", "|", ";", "&", ">", ">>", "<", "2>", "2>&1"}


# ------------------------------------------------------------------------------------- collection
@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository, e.g. "docs/models/segface.md"
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    mark: str | None = None  # the text of a doc-test comment right before the fence

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        """The reason of a valid ``skip`` mark (None when the block is not marked)."""
        if self.mark is None:
            return None
        m = SKIP.match(self.mark)
        return m.group("reason").strip() if m else None


@dataclass
class Page:
    blocks: list[Block] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # malformed marks, unclosed fences


def parse_page(text: str, page: str) -> Page:
    """The fenced blocks of a Markdown text, with the doc-test mark of each, and any malformed mark."""
    lines = text.splitlines()
    out = Page()
    fence_lines: set[int] = set()
    i = 0
    while i < len(lines):
        m = FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        j = i + 1
        while j < len(lines) and not re.fullmatch(rf"[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", lines[j]):
            j += 1
        if j == len(lines):
            out.problems.append(f"{page}:{i + 1}: unclosed code fence")
            break
        code = "\n".join(
            line[indent:] if line[:indent].isspace() or not indent else line.lstrip() for line in lines[i + 1 : j]
        )
        prev = MARK.match(lines[i - 1]) if i > 0 else None
        mark = prev.group("body").strip() if prev else None
        out.blocks.append(Block(page, i + 1, m.group("lang").lower(), code + "\n", mark))
        fence_lines.add(i + 1)
        i = j + 1
    for n, line in enumerate(lines, 1):
        mm = MARK.match(line)
        if not mm:
            continue
        body = mm.group("body").strip()
        if n + 1 not in fence_lines:
            out.problems.append(f"{page}:{n}: doc-test mark is not on the line right before a code fence")
        elif not SKIP.match(body) or not SKIP.match(body).group("reason").strip():
            out.problems.append(f"{page}:{n}: doc-test mark must read 'skip REASON' with a reason, got {body!r}")
        else:
            block = next(b for b in out.blocks if b.line == n + 1)
            if block.lang not in COLLECTED_LANGS:
                out.problems.append(f"{page}:{n}: doc-test mark on a '{block.lang or 'text'}' block, which never runs")
    return out


def collect() -> dict[str, Page]:
    return {str(p.relative_to(ROOT)): parse_page(p.read_text(), str(p.relative_to(ROOT))) for p in PAGES}


ALL = collect()
BLOCKS = [b for page in ALL.values() for b in page.blocks if b.lang in COLLECTED_LANGS]


# ----------------------------------------------------------------------------------------- running
@dataclass
class PageRun:
    """State shared by the blocks of one page: its working directory, namespace, what ran."""

    workdir: Path
    namespace: dict
    done: set[int] = field(default_factory=set)
    failed: str | None = None


_RUNS: dict[str, PageRun] = {}


def page_run(page: str, tmp_path_factory: pytest.TempPathFactory) -> PageRun:
    if page not in _RUNS:
        workdir = tmp_path_factory.mktemp(re.sub(r"\W+", "_", page))
        _RUNS[page] = PageRun(workdir, {"__name__": "__doc_page__"})
    return _RUNS[page]


def run_python(block: Block, namespace: dict) -> None:
    # leading newlines: tracebacks give the Markdown file's own line numbers
    exec(compile("\n" * block.line + block.code, str(ROOT / block.page), "exec"), namespace)


def shell_commands(block: Block) -> list[str]:
    """The command lines of a shell block (continuations joined, console prompts stripped)."""
    code = re.sub(r"\\\n", " ", block.code)
    lines = code.splitlines()
    if block.lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    return [line for line in lines if shlex.split(line, comments=True)]


def split_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    env = {}
    while argv and re.match(r"^[A-Za-z_]\w*=", argv[0]):
        key, value = argv[0].split("=", 1)
        env[key] = value
        argv = argv[1:]
    return env, argv


def command_argv(line: str, cwd: Path) -> tuple[dict[str, str], list[str]]:
    """(extra environment, argv) to run a documented command line; raises ValueError if unsupported."""
    env, argv = split_env(shlex.split(line, comments=True))
    bad = [a for a in argv if a in SHELL_OPERATORS or a.endswith(";")]
    if bad or not argv:
        raise ValueError(f"shell syntax {bad} is not run by this test")
    if argv[0] == "faceparse":
        return env, [sys.executable, "-m", "faceparse.cli", *argv[1:]]
    if argv[0] in ("python", "python3"):
        rest = argv[1:]
        if rest and rest[0].endswith(".py") and not (cwd / rest[0]).exists() and (ROOT / rest[0]).exists():
            rest = [str(ROOT / rest[0]), *rest[1:]]
        return env, [sys.executable, *rest]
    raise ValueError(f"'{argv[0]}' is not run by this test")


def run_shell(block: Block, cwd: Path) -> None:
    for line in shell_commands(block):
        try:
            extra, argv = command_argv(line, cwd)
        except ValueError as exc:
            pytest.fail(f"{block.id}: {exc}: {line!r}. Mark the block: <!-- doc-test: skip REASON -->")
        env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", **extra)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        try:
            proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{block.id}: {line!r} ran over {COMMAND_TIMEOUT_S} s")
        assert proc.returncode == 0, (
            f"{block.id}: {line!r} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )


def run_block(block: Block, run: PageRun) -> None:
    if block.lang in PYTHON_LANGS:
        run_python(block, run.namespace)
    else:
        run_shell(block, run.workdir)


def runnable(block: Block) -> bool:
    return block.lang in PYTHON_LANGS | SHELL_LANGS and block.mark is None


# ------------------------------------------------------------------------- checks of marked blocks
def check_python_statically(block: Block) -> None:
    """Syntax, imports, ``faceparse.X`` attributes and registry names of a block that is not run."""
    import faceparse

    tree = ast.parse("\n" * block.line + block.code, str(ROOT / block.page))
    registries = {"build_model": faceparse.MODELS, "build_dataset": faceparse.DATASETS, "build_loss": faceparse.LOSSES}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                _import(alias.name, block, node)
        elif isinstance(node, ast.ImportFrom) and node.module:
            mod = _import(node.module, block, node)
            for alias in node.names:
                if mod is not None and not hasattr(mod, alias.name):
                    _import(f"{node.module}.{alias.name}", block, node)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "faceparse":
            found = hasattr(faceparse, node.attr) or importlib.util.find_spec(f"faceparse.{node.attr}") is not None
            assert found, f"{block.page}:{node.lineno}: faceparse has no '{node.attr}'"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in registries
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            reg, name = registries[node.func.attr], node.args[0].value
            assert name in reg.list(), f"{block.page}:{node.lineno}: '{name}' is not registered ({node.func.attr})"


def _import(name: str, block: Block, node: ast.AST):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        top = name.split(".")[0]
        if top != "faceparse" and exc.name == top:
            return None  # an optional extra that is not installed here
        pytest.fail(f"{block.page}:{getattr(node, 'lineno', '?')}: cannot import {name}: {exc}")


def _subcommand_parser(parser: argparse.ArgumentParser, words: list[str]) -> tuple[argparse.ArgumentParser, int]:
    """The (sub)parser a ``faceparse`` command line reaches, and how many words named it."""
    used = 0
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or used >= len(words) or words[used] not in subs[0].choices:
            return parser, used
        parser = subs[0].choices[words[used]]
        used += 1


def check_shell_statically(block: Block) -> None:
    """Commands, options and packaged configs of a shell block that is not run."""
    from faceparse.cli import CONFIG_DIR, LIGHTNING_SUBCOMMANDS, build_parser

    parser = build_parser()
    for line in shell_commands(block):
        try:
            _, argv = split_env(shlex.split(line, comments=True))
        except ValueError:
            continue  # not a simple command (loops, quotes across lines): nothing to check
        while argv[:1] == ["nice"]:
            argv = argv[3:] if argv[1:2] == ["-n"] else argv[1:]
        if not argv:
            continue
        options = [a.strip("[]").split("=")[0] for a in argv if a.strip("[").startswith("--")]
        if argv[0] == "faceparse":
            assert len(argv) > 1, f"{block.id}: bare 'faceparse'"
            if argv[1] in LIGHTNING_SUBCOMMANDS:
                if "--config" in argv:
                    cfg = argv[argv.index("--config") + 1]
                    if "/" not in cfg and not cfg.endswith((".yaml", ".yml")):
                        assert (CONFIG_DIR / f"{cfg}.yaml").is_file(), f"{block.id}: no packaged config '{cfg}'"
                continue
            sub, used = _subcommand_parser(parser, argv[1:])
            # a command may also take optional methods (`evaluate` and `evaluate consensus`)
            assert used and not any(isinstance(a, argparse._SubParsersAction) and a.required for a in sub._actions), (
                f"{block.id}: '{' '.join(argv[: used + 2])}' is not a faceparse command"
            )
            known = {s for a in sub._actions for s in a.option_strings}
            missing = [o for o in options if o not in known]
            assert not missing, f"{block.id}: 'faceparse {' '.join(argv[1 : used + 1])}' has no option {missing}"
        elif argv[0] in ("python", "python3") and len(argv) > 1 and argv[1].endswith(".py"):
            script = ROOT / argv[1]
            assert script.is_file(), f"{block.id}: no script {argv[1]}"
            src = script.read_text()
            if "add_argument" in src:
                missing = [o for o in options if f'"{o}"' not in src and f"'{o}'" not in src]
                assert not missing, f"{block.id}: {argv[1]} defines no option {missing}"


def check_yaml(block: Block) -> None:
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load(block.code)
    assert data is not None, f"{block.id}: empty YAML"

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            if "class_path" in node:
                mod_name, _, cls_name = node["class_path"].rpartition(".")
                cls = getattr(importlib.import_module(mod_name), cls_name)
                params = inspect.signature(cls).parameters
                takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
                unknown = [k for k in (node.get("init_args") or {}) if k not in params and not takes_any]
                assert not unknown, f"{block.id}: {where}: {node['class_path']} takes no {unknown}"
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(data, "")


# ---------------------------------------------------------------------------------------------- tests
def test_pages_and_marks_are_well_formed():
    assert len(ALL) >= 10 and "README.md" in ALL
    problems = [p for page in ALL.values() for p in page.problems]
    assert not problems, "\n".join(problems)
    assert len(BLOCKS) >= 40


CITED = re.compile(r"\b((?:tests|benchmarks)/[\w/.-]+\.(?:py|md))(?:::(\w+))?")


def test_marks_cite_tests_and_benchmarks_that_exist():
    """A mark that names what covers the block names a file (and test function) that exists."""
    missing = []
    for page in ALL.values():
        for block in page.blocks:
            for path, name in CITED.findall(block.mark or ""):
                if not (ROOT / path).is_file():
                    missing.append(f"{block.id}: {path}")
                elif name and not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M):
                    missing.append(f"{block.id}: {path}::{name}")
    assert not missing, "marks cite what does not exist:\n" + "\n".join(missing)


def test_collector_reads_languages_marks_and_problems():
    text = (
        "Text\n\n<!-- doc-test: skip needs data -->\n```python\nx = 1\n```\n\n"
        "```bash\nfaceparse list models \\\n    'unet*'   # a comment\n```\n\n"
        "```\nplain text\n```\n\n<!-- doc-test: skip -->\n```sh\nmake test\n```\n\n"
        "<!-- doc-test: skip orphan -->\n\nno fence here\n"
    )
    page = parse_page(text, "x.md")
    assert [(b.line, b.lang, b.skip_reason) for b in page.blocks] == [
        (4, "python", "needs data"),
        (8, "bash", None),
        (13, "", None),
        (18, "sh", ""),
    ]
    assert shell_commands(page.blocks[1]) == ["faceparse list models      'unet*'   # a comment"]
    assert len(page.problems) == 2 and "with a reason" in page.problems[0] and "right before" in page.problems[1]
    env, argv = command_argv("A=1 python -m faceparse.cli list models", Path("."))
    assert env == {"A": "1"} and argv[:3] == [sys.executable, "-m", "faceparse.cli"]
    with pytest.raises(ValueError):
        command_argv("make test", Path("."))


@pytest.mark.parametrize(
    "lang, code",
    [
        ("bash", "faceparse bench --modelz '*'\n"),
        ("bash", "faceparse no-such-command x\n"),
        ("bash", "faceparse fit --config no_such_config\n"),
        ("bash", "python benchmarks/consensus_loss.py --no-such-option 1\n"),
        ("python", "import faceparse\nfaceparse.build_model('no_such_model')\n"),
        ("python", "import faceparse\nfaceparse.no_such_function()\n"),
        ("python", "from faceparse.data import NoSuchClass\n"),
        ("python", "x = (\n"),
    ],
)
def test_static_checks_catch_wrong_names(lang, code):
    block = Block("x.md", 1, lang, code, "skip a reason")
    check = check_python_statically if lang == "python" else check_shell_statically
    with pytest.raises((AssertionError, SyntaxError, pytest.fail.Exception)):
        check(block)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_block(block: Block, tmp_path_factory, monkeypatch):
    if block.page in COVERED_ELSEWHERE:
        pytest.skip(COVERED_ELSEWHERE[block.page])
    if block.mark is not None:
        if block.lang in PYTHON_LANGS:
            check_python_statically(block)
        elif block.lang in SHELL_LANGS:
            check_shell_statically(block)
        pytest.skip(block.skip_reason or "malformed mark (see test_pages_and_marks_are_well_formed)")
    if block.lang in YAML_LANGS:
        check_yaml(block)
        return
    run = page_run(block.page, tmp_path_factory)
    monkeypatch.chdir(run.workdir)
    # blocks before this one on the page that this session has not run yet (e.g. with -k)
    for earlier in ALL[block.page].blocks:
        if earlier.line >= block.line or run.failed:
            break
        if runnable(earlier) and earlier.line not in run.done:
            try:
                run_block(earlier, run)
            except BaseException:
                run.failed = earlier.id
                pytest.fail(f"{earlier.id} (run before {block.id}) failed:\n{traceback.format_exc()[-3000:]}")
            run.done.add(earlier.line)
    if run.failed:
        pytest.fail(f"not run: {run.failed}, an earlier block of this page, failed")
    try:
        run_block(block, run)
    except BaseException:
        run.failed = block.id
        raise
    run.done.add(block.line)
