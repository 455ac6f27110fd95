"""Running `pyanom` as a user does, in a subprocess, and proving that nothing changed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path


def run(*argv, cwd=None, env=None):
    """(exit status, stdout, stderr) of `pyanom ARGV`."""
    done = subprocess.run([sys.executable, "-P", "-m", "pyanom.cli", *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env=None if env is None else {**os.environ, **env})
    return done.returncode, done.stdout, done.stderr


def digest(root: Path) -> dict:
    """Every file under root with its checksum: to prove nothing changed."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def failed_cleanly(code, err, *needles):
    """Exit status 2, no traceback, and the error one line (the last; progress bars may come before
    it) holding every needle."""
    assert code == 2, err
    assert "Traceback" not in err, err
    message = err.rstrip("\n").split("\n")[-1]
    assert message.startswith("pyanom ") and ": error: " in message, err
    for needle in needles:
        assert needle in message, err
