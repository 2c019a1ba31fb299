"""The rule driver: one pass over the graph dispatching each node to its rule, and the
fallback graph (leaf modules in registration order) for a model torch.fx cannot trace.
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from .findings import ROOT, Finding
from .float_rules import _FloatRules
from .layout_rules import _LayoutRules


class _Linter(_LayoutRules, _FloatRules):
    """Runs every rule over one graph (traced, or the fallback chain of leaf modules)."""

    # ---- driver
    def run(self) -> list[Finding]:
        layers = [n for n in self.graph.nodes if self.is_layer(n)]
        if not layers:
            self.findings.append(
                Finding(
                    "no-quantizable-layer",
                    "error",
                    ROOT,
                    "model",
                    "no nn.Conv2d/nn.Linear module: prepare() has nothing to quantize and refuses the model",
                    "build the network from nn.Conv2d/nn.Linear modules (prepare() matches these exact types)",
                )  # fmt: skip
            )
        for node in self.graph.nodes:
            if node in self.handled:
                continue
            if self.is_layer(node):
                self.check_channels(node)
                self.check_epilogue(node)
            elif self.is_bn(node):
                self.check_bn(node)
            elif self.pad_spec(node) is not None:
                self.check_pad(node)
            elif not self.is_free(node) and not self.is_join(node):
                self.check_unsupported(node)
        return list(dict.fromkeys(self.findings))


# --------------------------------------------------------------------------- fallback (untraceable)


def _innermost_untraceable(model: nn.Module) -> str:
    """The deepest submodule whose own forward fails to trace ("" when only the root fails)."""
    worst, depth = "", -1
    for name, mod in model.named_modules():
        if not name or (not list(mod.children()) and type(mod).__module__.startswith("torch.nn")):
            continue
        try:
            fx.symbolic_trace(mod)
        except Exception:  # fx raises many types
            d = name.count(".")
            if d > depth:
                worst, depth = name, d
    return worst


def _leaf_chain(model: nn.Module) -> fx.Graph:
    """The model's leaf modules in registration order, as if it were an ``nn.Sequential``."""
    tracer = fx.Tracer()
    graph = fx.Graph()
    x = graph.placeholder("x")

    def visit(prefix: str, mod: nn.Module) -> None:
        nonlocal x
        for name, child in mod.named_children():
            qual = f"{prefix}.{name}" if prefix else name
            if tracer.is_leaf_module(child, qual) or not list(child.children()):
                x = graph.call_module(qual, (x,))
            else:
                visit(qual, child)

    visit("", model)
    graph.output(x)
    return graph
