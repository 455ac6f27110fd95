"""Every runnable code block of the documentation runs, so the docs cannot drift from the code.

A page's ```python and ```bash blocks run in order, in a fresh folder, the python blocks sharing
one namespace (as a reader pasting them into one session would). A block that cannot run here
(real data, a server, a cluster, a GPU) is marked on the line before its fence with
``<!-- not run: why -->``; other languages (toml, text, json) are never run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
RUNNABLE = {"python", "bash"}
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
_NOT_RUN = re.compile(r"<!-- not run: .+? -->\s*$")


def code_blocks(text: str) -> list[tuple[str, str, int, bool]]:
    """(language, code, line number, runnable) of each fenced block of a Markdown text."""
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        line = text.count("\n", 0, match.start()) + 1
        lang = match.group(1)
        blocks.append((lang, match.group(2), line, lang in RUNNABLE and not _NOT_RUN.search(before)))
    return blocks


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if any(b[3] for b in code_blocks(p.read_text())))


def test_blocks_are_found_and_marked():
    """The collector sees the guides' blocks, and every unrun python/bash block says why."""
    text = "x\n<!-- not run: needs a GPU -->\n```python\n1/0\n```\n```bash\ntrue\n```\n```toml\na = 1\n```\n"
    assert [(b[0], b[3]) for b in code_blocks(text)] == [("python", False), ("bash", True), ("toml", False)]
    assert len(_pages()) >= 8
    for page in DOCS.rglob("*.md"):
        text = page.read_text()
        for marker in re.findall(r"<!-- not run:(.*?)-->", text):
            assert marker.strip(), f"{page}: a 'not run' marker without its reason"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": ""}
    module = types.ModuleType("pyanom_docs_page")  # classes defined in a block need a module
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for lang, code, line, runnable in code_blocks(page.read_text()):
        if not runnable:
            continue
        where = f"{page.relative_to(DOCS)}:{line}"
        if lang == "python":
            try:
                exec(compile(code, where, "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"{where}: the python block failed: {type(exc).__name__}: {exc}") from exc
        else:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{where}: the bash block failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
