"""Build a torch.fx graph of STANDARD torch modules and functions, op by op.

Why: models that arrive as a graph (an ONNX file, a ``torch.export`` program) must become the
kind of graph quantbench's quantizer, exporter, linter and splitter already understand -
``nn.Conv2d``/``nn.Linear``/``nn.BatchNorm2d`` modules, ``operator.add``, ``torch.cat``,
``nn.AdaptiveAvgPool2d`` - rather than a zoo of importer-specific wrapper modules that would
hide a residual add or a concatenation from quantizer placement. Both importers
(:mod:`~quantbench.models.sources.onnx_import`, :mod:`~quantbench.models.sources.pt2_import`)
emit through this one builder, so a converted graph looks the same whatever it came from.

Graph formats fix the batch size they were traced with (a ``Reshape`` to ``[1, 512]``).
:meth:`GraphBuilder.reshape` keeps dimension 0 as the runtime batch (``x.size(0)``) whenever the
target shape starts with the traced batch size, so the imported model runs at any batch.

Example:
    >>> import torch
    >>> from torch import nn
    >>> b = GraphBuilder()
    >>> x = b.input("x")
    >>> y = b.module("fc", nn.Linear(4, 2), b.reshape(x, [1, 4], traced_batch=1))
    >>> gm = b.build(y)
    >>> tuple(gm(torch.zeros(3, 1, 2, 2)).shape)
    (3, 2)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

__all__ = ["GraphBuilder", "safe_name"]


def safe_name(text: str, fallback: str = "op") -> str:
    """A Python identifier from an ONNX/aten node name (``/layer1/conv/Conv`` -> ``layer1_conv_Conv``)."""
    name = re.sub(r"\W+", "_", str(text)).strip("_")
    if not name:
        name = fallback
    if name[0].isdigit():
        name = f"{fallback}_{name}"
    return name


class GraphBuilder:
    """Accumulates placeholder, module, constant and function nodes; :meth:`build` makes the GraphModule."""

    def __init__(self) -> None:
        self.root = nn.Module()
        self.graph = fx.Graph()
        self._used: set[str] = set()

    def _unique(self, name: str) -> str:
        base = safe_name(name)
        out, i = base, 1
        while out in self._used or hasattr(self.root, out):
            out = f"{base}_{i}"
            i += 1
        self._used.add(out)
        return out

    def input(self, name: str = "x") -> fx.Node:
        """The model's one input (an NCHW image batch)."""
        return self.graph.placeholder(safe_name(name, "x"))

    def module(self, name: str, mod: nn.Module, *args: Any) -> fx.Node:
        """Register ``mod`` under a unique name derived from ``name`` and call it on ``args``."""
        target = self._unique(name)
        self.root.add_module(target, mod)
        return self.graph.call_module(target, tuple(args))

    def const(self, name: str, value: torch.Tensor) -> fx.Node:
        """A constant tensor (a buffer of the model, so it follows ``.to()`` and ``state_dict``)."""
        target = self._unique(f"const_{name}")
        self.root.register_buffer(target, value.detach().clone())
        return self.graph.get_attr(target)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> fx.Node:
        """A call of a torch/operator function."""
        return self.graph.call_function(fn, tuple(args), kwargs)

    def method(self, name: str, *args: Any, **kwargs: Any) -> fx.Node:
        """A tensor method call (``x.reshape(...)``, ``x.mean(...)``)."""
        return self.graph.call_method(name, tuple(args), kwargs)

    def reshape(self, x: fx.Node, shape: Sequence[int], *, traced_batch: int | None) -> fx.Node:
        """``x.reshape(shape)``, keeping dimension 0 as the runtime batch when ``shape`` starts with the traced one."""
        dims: list[Any] = [int(s) for s in shape]
        if traced_batch is not None and dims and dims[0] == traced_batch:
            dims[0] = self.method("size", x, 0)
        return self.method("reshape", x, tuple(dims))

    def build(self, output: fx.Node, class_name: str = "ImportedModel") -> fx.GraphModule:
        """The finished ``GraphModule`` returning ``output``."""
        self.graph.output(output)
        gm = fx.GraphModule(self.root, self.graph, class_name=class_name)
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        for name in [n for n, _ in gm.named_buffers() if "." not in n]:  # constants no node reads any more
            if not any(node.op == "get_attr" and node.target == name for node in gm.graph.nodes):
                delattr(gm, name)
        gm.graph.lint()
        gm.recompile()
        return gm
