"""The .pyanom archive under damage: every byte of a small archive changed, the file cut at every
length, headers that claim huge sizes. Loading either gives back exactly what was saved or
refuses with an ArchiveError naming the file: never a crash, a hang, another exception, or an
allocation of the size a damaged header claims. Each load runs in this process under a memory
cap (256 MB beyond what the process already maps), so a huge allocation fails the test instead of
the machine."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from fuzzing import fuzz, memory_cap
from hypothesis import given
from hypothesis import strategies as st

from pyanom import archive
from pyanom.archive import ArchiveError, load_archive, read_header, save_archive

CONFIG = {"detector": "patchcore", "config": {"seed": 0, "layers": ["stride8", "stride16"], "name": "Flasche Ü"},
          "threshold": 1.5}
TENSORS = {"memory_bank": torch.arange(24, dtype=torch.float32).reshape(6, 4), "labels": torch.tensor([0, 1, 1]),
           "scalar": torch.tensor(2.5, dtype=torch.float64), "flags": torch.tensor([True, False])}


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("archive") / "m.pyanom"
    save_archive(path, CONFIG, TENSORS)
    return path.read_bytes()


def _load_damaged(path, data: bytes, original: bytes) -> None:
    path.write_bytes(data)
    try:
        with memory_cap():
            config, tensors = load_archive(path)
    except ArchiveError as err:
        assert str(path) in str(err)
        return
    assert data == original, "a damaged archive loaded without an error"
    assert config == CONFIG and all(torch.equal(tensors[k], v) for k, v in TENSORS.items())


def test_every_single_byte_changed_is_refused(tmp_path, original):
    """Each byte in turn replaced by its bitwise complement (the flip every bit of it takes)."""
    path = tmp_path / "damaged.pyanom"
    for i in range(len(original)):
        damaged = bytearray(original)
        damaged[i] ^= 0xFF
        _load_damaged(path, bytes(damaged), original)


def test_every_cut_is_refused(tmp_path, original):
    path = tmp_path / "cut.pyanom"
    for length in range(len(original)):
        _load_damaged(path, original[:length], original)


@fuzz(scale=2)
@given(data=st.data())
def test_random_damage_is_refused(tmp_path, original, data):
    """A few bytes set to random values, a bit flipped, a piece cut out or bytes appended."""
    damaged = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["byte", "bit", "cut", "append"]))
        i = data.draw(st.integers(0, max(0, len(damaged) - 1)))
        if kind == "byte":
            damaged[i] = data.draw(st.integers(0, 255))
        elif kind == "bit":
            damaged[i] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del damaged[i:i + data.draw(st.integers(1, 16))]
        else:
            damaged += data.draw(st.binary(min_size=1, max_size=16))
    _load_damaged(tmp_path / "damaged.pyanom", bytes(damaged), original)


def _with_header(original: bytes, edit) -> bytes:
    """The archive with its safetensors JSON header changed by edit(header) (lengths kept right)."""
    n = struct.unpack("<Q", original[:8])[0]
    header = json.loads(original[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + original[8 + n:]


@pytest.mark.parametrize("edit", [
    lambda h: h["memory_bank"].update(shape=[2**31, 2**31]),
    lambda h: h["memory_bank"].update(shape=[2**62, 4]),
    lambda h: h["memory_bank"].update(data_offsets=[0, 2**62]),
    lambda h: h["memory_bank"].update(shape=[-1, 4]),
    lambda h: h["memory_bank"].update(dtype="F64"),
    lambda h: h["labels"].update(data_offsets=[0, 96]),
    lambda h: h.update({"huge": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}}),
], ids=["shape 2^62 elements", "shape 2^64 elements", "offsets far past the end", "negative shape",
        "other dtype", "overlapping tensors", "extra tensor claiming 4 TB"])
def test_headers_claiming_huge_or_wrong_sizes_are_refused(tmp_path, original, edit):
    _load_damaged(tmp_path / "claims.pyanom", _with_header(original, edit), original)


@pytest.mark.parametrize("length", [2**63 - 1, 2**40, 100_000_001, 10**6])
def test_header_length_past_the_file_is_refused(tmp_path, original, length):
    _load_damaged(tmp_path / "length.pyanom", struct.pack("<Q", length) + original[8:], original)


def test_read_header_of_damaged_files_is_an_archive_error(tmp_path, original):
    """The header-only reader (pyanom info, serve's model list) refuses as load does."""
    path = tmp_path / "h.pyanom"
    for i in range(0, len(original), 7):
        damaged = bytearray(original)
        damaged[i] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            read_header(path)
        except ArchiveError as err:
            assert str(path) in str(err)
        assert archive.is_archive(path) in (True, False)
