"""The artefact file: exact round trip, documented layout, atomic writes, clear errors on bad files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from quantbench.errors import QuantbenchError
from quantbench.quant.artifact import MAGIC, PackedTensor, load_artifact, read_header, save_artifact
from quantbench.quant.spec import parse_scheme


def _tensors() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "conv1.weight": PackedTensor(
            torch.randint(-8, 8, (4, 3, 3, 3), generator=g, dtype=torch.int8), 4, True
        ),
        "conv1.weight_scale": torch.rand(4, generator=g),
        "layer.act_zp": PackedTensor(torch.tensor([0, 255, 128], dtype=torch.int32), 8, False),
        "odd3": PackedTensor(torch.tensor([-4, 3, 0, 1, -1]), 3, True),
        "w16": PackedTensor(torch.tensor([-32768, 32767], dtype=torch.int16), 16, True),
        "fc.bias": torch.randn(10, generator=g, dtype=torch.float64),
        "half": torch.randn(2, 3, generator=g).half(),
        "bf16": torch.randn(5, generator=g).bfloat16(),
        "scalar": torch.tensor(0.125),
        "empty": torch.empty(0, 4),
        "mask": torch.tensor([True, False, True]),
        "count": torch.tensor([2**40], dtype=torch.int64),
    }


def test_round_trip_is_exact(tmp_path):
    path = tmp_path / "model.qb"
    tensors = _tensors()
    meta = {
        "model": "resnet20",
        "plan": parse_scheme("w4a8").as_dict(),
        "nested": {"x": [1, 2.5, None]},
        "é": "ü",
    }
    written = save_artifact(path, meta, tensors)
    assert written == path.stat().st_size
    meta2, loaded = load_artifact(path)
    assert meta2 == meta
    assert list(loaded) == list(tensors)
    for name, t in tensors.items():
        ref = t.values if isinstance(t, PackedTensor) else t
        assert loaded[name].dtype == ref.dtype and loaded[name].shape == ref.shape, name
        assert torch.equal(loaded[name], ref), name
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_layout_matches_the_documentation(tmp_path):
    path = tmp_path / "m.qb"
    values = torch.randint(-8, 8, (1001,))
    save_artifact(path, {"m": 1}, {"w": PackedTensor(values, 4, True), "s": torch.ones(3)})
    blob = path.read_bytes()
    assert blob[:8] == MAGIC == b"QBENCH1\0"
    (hlen,) = struct.unpack("<Q", blob[8:16])
    assert hlen % 8 == 0
    header = json.loads(blob[16 : 16 + hlen].decode("utf-8"))
    assert header["format_version"] == 1 and header["meta"] == {"m": 1}
    w, s = header["tensors"]
    assert (w["kind"], w["bits"], w["signed"], w["shape"], w["nbytes"]) == ("packed", 4, True, [1001], 501)
    assert (s["kind"], s["dtype"], s["bits"], s["nbytes"]) == ("raw", "float32", 32, 12)
    assert w["offset"] == 0 and s["offset"] == 504  # 8-byte aligned
    assert len(blob) == 16 + hlen + header["payload_nbytes"] == 16 + hlen + 504 + 16
    start = 16 + hlen
    assert np.frombuffer(blob[start + 504 : start + 516], dtype="<f4").tolist() == [1.0, 1.0, 1.0]
    assert read_header(path)["tensors"] == header["tensors"]


def test_int4_file_is_about_half_of_int8(tmp_path):
    q = torch.randint(-8, 8, (100_000,), dtype=torch.int8)
    n4 = save_artifact(tmp_path / "a.qb", {}, {"w": PackedTensor(q, 4, True)})
    n8 = save_artifact(tmp_path / "b.qb", {}, {"w": PackedTensor(q, 8, True)})
    assert n4 - 50_000 == n8 - 100_000 < 300  # the header is the only overhead


def test_overwrite_is_atomic_and_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "sub" / "m.qb"
    save_artifact(path, {"v": 1}, {"x": torch.zeros(2)})
    with pytest.raises(QuantbenchError, match="not JSON-serialisable"):
        save_artifact(path, {"v": object()}, {"x": torch.zeros(2)})
    assert load_artifact(path)[0] == {"v": 1}
    save_artifact(path, {"v": 2}, {"x": torch.ones(2)})
    assert load_artifact(path)[0] == {"v": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.qb"]


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    from quantbench.paths import write_atomic

    path = tmp_path / "m.qbm"
    assert write_atomic(path, [b"old"]) == 3

    def chunks():
        yield b"new, half of it"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, chunks())
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.qbm"]


def test_bad_inputs_to_save(tmp_path):
    with pytest.raises(QuantbenchError, match="Tensor or PackedTensor"):
        save_artifact(tmp_path / "x.qb", {}, {"x": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(QuantbenchError, match="integer tensor"):
        PackedTensor(torch.tensor([0.5]), 4, True)
    with pytest.raises(QuantbenchError, match="out of range"):
        save_artifact(tmp_path / "x.qb", {}, {"x": PackedTensor(torch.tensor([9]), 4, True)})
    with pytest.raises(QuantbenchError, match="complex"):
        save_artifact(tmp_path / "x.qb", {}, {"x": torch.zeros(2, dtype=torch.complex64)})
    assert not (tmp_path / "x.qb").exists()


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.qb"
    save_artifact(path, {"model": "m"}, _tensors())
    return path


def _write(path, blob):
    path.write_bytes(blob)
    return path


def _header_len(blob: bytes) -> int:
    return struct.unpack("<Q", blob[8:16])[0]


def _flip(blob: bytes, i: int) -> bytes:
    return blob[:i] + bytes([blob[i] ^ 0x10]) + blob[i + 1 :]


def _edit_header(blob: bytes, edit) -> bytes:
    hlen = _header_len(blob)
    header = json.loads(blob[16 : 16 + hlen])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return MAGIC + struct.pack("<Q", len(raw)) + raw + blob[16 + hlen :]


@pytest.mark.parametrize(
    "corrupt, needle",
    [
        (lambda b: b"NOTQBEN\0" + b[8:], "not a quantbench artifact"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:10], "too short"),
        (lambda b: b[: 16 + _header_len(b) // 2], "truncated"),
        (lambda b: b + b"\0", "trailing bytes"),
        (lambda b: b[:16] + b"X" + b[17:], "corrupt header"),
        (lambda b: _flip(b, 16 + _header_len(b) + 1), "checksum mismatch"),  # inside conv1.weight
        (lambda b: _flip(b, len(b) - 1), "checksum mismatch"),  # inside the last tensor
        (lambda b: _edit_header(b, lambda h: h.update(format_version=2)), "format_version 2"),
        (lambda b: _edit_header(b, lambda h: h["tensors"][0].update(shape=[4, 3, 3, 4])), "need"),
        (lambda b: _edit_header(b, lambda h: h["tensors"][0].update(offset=10**9)), "outside the payload"),
        (lambda b: _edit_header(b, lambda h: h["tensors"][0].update(dtype="object")), "unsupported"),
        (lambda b: _edit_header(b, lambda h: h["tensors"][0].pop("crc32")), "corrupt tensor entry"),
        (lambda b: _edit_header(b, lambda h: h.pop("tensors")), "corrupt header"),
    ],
)
def test_corrupt_files_are_user_errors_naming_the_file(good, corrupt, needle):
    bad = _write(good.with_name("bad.qb"), corrupt(good.read_bytes()))
    with pytest.raises(QuantbenchError) as err:
        load_artifact(bad)
    assert needle in str(err.value) and str(bad) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(QuantbenchError, match="not found"):
        load_artifact(tmp_path / "nope.qb")
    with pytest.raises(QuantbenchError, match="not found"):
        read_header(tmp_path / "nope.qb")


def test_read_header_checks_truncation_without_reading_the_payload(good):
    assert read_header(good)["meta"] == {"model": "m"}
    bad = _write(good.with_name("cut.qb"), good.read_bytes()[:-3])
    with pytest.raises(QuantbenchError, match="truncated"):
        read_header(bad)
