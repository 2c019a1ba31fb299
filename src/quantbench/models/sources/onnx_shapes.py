"""ONNX shape and tensor-layout operators (reshape, transpose, slicing, padding ...) -> torch ops.

They register in the same :data:`~quantbench.models.sources.onnx_ops.CONVERTERS` table as the
layers; this module only keeps that one from growing past a screenful of operators. Every op that
would move, slice or pad the batch dimension is refused by name: an imported classifier must keep
images independent.

Example:
    >>> "Reshape" in CONVERTERS
    True
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from quantbench.models.sources.onnx_ops import CONVERTERS, Ctx, V, op

__all__ = ["CONVERTERS"]


# ----------------------------------------------------------------------------- shapes


@op("Flatten")
def flatten(c: Ctx, ins: list[V | None]) -> list[V]:
    x = ins[0]
    axis = int(c.attr("axis", 1)) % max(x.t.dim(), 1)
    if axis == 1:
        return [c.call(torch.flatten, x, 1)]
    lead = int(np.prod(x.t.shape[:axis])) if axis else 1
    return [c.reshape(x, [lead, -1])]


@op("Reshape")
def reshape(c: Ctx, ins: list[V | None]) -> list[V]:
    x = ins[0]
    shape = [int(s) for s in c.const_input(ins, 1, "shape")]
    if not c.attr("allowzero", 0):
        shape = [int(x.t.shape[i]) if s == 0 else s for i, s in enumerate(shape)]
    return [c.reshape(x, shape)]


@op("Transpose")
def transpose(c: Ctx, ins: list[V | None]) -> list[V]:
    x = ins[0]
    perm = list(c.attr("perm", list(range(x.t.dim() - 1, -1, -1))))
    if perm[0] != 0:
        raise c.fail(f"a transpose that moves the batch dimension (perm {perm}) is not supported")
    return [c.method("permute", x, *perm)]


@op("Concat")
def concat(c: Ctx, ins: list[V | None]) -> list[V]:
    vals = [v for v in ins if v is not None and v.t.numel() > 0]
    return [c.call(torch.cat, vals, dim=int(c.attr("axis")))]


@op("Split")
def split(c: Ctx, ins: list[V | None]) -> list[V]:
    x = ins[0]
    axis = int(c.attr("axis", 0)) % x.t.dim()
    sizes = c.const_input(ins, 1, "split", None)
    n_out = len(c.node.output)
    if sizes is None:
        size = x.t.shape[axis]
        chunk = math.ceil(size / n_out)
        sizes = [min(chunk, size - i * chunk) for i in range(n_out)]
    parts = c.call(torch.split, x, [int(s) for s in sizes], dim=axis)
    return [V(parts.t[i], c.b.call(operator.getitem, parts.node, i)) for i in range(n_out)]


@op("Slice")
def slice_(c: Ctx, ins: list[V | None]) -> list[V]:
    x = ins[0]
    starts = c.const_input(ins, 1, "starts")
    ends = c.const_input(ins, 2, "ends")
    axes = c.const_input(ins, 3, "axes", list(range(len(starts))))
    steps = c.const_input(ins, 4, None, [1] * len(starts))
    index: list[Any] = [slice(None)] * x.t.dim()
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        if st < 0:
            raise c.fail("slices with a negative step are not supported")
        a = int(a) % x.t.dim()
        if a == 0 and not (s == 0 and e >= 2**31 - 1):
            raise c.fail("slicing the batch dimension is not supported")
        index[a] = slice(int(s), None if e >= 2**62 else int(e), int(st))
    return [c.call(operator.getitem, x, tuple(index))]


@op("Gather")
def gather(c: Ctx, ins: list[V | None]) -> list[V]:
    x, idx = ins
    if not idx.const:
        raise c.fail("gather indices computed from the image are not supported")
    axis = int(c.attr("axis", 0)) % x.t.dim()
    if axis == 0:
        raise c.fail("gathering along the batch dimension is not supported")
    if idx.t.dim() == 0:
        index: list[Any] = [slice(None)] * axis + [int(idx.t.item())]
        return [c.call(operator.getitem, x, tuple(index))]
    return [c.call(torch.index_select, x, axis, V(idx.t.long().reshape(-1)))]


@op("Pad")
def pad(c: Ctx, ins: list[V | None]) -> list[V]:
    x = ins[0]
    pads = [int(p) for p in c.const_input(ins, 1, "pads")]
    value = c.const_input(ins, 2, "value", 0.0) or 0.0
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(c.attr("mode", "constant"))
    if mode is None:
        raise c.fail(f"pad mode {c.attr('mode')!r} is not supported")
    if len(ins) > 3 and ins[3] is not None:
        raise c.fail("Pad with an axes input is not supported")
    rank = len(pads) // 2
    if pads[0] or pads[rank]:
        raise c.fail("padding the batch dimension is not supported")
    torch_pads: list[int] = []
    for d in range(rank - 1, 0, -1):
        torch_pads += [pads[d], pads[rank + d]]
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    if mode == "constant":
        return [c.call(F.pad, x, torch_pads, value=float(value))]
    return [c.call(F.pad, x, torch_pads, mode=mode)]


@op("Squeeze")
def squeeze(c: Ctx, ins: list[V | None]) -> list[V]:
    x = ins[0]
    axes = c.const_input(ins, 1, "axes", None)
    if axes is None:
        axes = [i for i, s in enumerate(x.t.shape) if s == 1 and i > 0]
    dims = tuple(sorted(int(a) % x.t.dim() for a in ([axes] if isinstance(axes, int) else axes)))
    if 0 in dims:
        raise c.fail("squeezing the batch dimension is not supported")
    return [c.method("squeeze", x, dims)]


@op("Unsqueeze")
def unsqueeze(c: Ctx, ins: list[V | None]) -> list[V]:
    x = ins[0]
    axes = c.const_input(ins, 1, "axes")
    axes = [axes] if isinstance(axes, int) else list(axes)
    rank = x.t.dim() + len(axes)
    out = x
    for a in sorted(int(a) % rank for a in axes):
        if a == 0:
            raise c.fail("adding a dimension before the batch is not supported")
        out = c.method("unsqueeze", out, a)
    return [out]


@op("Expand")
def expand(c: Ctx, ins: list[V | None]) -> list[V]:
    x, shape = ins
    target = list(torch.broadcast_shapes(tuple(x.t.shape), tuple(int(s) for s in shape.t.tolist())))
    if len(target) != x.t.dim():
        raise c.fail("an expand that adds dimensions is not supported")
    dims: list[Any] = list(target)
    node = c.n(x)
    if dims and dims[0] == c.traced_batch:
        dims[0] = c.b.method("size", node, 0)
    with torch.no_grad():
        t = x.t.expand(target)
    return [V(t, c.b.method("expand", node, *dims))]


@op("Shape")
def shape(c: Ctx, ins: list[V | None]) -> list[V]:
    dims = list(ins[0].t.shape)
    start, end = int(c.attr("start", 0)), c.attr("end", None)
    return [V(torch.tensor(dims[start:end], dtype=torch.int64))]


@op("Size")
def size(c: Ctx, ins: list[V | None]) -> list[V]:
    return [V(torch.tensor(int(ins[0].t.numel()), dtype=torch.int64))]


@op("Identity", "Dropout")
def identity(c: Ctx, ins: list[V | None]) -> list[V]:
    if c.node.op_type == "Dropout" and len(c.node.output) > 1 and c.node.output[1]:
        raise c.fail("a Dropout whose mask output is used is not supported")
    return [ins[0]]


@op("Cast")
def cast(c: Ctx, ins: list[V | None]) -> list[V]:
    from onnx import helper

    dtype = helper.tensor_dtype_to_np_dtype(int(c.attr("to")))
    target = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
    if target == ins[0].t.dtype:
        return [ins[0]]
    return [c.method("to", ins[0], target)]


@op("Resize", "Upsample")
def resize(c: Ctx, ins: list[V | None]) -> list[V]:
    x = ins[0]
    mode = c.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear") or x.t.dim() != 4:
        raise c.fail(f"resize mode {mode!r} on a rank-{x.t.dim()} tensor is not supported")
    if c.node.op_type == "Upsample":
        scales = c.const_input(ins, 1, "scales")
        size = [int(x.t.shape[2] * scales[2]), int(x.t.shape[3] * scales[3])]
    else:
        sizes = c.const_input(ins, 3, None, None)
        scales = c.const_input(ins, 2, None, None)
        if sizes:
            size = [int(sizes[2]), int(sizes[3])]
        elif scales:
            size = [int(math.floor(x.t.shape[2] * scales[2])), int(math.floor(x.t.shape[3] * scales[3]))]
        else:
            raise c.fail("neither scales nor sizes are given")
    ctm = c.attr("coordinate_transformation_mode", "half_pixel")
    if mode == "nearest":  # integer scale factors (the CNN case) pick the same pixels in every ONNX nearest mode
        return [c.call(F.interpolate, x, size=size, mode="nearest")]
    return [c.call(F.interpolate, x, size=size, mode="bilinear", align_corners=ctm == "align_corners")]
