"""Load a ``torch.export`` program (``*.pt2``) without unpickling anything, as a standard-op graph.

Two steps:

1. **No pickle.** ``torch.export.load`` unpickles weights stored in pickle format and falls back
   to ``torch.load(weights_only=False)`` when a safe load fails. Before loading, the archive's
   payload configs are read (plain JSON) and a file that stores any weight, constant or object
   by pickle is refused; the load itself then runs with ``torch.load`` forced to
   ``weights_only=True``, so even the legacy fallback cannot execute code.
2. **Raise to modules.** An exported program is a graph of ATen calls (``aten.conv2d`` on weight
   tensors, ``aten.batch_norm``, ``aten.add.Tensor``). Quantbench's quantizer, exporter and splitter
   work on modules (``nn.Conv2d``, ``nn.BatchNorm2d``) and Python operators, so each known ATen call
   is re-emitted through :class:`~quantbench.models.sources.graph.GraphBuilder`; unknown calls are
   kept as they are (they run in float). Shapes fixed at export time (``view(x, [1, 512])``) keep
   the batch dimension dynamic.

Example:
    >>> imported = import_pt2("model.pt2")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import operator
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.models.sources.graph import GraphBuilder
from quantbench.models.sources.onnx_import import ImportedGraph

__all__ = ["import_pt2"]


def _refuse_pickled_payloads(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            for name in names:
                base = name.rsplit("/", 1)[-1]
                if base.startswith(("custom_obj_", "opaque_obj_")):
                    raise QuantbenchError(f"{path}: holds pickled Python objects ({name}); quantbench loads "
                                          "programs of tensors only")
                if name.endswith(("weights_config.json", "constants_config.json")) or "_config.json" in base:
                    try:
                        doc = json.loads(zf.read(name))
                    except ValueError:
                        continue
                    entries = (doc.get("config") or {}).values() if isinstance(doc, dict) else []
                    if any(isinstance(e, dict) and e.get("use_pickle") for e in entries):
                        raise QuantbenchError(f"{path}: stores tensors by pickle ({name}); re-save it with "
                                              "torch.export.save from plain tensors")
    except zipfile.BadZipFile:
        raise QuantbenchError(f"{path}: not a torch.export program (not a zip archive)") from None
    except OSError as exc:
        raise QuantbenchError(f"{path}: cannot read ({exc.strerror or exc})") from None


@contextmanager
def _weights_only_loads():
    """``torch.load`` with ``weights_only=True`` whatever the caller asks (torch.export's fallback included)."""
    real = torch.load

    def safe(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return real(*args, **kwargs)

    torch.load = safe  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = real  # type: ignore[assignment]


def _load_program(path: Path) -> Any:
    if not path.is_file():
        raise QuantbenchError(f"{path}: torch.export program not found")
    _refuse_pickled_payloads(path)
    try:
        with _weights_only_loads():
            return torch.export.load(str(path))
    except QuantbenchError:
        raise
    except Exception as exc:  # torch raises many kinds for a broken or foreign archive
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise QuantbenchError(f"{path}: cannot load as a torch.export program ({first})") from None


aten = torch.ops.aten


class _Raiser:
    """Re-emits one ATen graph as standard modules/functions."""

    def __init__(self, gm: fx.GraphModule, path: Path, traced_batch: int) -> None:
        self.src, self.path, self.traced = gm, path, traced_batch
        self.b = GraphBuilder()
        self.env: dict[fx.Node, Any] = {}

    def tensor(self, node: Any) -> torch.Tensor:
        if not (isinstance(node, fx.Node) and node.op == "get_attr"):
            raise QuantbenchError(f"{self.path}: weights of a convolution/linear/batch-norm are computed in the "
                                  "graph; only stored weights can be imported")
        obj: Any = self.src
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj.detach()

    def arg(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self.arg(x) for x in a)
        return a

    def conv(self, n: fx.Node, x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0,
             dilation: Any = 1, groups: int = 1) -> fx.Node:
        weight = self.tensor(w)
        if weight.dim() != 4:
            return self.keep(n)
        mod = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=stride,
                        padding=padding, dilation=dilation, groups=groups, bias=b is not None)
        with torch.no_grad():
            mod.weight.copy_(weight)
            if b is not None:
                mod.bias.copy_(self.tensor(b))
        return self.b.module(self.name(n), mod, self.env[x])

    def linear(self, n: fx.Node, x: Any, w: Any, b: Any = None) -> fx.Node:
        weight = self.tensor(w)
        mod = nn.Linear(weight.shape[1], weight.shape[0], bias=b is not None)
        with torch.no_grad():
            mod.weight.copy_(weight)
            if b is not None:
                mod.bias.copy_(self.tensor(b))
        return self.b.module(self.name(n), mod, self.env[x])

    def batch_norm(self, n: fx.Node, x: Any, w: Any, b: Any, mean: Any, var: Any, *rest: Any) -> fx.Node:
        eps = rest[-2] if n.target == aten.batch_norm.default else rest[-1]
        rm = self.tensor(mean)
        rank = len(x.meta["val"].shape) if "val" in x.meta else 4
        mod = (nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d)(rm.numel(), eps=float(eps))
        with torch.no_grad():
            mod.running_mean.copy_(rm)
            mod.running_var.copy_(self.tensor(var))
            if w is not None:
                mod.weight.copy_(self.tensor(w))
            if b is not None:
                mod.bias.copy_(self.tensor(b))
        return self.b.module(self.name(n), mod, self.env[x])

    @staticmethod
    def name(n: fx.Node) -> str:
        """The exported module's own path (``stem.0`` -> ``stem_0``) where the program recorded it."""
        stack = n.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        return path or n.name

    def reshape(self, n: fx.Node, x: Any, shape: Any) -> fx.Node:
        return self.b.reshape(self.env[x], list(shape), traced_batch=self.traced)

    def keep(self, n: fx.Node) -> fx.Node:
        """An ATen call without a standard-op equivalent here: kept as is (runs in float)."""
        args = self.arg(n.args)
        kwargs = {k: self.arg(v) for k, v in n.kwargs.items()}
        if n.op == "get_attr":
            return self.b.const(n.name, self.tensor(n))
        return self.b.call(n.target, *args, **kwargs)

    def run(self) -> fx.GraphModule:
        placeholders = [n for n in self.src.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise QuantbenchError(f"{self.path}: the program takes {len(placeholders)} inputs; an image "
                                  "classifier takes one")
        out_node = None
        for n in self.src.graph.nodes:
            if n.op == "placeholder":
                self.env[n] = self.b.input("x")
            elif n.op == "get_attr":
                continue  # materialised where used
            elif n.op == "call_module":  # torch.export's input guards: shapes are checked by quantbench
                continue
            elif n.op == "output":
                outs = n.args[0]
                out_node = outs[0] if isinstance(outs, (list, tuple)) else outs
            elif n.op == "call_function":
                self.env[n] = self.emit(n)
            else:
                raise QuantbenchError(f"{self.path}: unexpected {n.op} node {n.name!r}")
        if not isinstance(out_node, fx.Node) or out_node not in self.env:
            raise QuantbenchError(f"{self.path}: the program's output does not depend on its input")
        return self.b.build(self.env[out_node], class_name="ExportedProgram")

    def emit(self, n: fx.Node) -> fx.Node:
        handler = _HANDLERS.get(n.target)
        if handler is not None:
            out = handler(self, n, *n.args, **n.kwargs)
            if out is not None:
                return out
        if any(isinstance(a, fx.Node) and a.op == "get_attr" for a in n.args):
            for a in n.args:
                if isinstance(a, fx.Node) and a.op == "get_attr" and a not in self.env:
                    self.env[a] = self.b.const(a.name, self.tensor(a))
        return self.keep(n)


def _fn(fn: Callable[..., Any]) -> Callable[..., fx.Node]:
    def handler(r: _Raiser, n: fx.Node, *args: Any, **kwargs: Any) -> fx.Node:
        for a in args:
            if isinstance(a, fx.Node) and a.op == "get_attr" and a not in r.env:
                r.env[a] = r.b.const(a.name, r.tensor(a))
        return r.b.call(fn, *r.arg(args), **{k: r.arg(v) for k, v in kwargs.items()})

    return handler


def _module(make: Callable[..., nn.Module]) -> Callable[..., fx.Node]:
    def handler(r: _Raiser, n: fx.Node, x: Any, *args: Any, **kwargs: Any) -> fx.Node:
        return r.b.module(r.name(n), make(*args, **kwargs), r.env[x])

    return handler


def _method(name: str) -> Callable[..., fx.Node]:
    def handler(r: _Raiser, n: fx.Node, x: Any, *args: Any, **kwargs: Any) -> fx.Node:
        return r.b.method(name, r.env[x], *r.arg(args), **{k: r.arg(v) for k, v in kwargs.items()})

    return handler


def _passthrough(r: _Raiser, n: fx.Node, x: Any, *args: Any, **kwargs: Any) -> fx.Node:
    return r.env[x]


def _hardtanh(lo: float = -1.0, hi: float = 1.0) -> nn.Module:
    return nn.ReLU6() if (lo, hi) == (0.0, 6.0) else nn.Hardtanh(lo, hi)


def _max_pool(kernel: Any, stride: Any = (), padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False
              ) -> nn.Module:
    return nn.MaxPool2d(kernel, tuple(stride) or None, padding, dilation, ceil_mode=ceil_mode)


def _avg_pool(kernel: Any, stride: Any = (), padding: Any = 0, ceil_mode: bool = False,
              count_include_pad: bool = True, divisor_override: Any = None) -> nn.Module:
    return nn.AvgPool2d(kernel, tuple(stride) or None, padding, ceil_mode, count_include_pad, divisor_override)


def _getitem(r: _Raiser, n: fx.Node, x: Any, i: Any) -> fx.Node:
    src = x.target if isinstance(x, fx.Node) else None
    if src in (aten._native_batch_norm_legit_no_training.default, aten.max_pool2d_with_indices.default) and i == 0:
        return r.env[x]  # those handlers already return the tensor output
    return r.b.call(operator.getitem, r.env[x], i)


def _expand(r: _Raiser, n: fx.Node, x: Any, size: Any, *rest: Any) -> fx.Node:
    dims: list[Any] = list(size)
    if dims and dims[0] == r.traced:
        dims[0] = r.b.method("size", r.env[x], 0)
    return r.b.method("expand", r.env[x], *dims)


_HANDLERS: dict[Any, Callable[..., fx.Node | None]] = {
    aten.conv2d.default: lambda r, n, *a, **k: r.conv(n, *a, **k),
    aten.linear.default: lambda r, n, *a, **k: r.linear(n, *a, **k),
    aten.batch_norm.default: lambda r, n, *a, **k: r.batch_norm(n, *a, **k),
    aten._native_batch_norm_legit_no_training.default: lambda r, n, *a, **k: r.batch_norm(n, *a, **k),
    aten.relu.default: _module(nn.ReLU), aten.relu_.default: _module(nn.ReLU),
    aten.hardtanh.default: _module(_hardtanh), aten.hardtanh_.default: _module(_hardtanh),
    aten.hardswish.default: _module(nn.Hardswish), aten.hardswish_.default: _module(nn.Hardswish),
    aten.hardsigmoid.default: _module(nn.Hardsigmoid), aten.sigmoid.default: _module(nn.Sigmoid),
    aten.silu.default: _module(nn.SiLU), aten.silu_.default: _module(nn.SiLU), aten.tanh.default: _module(nn.Tanh),
    aten.gelu.default: _module(nn.GELU), aten.mish.default: _module(nn.Mish),
    aten.leaky_relu.default: _module(nn.LeakyReLU), aten.elu.default: _module(nn.ELU),
    aten.add.Tensor: _fn(operator.add), aten.add_.Tensor: _fn(operator.add),
    aten.sub.Tensor: _fn(operator.sub), aten.mul.Tensor: _fn(operator.mul), aten.mul_.Tensor: _fn(operator.mul),
    aten.div.Tensor: _fn(operator.truediv), aten.cat.default: _fn(torch.cat),
    aten.adaptive_avg_pool2d.default: _module(nn.AdaptiveAvgPool2d),
    aten.max_pool2d.default: _module(_max_pool), aten.max_pool2d_with_indices.default: _module(_max_pool),
    aten.avg_pool2d.default: _module(_avg_pool),
    aten.mean.dim: _method("mean"), aten.flatten.using_ints: _fn(torch.flatten),
    aten.view.default: lambda r, n, x, s: r.reshape(n, x, s), aten.reshape.default: lambda r, n, x, s: r.reshape(n, x, s),
    aten._unsafe_view.default: lambda r, n, x, s: r.reshape(n, x, s),
    aten.permute.default: lambda r, n, x, dims: r.b.method("permute", r.env[x], *dims),
    aten.transpose.int: _method("transpose"), aten.unsqueeze.default: _method("unsqueeze"),
    aten.squeeze.dim: _method("squeeze"), aten.squeeze.dims: _method("squeeze"),
    aten.slice.Tensor: _fn(aten.slice.Tensor), aten.select.int: _fn(aten.select.int),
    aten.contiguous.default: _passthrough, aten.clone.default: _passthrough, aten.dropout.default: _passthrough,
    aten.alias.default: _passthrough, aten.detach.default: _passthrough,
    aten.expand.default: _expand, aten.constant_pad_nd.default: _fn(F.pad), aten.pad.default: _fn(F.pad),
    aten.softmax.int: _fn(F.softmax), aten._softmax.default: lambda r, n, x, dim, half: r.b.call(
        F.softmax, r.env[x], dim),
    operator.getitem: _getitem,
}


def import_pt2(path: str | Path, *, input_shape: tuple[int, int, int] | None = None) -> ImportedGraph:
    """Load and convert the program at ``path`` (see the module docstring).

    Raises:
        QuantbenchError: a missing, foreign or pickling archive, not one 4-D image input, a shape that
            disagrees with ``input_shape``, or a graph that does not run on a batch of images.
    """
    path = Path(path)
    ep = _load_program(path)
    gm = ep.module()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    val = placeholders[0].meta.get("val") if placeholders else None
    if val is None or len(val.shape) != 4:
        raise QuantbenchError(f"{path}: the program's input is not a 4-D image batch")
    dims = [int(d) if isinstance(d, int) or str(d).isdigit() else None for d in val.shape]
    chw = tuple(dims[1:])
    if input_shape is not None:
        for have, want, what in zip(chw, input_shape, ("channels", "height", "width"), strict=True):
            if have is not None and have != want:
                raise QuantbenchError(f"{path}: the program's input has {what} {have}, but --input-shape asks "
                                      f"for {'x'.join(map(str, input_shape))}")
        chw = tuple(input_shape)
    if any(d is None for d in chw):
        raise QuantbenchError(f"{path}: the program's input shape is symbolic; pass --input-shape CxHxW")
    traced = dims[0] if dims[0] is not None else None
    module = _Raiser(gm, path, traced if traced is not None else -1).run().eval()
    shape = tuple(int(d) for d in chw)
    x = torch.randn((3, *shape), generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            out = module(x)
            alone = torch.cat([module(x[i:i + 1]) for i in range(3)])
            ref = torch.cat([ep.module()(x[i:i + 1]) for i in range(3)]) if traced == 1 else ep.module()(x[:traced])
    except Exception as exc:  # noqa: BLE001 - the program's own error, whatever its type
        raise QuantbenchError(f"{path}: the converted program does not run on a batch of 3 images "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    if out.dim() != 2:
        raise QuantbenchError(f"{path}: the output has shape {tuple(out.shape)}; a classifier outputs (batch, classes)")
    if not torch.allclose(out, alone, rtol=1e-4, atol=1e-4 * max(1.0, float(alone.abs().max()))):
        raise QuantbenchError(f"{path}: the program mixes the images of a batch; quantbench needs a per-image "
                              "classifier")
    n = len(ref)
    diff = float((ref - out[:n]).abs().max())
    if diff > 1e-3 * max(1.0, float(ref.abs().max())):
        raise QuantbenchError(f"{path}: the converted graph differs from the program by {diff:.3g}; please report it")
    notes = [f"torch.export program; converted graph matches the program (max |difference| {diff:.2g})"]
    if traced is not None:
        notes.append(f"the program was exported at batch {traced}; the imported model takes any batch")
    return ImportedGraph(module, shape, int(out.shape[1]), False, traced or 1, traced is not None, notes)
