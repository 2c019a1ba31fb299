"""A device's measured FP32 and INT8 GEMM ceilings, with the runtime it has. Needs only numpy (+ onnxruntime).

Copied beside ``run_bundle.py`` into every device bundle (the runner imports it), so, like the runner, it
must not depend on quantbench: a Raspberry Pi installs onnxruntime, not PyTorch, and not even the ``onnx``
package (onnxruntime does not depend on it). The few ONNX graphs timed here are therefore written as
protobuf bytes by hand (:func:`onnx_model`, a dozen fields of ``onnx.proto``); quantbench's tests check
them with ``onnx.checker``.

What is timed (each kernel in its own onnxruntime session, weights constant so the runtime pre-packs them,
as it does for a model's convolutions):

* GEMMs of the im2col shapes of ResNet-18/50 3x3 convolutions at 224x224, batch 1 (stages 1, 3, 4):
  ``MatMul`` (fp32) vs ``MatMulInteger`` (u8 activations x s8 weights -> int32, the kernels a QDQ model's
  convolutions run on);
* one convolution, 3x3 64->64 at 56x56 (ResNet stage 1): ``Conv`` (fp32) vs ``QLinearConv`` (u8 x s8,
  requantized to u8).

The int8 weights span the full s8 range: only speed is measured, and on x86 without VNNI the fast
``vpmaddubsw`` path timed here is the one a model with 7-bit weights (``--weight-range reduced``,
ORT's ``reduce_range``) runs exactly, so the ceiling is what such a model can reach there.

Without onnxruntime, fp32 falls back to ``numpy.matmul`` on the same GEMM shapes (its BLAS, its own thread
count) and int8 is skipped with the reason: numpy has no integer GEMM kernel worth calling a ceiling.

Units, stated because papers mix them: one MAC = one multiply-accumulate; ``gmacs_per_s`` = MACs per
second / 1e9; ``gops_per_s`` = 2 x ``gmacs_per_s`` (FLOP/s for fp32, integer op/s for int8). A ceiling
is the fastest kernel of its precision (median of its timed calls). The timing protocol is the caller's
``timer`` (the runner's ``measure``; quantbench's ``measure_latency``), so this file holds none.

Example:
    >>> from bundle_runner import measure  # doctest: +SKIP
    >>> c = gemm_ceilings(2, 2.5, lambda fn, t: measure(fn, warmup=1, min_iters=3, min_time_s=t))  # doctest: +SKIP
    >>> c["int8_over_fp32"]  # doctest: +SKIP
    2.4
"""

from __future__ import annotations

CONVENTION = "gmacs_per_s = multiply-accumulates per second / 1e9; gops_per_s = 2 x gmacs_per_s (FLOP/s for fp32)"

GEMMS = (  # (M, K, N): im2col of a 3x3 conv at 224x224 input, batch 1 (output pixels, 9 x C_in, C_out)
    (3136, 576, 64),  # ResNet stage 1: 56x56, 64 -> 64
    (196, 2304, 256),  # stage 3: 14x14, 256 -> 256
    (49, 4608, 512),  # stage 4: 7x7, 512 -> 512
)
CONV = (64, 64, 56)  # C_in, C_out, H = W of the 3x3 convolution timed directly

_DTYPES = {"float32": 1, "uint8": 2, "int8": 3, "int32": 6}  # onnx TensorProto.DataType


# ----------------------------------------------------------------------------- protobuf, by hand (onnx.proto)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # a negative int64 is written as its two's complement
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _len(field: int, payload) -> bytes:
    payload = payload.encode() if isinstance(payload, str) else bytes(payload)
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def tensor(name: str, array) -> bytes:
    """TensorProto: dims (1), data_type (2), name (8), raw_data (9, little-endian)."""
    import numpy as np

    a = np.ascontiguousarray(array)
    return (b"".join(_int(1, d) for d in a.shape) + _int(2, _DTYPES[a.dtype.name]) + _len(8, name)
            + _len(9, a.astype(a.dtype.newbyteorder("<")).tobytes()))


def value_info(name: str, dtype: str, shape) -> bytes:
    """ValueInfoProto: name (1), type (2) = TypeProto.tensor_type (1) {elem_type (1), shape (2) {dim (1)}}."""
    dims = b"".join(_len(1, _int(1, d)) for d in shape)
    return _len(1, name) + _len(2, _len(1, _int(1, _DTYPES[dtype]) + _len(2, dims)))


def node(op: str, inputs, outputs, **ints) -> bytes:
    """NodeProto: input (1), output (2), op_type (4), attribute (5) = {name (1), ints (8), type (20) = INTS}."""
    attrs = b"".join(_len(5, _len(1, k) + b"".join(_int(8, v) for v in vs) + _int(20, 7)) for k, vs in ints.items())
    return b"".join(_len(1, i) for i in inputs) + b"".join(_len(2, o) for o in outputs) + _len(4, op) + attrs


def onnx_model(nodes, inputs, outputs, initializers, opset: int = 13) -> bytes:
    """ModelProto bytes: ir_version (1) 8, producer (2), graph (7), opset_import (8) = {domain "", version}."""
    graph = (b"".join(_len(1, n) for n in nodes) + _len(2, "ceiling") + b"".join(_len(5, t) for t in initializers)
             + b"".join(_len(11, v) for v in inputs) + b"".join(_len(12, v) for v in outputs))
    return _int(1, 8) + _len(2, "quantbench") + _len(7, graph) + _len(8, _len(1, "") + _int(2, opset))


# ----------------------------------------------------------------------------- the timed kernels


def gemm_model(m: int, k: int, n: int, precision: str, seed: int = 0) -> tuple[bytes, dict]:
    """``MatMul`` fp32 or ``MatMulInteger`` u8 x s8 of ``[m, k] x [k, n]`` (weights constant); bytes and feeds."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if precision == "int8":
        a, b = rng.integers(0, 256, (m, k), dtype=np.uint8), rng.integers(-128, 128, (k, n), dtype=np.int8)
        op, out = "MatMulInteger", "int32"
    else:
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        op, out = "MatMul", "float32"
    model = onnx_model([node(op, ["A", "B"], ["Y"])], [value_info("A", a.dtype.name, a.shape)],
                       [value_info("Y", out, (m, n))], [tensor("B", b)])
    return model, {"A": a}


def conv_model(c_in: int, c_out: int, hw: int, precision: str, seed: int = 0) -> tuple[bytes, dict]:
    """A 3x3 ``Conv`` (fp32) or ``QLinearConv`` (u8 x s8 -> u8), stride 1, padding 1, batch 1."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pads = {"pads": (1, 1, 1, 1)}
    wshape, xshape, yshape = (c_out, c_in, 3, 3), (1, c_in, hw, hw), (1, c_out, hw, hw)
    if precision != "int8":
        x = rng.standard_normal(xshape, np.float32)
        return onnx_model([node("Conv", ["X", "W"], ["Y"], **pads)], [value_info("X", "float32", xshape)],
                          [value_info("Y", "float32", yshape)], [tensor("W", rng.standard_normal(wshape, np.float32))]
                          ), {"X": x}
    x = rng.integers(0, 256, xshape, dtype=np.uint8)
    scalars = [tensor("xs", np.float32(0.02)), tensor("xz", np.uint8(128)), tensor("ws", np.float32(0.01)),
               tensor("wz", np.int8(0)), tensor("ys", np.float32(0.5)), tensor("yz", np.uint8(128)),
               tensor("W", rng.integers(-128, 128, wshape, dtype=np.int8))]
    return onnx_model([node("QLinearConv", ["X", "xs", "xz", "W", "ws", "wz", "ys", "yz"], ["Y"], **pads)],
                      [value_info("X", "uint8", xshape)], [value_info("Y", "uint8", yshape)], scalars), {"X": x}


def ort_runner(model: bytes, feeds: dict, threads):
    """A zero-argument closure running ``model`` once in onnxruntime (CPU, ``threads`` intra-op; 0/None: default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or 0)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, feeds)


def _kernels(has_ort: bool):
    """(kernel, precision, op, MACs, builder) for every timed kernel."""
    out = []
    for m, k, n in GEMMS:
        ops = (("fp32", "onnxruntime MatMul"), ("int8", "onnxruntime MatMulInteger u8s8")) if has_ort else \
            (("fp32", "numpy matmul"),)
        out += [(f"gemm {m}x{k}x{n}", prec, op, m * k * n, (m, k, n)) for prec, op in ops]
    if has_ort:
        c_in, c_out, hw = CONV
        for prec, op in (("fp32", "onnxruntime Conv"), ("int8", "onnxruntime QLinearConv u8s8")):
            out.append((f"conv3x3 {c_in}->{c_out} {hw}x{hw}", prec, op, c_in * c_out * 9 * hw * hw, CONV))
    return out


def _numpy_gemm(m: int, k: int, n: int):
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    return lambda: np.matmul(a, b)


def gemm_ceilings(threads, budget_s: float, timer) -> dict:
    """Time every kernel for ``budget_s / kernels`` seconds each; the fastest of each precision is its ceiling.

    Args:
        threads: onnxruntime intra-op threads (0 or None: onnxruntime's default, recorded as 0).
        budget_s: timed seconds in all (session creation and warm-up come on top).
        timer: ``timer(fn, min_time_s) -> {"median_ms": ..., "iterations": ...}`` (the caller's protocol; an
            ``other_cpu_share`` it returns - other processes' share of the CPU while timing - is kept per kernel).

    Returns:
        ``{"convention", "threads", "runtime", "budget_s", "kernels": [...], "fp32": {...}, "int8": {...},
        "int8_over_fp32", "skipped": [...]}``; ``fp32``/``int8``: ``gmacs_per_s``, ``gops_per_s``, ``kernel``,
        ``op`` of the fastest kernel; ``int8`` and the ratio are None where no INT8 kernel ran.
    """
    try:
        import onnxruntime

        runtime, has_ort = f"onnxruntime {onnxruntime.__version__}", True
    except ImportError:
        import numpy

        runtime, has_ort = f"numpy {numpy.__version__}", False
    kernels = _kernels(has_ort)
    per = max(0.0, float(budget_s)) / len(kernels)
    rows, skipped = [], [] if has_ort else [{"precision": "int8", "reason": "onnxruntime is not installed"}]
    for name, prec, op, macs, dims in kernels:
        if not has_ort:
            fn = _numpy_gemm(*dims)
        else:
            fn = ort_runner(*(gemm_model(*dims, prec) if name.startswith("gemm") else conv_model(*dims, prec)), threads)
        stats = timer(fn, per)
        rate = macs / (stats["median_ms"] / 1000.0) / 1e9
        rows.append({"kernel": name, "precision": prec, "op": op, "macs": macs, "median_ms": stats["median_ms"],
                     "iterations": stats["iterations"], "gmacs_per_s": rate, "gops_per_s": 2 * rate,
                     **{k: stats[k] for k in ("other_cpu_share",) if stats.get(k) is not None}})
    best = {}
    for r in rows:
        if r["precision"] not in best or r["gmacs_per_s"] > best[r["precision"]]["gmacs_per_s"]:
            best[r["precision"]] = r
    summary = {p: {k: best[p][k] for k in ("gmacs_per_s", "gops_per_s", "kernel", "op")} if p in best else None
               for p in ("fp32", "int8")}
    ratio = best["int8"]["gmacs_per_s"] / best["fp32"]["gmacs_per_s"] if "int8" in best else None
    return {"convention": CONVENTION, "threads": int(threads or 0) if has_ort else None, "runtime": runtime,
            "budget_s": float(budget_s), "kernels": rows, **summary, "int8_over_fp32": ratio, "skipped": skipped}


def describe(ceilings: dict) -> str:
    """One line: ``fp32 41.0 GMAC/s (82 GFLOP/s), int8 97.3 GMAC/s; int8/fp32 2.37 (onnxruntime 1.20.1, 2 threads)``."""
    parts = []
    for p in ("fp32", "int8"):
        c = ceilings.get(p)
        if c:
            parts.append(f"{p} {c['gmacs_per_s']:.1f} GMAC/s ({c['gops_per_s']:.0f} G{'FLOP' if p == 'fp32' else 'OP'}/s)")
    ratio = ceilings.get("int8_over_fp32")
    threads = ceilings.get("threads")
    where = f"{ceilings.get('runtime')}, " + ("BLAS default threads" if threads is None else
                                              "default threads" if threads == 0 else f"{threads} threads")
    return ", ".join(parts) + (f"; int8/fp32 {ratio:.2f}" if ratio else "") + f" ({where})"
