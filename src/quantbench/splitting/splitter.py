"""Cut any traceable network into an edge part and a cloud part: ``cloud(edge(x)) == model(x)`` exactly.

Candidate split points come from the traced graph: a point is a place in execution order where
exactly ONE tensor is still needed by what follows - the feature map the edge would send. Both
parts are ``torch.fx.GraphModule`` s built from the model's own graph and sharing its modules
(training a part trains the model), so the composition runs the same operations in the same
order as the model.

Numbering: a model that declares its blocks (``split_blocks()`` returning module names, as the
zoo's ResNets, VGGs, MobileNetV2 and PhiNet do) is numbered by block - point 0 is right after
the stem, point N after block N, as published split-computing studies count. Any other model
gets every single-tensor point of its graph, numbered in order and labelled with the module or
operation that produces the tensor. ``quantbench split --list-splits`` prints them.

Example:
    >>> from quantbench.models import build_model
    >>> pts = split_points(build_model("resnet20"), (3, 32, 32))
    >>> pts[0].label, pts[3].label, len(pts)
    ('stem', 'layer1.2', 10)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from quantbench.errors import QuantbenchError

__all__ = ["SplitModel", "SplitPoint", "block_names", "num_split_points", "split_model", "split_points"]


@dataclass(frozen=True)
class SplitPoint:
    """A place the model can be cut: the tensor that crosses and what produces it."""

    index: int
    label: str
    unit: str
    value: str  # the fx node whose tensor crosses
    feature_shape: tuple[int, ...] | None = None


@dataclass
class SplitModel:
    """An edge/cloud pair and where it was cut."""

    edge: nn.Module
    cloud: nn.Module
    after: int
    after_name: str
    unit: str


def _trace(model: nn.Module) -> fx.GraphModule:
    """Trace WITHOUT copying: the parts must share the model's modules."""
    if isinstance(model, fx.GraphModule):
        return model
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types
        from quantbench.quant.fold import trace

        trace(model)  # the error message naming the untraceable module
        raise QuantbenchError(f"model {type(model).__name__} cannot be traced for splitting: {exc}") from None


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        return str(list(stack.values())[-1][0])
    return str(node.target) if node.op == "call_module" else node.name


def _scalars(nodes: list[fx.Node]) -> set[fx.Node]:
    """Nodes that compute sizes, not tensors (``x.size(0)``, ``x.shape[1] // 2``): never a feature map."""
    import builtins
    import operator

    out: set[fx.Node] = set()
    for n in nodes:
        if (n.op == "call_method" and n.target in ("size", "dim", "numel")) or (
                n.op == "call_function" and n.target in (builtins.getattr, builtins.len)
                and (n.target is builtins.len or n.args[1] in ("shape", "ndim"))):
            out.add(n)
        elif n.op in ("call_function", "call_method") and n.all_input_nodes and all(
                a in out for a in n.all_input_nodes) and n.target is not torch.tensor:
            out.add(n)
        elif n.op == "call_function" and n.target is operator.getitem and n.args and n.args[0] in out:
            out.add(n)
    return out


def _crossings(gm: fx.GraphModule) -> list[tuple[int, fx.Node]]:
    """(position, value) for every position after which exactly one tensor - and nothing else - is still needed."""
    nodes = list(gm.graph.nodes)
    scalars = _scalars(nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((pos[u] for u in n.users), default=-1) for n in nodes}
    out: list[tuple[int, fx.Node]] = []
    live: set[fx.Node] = set()
    for i, n in enumerate(nodes):
        if n.op == "output":
            break
        if n.op != "get_attr":
            live.add(n)
        live = {v for v in live if last_use[v] > i}
        if len(live) == 1 and n.op != "placeholder":
            (v,) = live
            final = all(u.op == "output" for u in v.users)  # cutting after the last op sends the logits
            if v.op != "placeholder" and v not in scalars and not final and (not out or out[-1][1] is not v):
                out.append((i, v))
    return out


def _shapes(gm: fx.GraphModule, input_shape: tuple[int, ...] | None) -> dict[str, Any]:
    if input_shape is None:
        return {}
    from torch.fx.passes.shape_prop import ShapeProp

    was = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
    except Exception as exc:  # the model's own error
        raise QuantbenchError(f"split: the model does not run on a {'x'.join(map(str, input_shape))} input: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    finally:
        gm.train(was)
    return {n.name: n.meta.get("tensor_meta") for n in gm.graph.nodes}


def _points(gm: fx.GraphModule, model: nn.Module, input_shape: tuple[int, ...] | None) -> list[SplitPoint]:
    meta = _shapes(gm, input_shape)
    crossings = _crossings(gm)

    def shape(v: fx.Node) -> tuple[int, ...] | None:
        m = meta.get(v.name)
        return tuple(m.shape[1:]) if m is not None and hasattr(m, "shape") else None

    declared = getattr(model, "split_blocks", None)
    if callable(declared):
        blocks = list(declared())
        by_block: dict[str, fx.Node] = {}
        first_of: dict[str, int] = {}
        nodes = list(gm.graph.nodes)
        for i, n in enumerate(nodes):
            path = _module_path(n)
            for b in blocks:
                if path == b or path.startswith(b + "."):
                    by_block[b] = n  # last node inside the block: its output
                    first_of.setdefault(b, i)
        values = {v: i for i, v in crossings}
        if blocks and all(b in by_block and by_block[b] in values for b in blocks) and blocks[0] in first_of:
            if getattr(model, "split_stem", "stem") == "input":
                x = next(n for n in nodes if n.op == "placeholder")
                stem: tuple[str, fx.Node] | None = ("input", x)
            else:
                before = [v for i, v in crossings if i < first_of[blocks[0]]]
                stem = ("stem", before[-1]) if before else None
            if stem is not None:
                unit = getattr(model, "split_unit", "block")
                pts = [SplitPoint(0, stem[0], unit, stem[1].name,
                                  tuple(input_shape) if stem[1].op == "placeholder" and input_shape else shape(stem[1]))]
                pts += [SplitPoint(k, b, unit, by_block[b].name, shape(by_block[b])) for k, b in enumerate(blocks, 1)]
                return pts
    return [SplitPoint(k, _module_path(v), "graph point", v.name, shape(v)) for k, (_, v) in enumerate(crossings)]


def split_points(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> list[SplitPoint]:
    """Every place ``model`` can be cut (see the module docstring); ``input_shape`` adds feature shapes.

    Raises:
        QuantbenchError: an untraceable model, or one that does not run on ``input_shape``.
    """
    return _points(_trace(model), model, input_shape)


def num_split_points(model: nn.Module) -> int:
    """The largest split index N."""
    return len(split_points(model)) - 1


def block_names(model: nn.Module) -> list[str]:
    """Labels of the split points, in order (index N = split N)."""
    return [p.label for p in split_points(model)]


def split_model(model: nn.Module, after: int, input_shape: tuple[int, ...] | None = None) -> SplitModel:
    """Cut ``model`` at split point ``after`` (an index of :func:`split_points`).

    Raises:
        QuantbenchError: a model that cannot be traced, or ``after`` out of range (naming the range).
    """
    gm = _trace(model)
    points = _points(gm, model, input_shape)
    last = len(points) - 1
    if not points:
        raise QuantbenchError(f"split: {type(model).__name__} has no point where a single tensor crosses")
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= last:
        unit = points[0].unit
        raise QuantbenchError(f"split: {type(model).__name__} can be split at {unit} 0..{last} "
                              f"(see --list-splits), got {after!r}")
    point = points[after]
    nodes = list(gm.graph.nodes)
    cut = next(n for n in nodes if n.name == point.value)
    ancestors: set[fx.Node] = set()
    stack = [cut]
    while stack:
        n = stack.pop()
        if n in ancestors:
            continue
        ancestors.add(n)
        stack.extend(n.all_input_nodes)

    edge_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in nodes:
        if n in ancestors:
            env[n] = edge_graph.node_copy(n, lambda a: env[a])
    edge_graph.output(env[cut])

    cloud_graph = fx.Graph()
    cenv: dict[fx.Node, fx.Node] = {cut: cloud_graph.placeholder("features")}
    pos = nodes.index(cut)
    for n in nodes[pos + 1:]:
        for a in n.all_input_nodes:
            if a not in cenv:
                if a.op != "get_attr":
                    raise QuantbenchError(f"split: more than one tensor crosses point {after}")  # pragma: no cover
                cenv[a] = cloud_graph.node_copy(a, lambda b: cenv[b])
        if n.op == "output":
            cloud_graph.output(cenv[n.args[0]] if isinstance(n.args[0], fx.Node) else
                               fx.map_arg(n.args[0], lambda b: cenv[b]))
            break
        if n in ancestors:  # (only get_attr can be both)
            continue
        cenv[n] = cloud_graph.node_copy(n, lambda b: cenv[b])
    edge = fx.GraphModule(gm, edge_graph, class_name="Edge")
    cloud = fx.GraphModule(gm, cloud_graph, class_name="Cloud")
    edge.train(model.training)
    cloud.train(model.training)
    return SplitModel(edge, cloud, after, point.label, point.unit)
