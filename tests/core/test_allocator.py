"""pyanom.allocator: glibc keeps freed activation memory; the opt-out is honoured."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import pyanom.allocator as a; print(a.retain_freed_memory())"


def probe(**env) -> str:
    return subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env},
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="mallopt is glibc's")
def test_glibc_takes_the_setting():
    assert probe(PYANOM_MALLOC="") == "True"


def test_opt_out():
    assert probe(PYANOM_MALLOC="system") == "False"


def test_creating_a_detector_applies_it():
    code = "import pyanom, pyanom.allocator as a; pyanom.create('patchcore'); print(a._done)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYANOM_MALLOC": ""},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(sys.platform.startswith("linux"))
