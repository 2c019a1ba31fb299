"""Bit packing: round trip for every width, exact sizes, documented bit order, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantbench.errors import QuantbenchError
from quantbench.quant.pack import _pack_generic, pack_bits, packed_nbytes, unpack_bits


def _range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


@st.composite
def codes(draw):
    bits = draw(st.integers(2, 16))
    signed = draw(st.booleans())
    lo, hi = _range(bits, signed)
    values = draw(st.lists(st.one_of(st.sampled_from([lo, hi, 0 if signed else hi // 2]), st.integers(lo, hi)),
                           max_size=41))  # fmt: skip
    return bits, signed, values


@settings(max_examples=100, deadline=None)
@given(case=codes())
def test_round_trip_and_size(case):
    bits, signed, values = case
    data = pack_bits(np.array(values, dtype=np.int64), bits, signed)
    assert len(data) == packed_nbytes(len(values), bits) == -(-len(values) * bits // 8)
    out = unpack_bits(data, bits, signed, len(values))
    assert out.dtype == np.int32 and out.tolist() == values


@pytest.mark.parametrize("bits", range(2, 17))
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 1001])
def test_every_width_with_extremes_and_odd_lengths(bits, signed, n):
    lo, hi = _range(bits, signed)
    rng = np.random.default_rng(bits * 100 + n)
    values = rng.integers(lo, hi + 1, size=n)
    values[0], values[-1] = lo, hi
    data = pack_bits(torch.from_numpy(values), bits, signed)
    np.testing.assert_array_equal(unpack_bits(data, bits, signed, n), values)


def test_sizes_int4_int8():
    for n in range(0, 12):
        assert len(pack_bits(np.zeros(n, dtype=np.int8), 4, True)) == (n + 1) // 2
        assert len(pack_bits(np.zeros(n, dtype=np.int8), 8, True)) == n
        assert len(pack_bits(np.zeros(n, dtype=np.int8), 3, True)) == (3 * n + 7) // 8


def test_documented_bit_order():
    # INT4: value 2j in the low nibble, 2j+1 in the high nibble; two's complement
    assert pack_bits([1, -1, 7], 4, True) == bytes([0xF1, 0x07])
    # INT8 / INT16: plain little-endian two's complement
    v = np.array([-128, -1, 0, 5, 127])
    assert pack_bits(v, 8, True) == v.astype(np.int8).tobytes()
    w = np.array([-32768, -2, 300, 32767])
    assert pack_bits(w, 16, True) == w.astype("<i2").tobytes()
    # INT2: four per byte, first value in the lowest two bits
    assert pack_bits([1, 2, 3, 0], 2, False) == bytes([0b00_11_10_01])
    # INT3: a value may straddle a byte boundary (bits 6..8)
    assert pack_bits([7, 0, 7], 3, False) == bytes([0b11_000_111, 0b1])


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_fast_paths_agree_with_the_generic_packer(bits):
    values = np.random.default_rng(0).integers(0, 2**bits, size=1000).astype(np.uint16)
    assert pack_bits(values, bits, False) == _pack_generic(values, bits)


def test_accepts_tensors_and_arrays_of_any_int_dtype():
    ref = pack_bits([-3, 2, 1], 4, True)
    for q in (
        torch.tensor([-3, 2, 1], dtype=torch.int8),
        torch.tensor([-3, 2, 1]),
        np.array([-3, 2, 1], np.int16),
    ):
        assert pack_bits(q, 4, True) == ref
    assert pack_bits(torch.tensor([[1, 2], [3, 4]]), 8, False) == bytes([1, 2, 3, 4])  # C order


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda: pack_bits([8], 4, True), "value 8 out of range for int4"),
        (lambda: pack_bits([-1], 4, False), "value -1 out of range for uint4"),
        (lambda: pack_bits([70000], 16, False), "uint16"),
        (lambda: pack_bits(torch.tensor([0.5]), 4, True), "integer"),
        (lambda: pack_bits(np.array([1.0]), 4, True), "integer"),
        (lambda: pack_bits([1], 1, True), "bit width 1"),
        (lambda: pack_bits([1], 17, True), "bit width 17"),
        (lambda: unpack_bits(b"\x00", 4, True, 3), "expected 2"),
        (lambda: unpack_bits(b"\x00\x00\x00", 4, True, 3), "expected 2"),
    ],
)
def test_errors(call, needle):
    with pytest.raises(QuantbenchError, match=needle):
        call()


def test_ten_million_int4_pack_round_trip():
    """Large tensors go through the chunked, vectorised path (its speed is a benchmark matter)."""
    q = torch.randint(-8, 8, (10_000_000,), dtype=torch.int8)
    data = pack_bits(q, 4, True)
    assert len(data) == 5_000_000
    np.testing.assert_array_equal(unpack_bits(data, 4, True, q.numel()), q.numpy())


def test_generic_width_large_tensor_is_vectorised():
    q = np.random.default_rng(0).integers(-16, 16, size=3_000_001)
    start = time.perf_counter()
    out = unpack_bits(pack_bits(q, 5, True), 5, True, q.size)
    assert time.perf_counter() - start < 2.0
    np.testing.assert_array_equal(out, q)
