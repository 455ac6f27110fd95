"""Shared fixtures: where the real data lives, and small synthetic sets."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Makes `import torch` fail, as on a line PC without PyTorch.
_NO_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
"""


@pytest.fixture(scope="session")
def without_torch():
    """run(script) -> CompletedProcess: the script in a fresh interpreter where importing torch fails."""

    def run(script: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-P", "-c", _NO_TORCH + script], capture_output=True, text=True,
                              timeout=timeout)

    return run


def data_root() -> Path:
    """../shared/data beside the repository (CI), or $PYANOM_DATA."""
    return Path(os.environ.get("PYANOM_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.fail(f"real data not found at {root}: set PYANOM_DATA or place shared/ beside the repo")
    return root


@pytest.fixture(scope="session")
def texture_set(tmp_path_factory) -> Path:
    """A small synthetic inspection set (MVTec layout) shared by the CLI and plugin tests."""
    from pyanom.data.synthetic import make_inspection_set

    root = tmp_path_factory.mktemp("texture")
    make_inspection_set(root, kind="texture", n_train=24, n_test_good=6, n_test_defect=6, size=128, seed=1)
    return root


@pytest.fixture(scope="session")
def readme_detector_examples() -> list[str]:
    """The detector classes of the guide "Writing a detector plugin" (docs/guides/plugins.md):
    [MeanColour, TinyAutoencoder], so the docs are what the tests run."""
    text = (REPO / "docs" / "guides" / "plugins.md").read_text()
    return [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "class " in block]


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """install(module, source, entry_points): a throwaway plugin package, a module plus a
    *.dist-info whose entry_points.txt registers `entry_points` ({name: "module:Class"})."""
    installed = []

    def install(module: str, source: str, entry_points: dict[str, str]) -> None:
        site = tmp_path / f"site-{module}"
        site.mkdir()
        (site / f"{module}.py").write_text(source)
        info = site / f"{module}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text("[pyanom.detectors]\n" + lines)
        monkeypatch.syspath_prepend(str(site))
        importlib.invalidate_caches()
        installed.append(module)

    yield install
    for module in installed:
        sys.modules.pop(module, None)
