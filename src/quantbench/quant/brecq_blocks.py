"""Reconstruction units found on the traced graph: blocks between single-tensor cuts.

Why from the graph: block reconstruction (BRECQ, QDrop) must work on any traceable CNN, not
only on zoo classes, so a "block" cannot be a class name. The definition used here is
structural: a *cut* is a value of the fx graph that is, at the moment it is computed, the only
value the rest of the network still needs (everything computed before it has been used up).
Between two consecutive cuts lies a piece of network with one tensor in and one tensor out.
In a residual network the skip connection keeps the block's input alive until the residual
``add``, so no cut falls inside a residual block and the pieces are exactly the residual blocks;
in a plain chain every op is a cut, and pieces holding no quantized layer (ReLU, pooling,
flatten) are merged into the unit before them, so a chain gives one unit per layer, which is
what BRECQ does for layers outside residual blocks (the stem convolution, the classifier).

A block without a skip connection (MobileNetV2's inverted residual that changes width or
stride: expand, depthwise, project in a chain) has a cut between every two layers, yet BRECQ
rounds it as one block: a depthwise convolution rounded on its own is what 4-bit MobileNets
lose most to. The graph cannot tell such a block from a plain chain; the user's module tree
can. When the float model is given, consecutive units are joined where one of its modules is
a *repeated block*: a module (not the root, not a plain ``Sequential``/``ModuleList``/
``ModuleDict``/``Module`` holder) whose class occurs at least twice in the model, whose
quantized layers are exactly those of two or more consecutive units, and which does not hold
two or more smaller multi-layer blocks of its own (a stage of residual blocks stays one unit
per block); the smallest such module wins. A model written without such modules keeps its
graph units (``granularity="cut"`` always does).

Activation quantizers (``FakeQuant`` nodes that ``prepare`` inserted) are never cuts: a unit
starts at a float value and contains the quantizer of its own input, so the float network and
the quantized network cut at the same values, and the quantizers QDrop drops are inside the
unit being reconstructed.

The same cuts also let AdaRound cache the quantized and float networks' values at each unit
boundary and advance them one unit at a time, instead of running the network from the images
up to every layer (quadratic in depth).

Example:
    >>> units = find_blocks(qm)  # doctest: +SKIP
    >>> [u.layers for u in units][:2]  # doctest: +SKIP
    [('conv1',), ('layer1.0.conv1', 'layer1.0.conv2')]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import Tensor, nn

from quantbench.errors import QuantbenchError
from quantbench.quant.fake import FakeQuant
from quantbench.quant.prepare import QuantizedModel

__all__ = ["GRANULARITIES", "Block", "find_blocks", "propagate", "segment_module"]

GRANULARITIES = ("block", "cut", "stage")


@dataclass(frozen=True)
class Block:
    """One reconstruction unit: the graph nodes after value ``start`` up to value ``end``.

    Attributes:
        start: Name of the node whose value enters the unit (the placeholder for the first).
        end: Name of the node whose value leaves it (for the last unit: the graph's output value).
        nodes: Names of the unit's nodes in execution order (``start`` excluded, ``end`` included).
        layers: Targets of the quantized conv/linear layers in the unit (weights with a quantizer).
        act_quantizers: Targets of the activation quantizers in the unit.
        input_quantizers: Those of ``act_quantizers`` applied directly to the unit's input value
            (QDrop's ``share_input_mask`` drops them with the mask that mixes the float and
            quantized inputs).
        label: The name of a unit joined from several (``first..last``); empty: from the layers.
    """

    start: str
    end: str
    nodes: tuple[str, ...]
    layers: tuple[str, ...]
    act_quantizers: tuple[str, ...]
    input_quantizers: tuple[str, ...] = ()
    label: str = ""

    @property
    def name(self) -> str:
        """A readable name: the common module prefix of its layers (``layer1.0``) or first..last."""
        if self.label:
            return self.label
        if not self.layers:
            return self.end
        parts = [name.split(".") for name in self.layers]
        common: list[str] = []
        for level in zip(*parts, strict=False):
            if len(set(level)) != 1:
                break
            common.append(level[0])
        if common and len(common) < min(len(p) for p in parts):
            return ".".join(common)
        return self.layers[0] if len(self.layers) == 1 else f"{self.layers[0]}..{self.layers[-1]}"


def _is_quantizer(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules.get(str(node.target)), FakeQuant)


def _cuts(graph: fx.Graph, modules: dict[str, nn.Module]) -> list[int]:
    """Indices of the nodes that are single-tensor cuts (see the module docstring)."""
    nodes = list(graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    last_use = [max((index[u] for u in n.users), default=i) if n.op != "get_attr" else i
                for i, n in enumerate(nodes)]
    cuts, reach = [], -1  # reach: the furthest use of any value computed before node i
    for i, n in enumerate(nodes):
        if n.op in ("placeholder", "call_module", "call_function", "call_method") and reach <= i \
                and n.users and not _is_quantizer(n, modules):
            cuts.append(i)
        reach = max(reach, last_use[i])
    return cuts


def find_blocks(qm: QuantizedModel, granularity: str = "block", model: nn.Module | None = None) -> list[Block]:
    """Split the prepared network into reconstruction units (residual blocks, or stages).

    Args:
        qm: A prepared model (its ``net`` is the traced graph with quantizers).
        granularity: ``"cut"``: one unit per piece between cuts (merged so that each holds a
            quantized layer); ``"block"``: those units, joined where ``model``'s module tree
            has a repeated block spanning several (see the module docstring); ``"stage"``:
            blocks further joined while they keep the output channels and the later ones have
            stride 1 (a ResNet stage).
        model: The float model ``prepare`` received (its module names are ``qm``'s layer
            names); without it ``"block"`` is ``"cut"``.

    Returns:
        Units in execution order; together they cover every node between the input and the
        output. A graph with no cut at all gives one unit: the whole network.

    Raises:
        QuantbenchError: Unknown ``granularity``, more than one input, no quantized weight layer,
            or an output that is not a single tensor.

    Example:
        >>> [b.name for b in find_blocks(qm)]  # doctest: +SKIP
        ['conv1', 'layer1.0', 'layer1.1', ..., 'linear']
    """
    if granularity not in GRANULARITIES:
        raise QuantbenchError(f"block reconstruction: granularity {granularity!r} unknown; "
                              f"expected one of: {', '.join(GRANULARITIES)}")
    graph = qm.net.graph
    modules = dict(qm.net.named_modules())
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise QuantbenchError(f"block reconstruction needs a model with one input, this one has {len(inputs)}")
    out = next(n for n in nodes if n.op == "output")
    if not isinstance(out.args[0], fx.Node):
        raise QuantbenchError("block reconstruction needs a model that returns one tensor")
    quantized = {info.name for info in qm.layers if isinstance(getattr(qm.layer(info.name), "weight_fq", None),
                                                                FakeQuant)}
    if not quantized:
        raise QuantbenchError("block reconstruction: no layer has a weight quantizer (all layers FP32?)")
    end_index = nodes.index(out.args[0])
    cuts = [i for i in _cuts(graph, modules) if i <= end_index]
    if cuts[-1] != end_index:  # the output value is always a unit's end
        cuts.append(end_index)
    pieces = [nodes[a + 1: b + 1] for a, b in zip(cuts, cuts[1:], strict=False)]
    starts = [nodes[a] for a in cuts[:-1]]

    def has_layer(piece: list[fx.Node]) -> bool:
        return any(n.op == "call_module" and n.target in quantized for n in piece)

    groups: list[tuple[fx.Node, list[fx.Node]]] = []
    for start, piece in zip(starts, pieces, strict=True):
        if groups and (not has_layer(piece) or not has_layer(groups[-1][1])):
            groups[-1][1].extend(piece)  # trailing ops join the unit before; leading ops the next one
        else:
            groups.append((start, list(piece)))
    blocks = [_block(start, piece, quantized, modules) for start, piece in groups]
    if granularity != "cut" and model is not None:
        blocks = _join_by_modules(blocks, model)
    if granularity == "stage":
        blocks = _stages(blocks, qm)
    return blocks


def _block(start: fx.Node, piece: list[fx.Node], quantized: set[str], modules: dict[str, nn.Module]) -> Block:
    quantizers = [n for n in piece if _is_quantizer(n, modules)]
    return Block(start.name, piece[-1].name, tuple(n.name for n in piece),
                 tuple(str(n.target) for n in piece if n.op == "call_module" and n.target in quantized),
                 tuple(str(n.target) for n in quantizers),
                 tuple(str(n.target) for n in quantizers if n.args[0] is start))


_HOLDERS = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _join_by_modules(blocks: list[Block], model: nn.Module) -> list[Block]:
    """Join consecutive units that one repeated block module of ``model`` spans exactly."""
    unit_of = {layer: i for i, b in enumerate(blocks) for layer in b.layers}
    named = [(path, m) for path, m in model.named_modules() if path]
    counts = Counter(type(m) for _, m in named)

    def span(path: str) -> tuple[int, ...]:
        """The units whose layers lie under ``path`` (empty unless exactly covered)."""
        inside = [layer for layer in unit_of if layer.startswith(path + ".")]
        units = sorted({unit_of[layer] for layer in inside})
        covered = {layer for i in units for layer in blocks[i].layers}
        return tuple(units) if inside and covered == set(inside) else ()

    spans = {path: span(path) for path, m in named if type(m) not in _HOLDERS and counts[type(m)] >= 2}
    spans = {path: units for path, units in spans.items() if units}

    def inner_blocks(path: str) -> list[str]:
        """Multi-layer whole-unit modules strictly inside ``path``, outermost only."""
        found = sorted(p for p, units in spans.items() if p.startswith(path + ".")
                       and sum(len(blocks[i].layers) for i in units) >= 2)
        return [p for p in found if not any(p.startswith(q + ".") for q in found)]

    candidates = {path: units for path, units in spans.items()
                  if len(units) >= 2 and units == tuple(range(units[0], units[-1] + 1))
                  and len(inner_blocks(path)) < 2}
    chosen = [path for path in candidates if not any(q.startswith(path + ".") for q in candidates)]
    joined: list[Block] = []
    firsts = {candidates[path][0]: candidates[path][-1] for path in chosen}
    i = 0
    while i < len(blocks):
        last = firsts.get(i, i)
        run = blocks[i: last + 1]
        joined.append(run[0] if len(run) == 1 else Block(
            run[0].start, run[-1].end, sum((b.nodes for b in run), ()), sum((b.layers for b in run), ()),
            sum((b.act_quantizers for b in run), ()), run[0].input_quantizers))
        i = last + 1
    return joined


def _stages(blocks: list[Block], qm: QuantizedModel) -> list[Block]:
    """Join consecutive blocks whose last layer has the same output channels and whose later
    blocks keep the spatial size (stride 1 everywhere): the blocks of one ResNet stage."""

    def signature(b: Block) -> tuple[int, bool]:
        layers = [qm.layer(n) for n in b.layers]
        last = layers[-1]
        channels = int(last.weight.shape[0])
        keeps_size = all(getattr(m, "stride", (1,)) in ((1,), (1, 1), 1) for m in layers)
        return channels, keeps_size

    merged: list[Block] = []
    for b in blocks:
        channels, keeps = signature(b)
        prev = merged[-1] if merged else None
        if prev is not None and keeps and signature(prev)[0] == channels and len(b.layers) > 1 \
                and len(prev.layers) > 1:
            first = prev.name.partition("..")[0]  # first..last block: each unit named once in progress lines
            merged[-1] = Block(prev.start, b.end, prev.nodes + b.nodes, prev.layers + b.layers,
                               prev.act_quantizers + b.act_quantizers, prev.input_quantizers,
                               f"{first}..{b.name}")
        else:
            merged.append(b)
    return merged


def segment_module(
    net: fx.GraphModule, block: Block, module_for: Callable[[str, nn.Module], nn.Module | None] | None = None
) -> fx.GraphModule:
    """The unit ``block`` of ``net`` as its own GraphModule: one tensor in, the unit's value out.

    The submodules are ``net``'s own objects (not copies), so rounding a layer's weight is seen
    by both. ``module_for(target, module)`` may return another module to call instead (the
    float layer, a dropping quantizer) or None to skip the call (the node's value becomes its
    input: used to take activation quantizers out of the float path).

    Example:
        >>> seg = segment_module(qm.net, find_blocks(qm)[1])  # doctest: +SKIP
        >>> y = seg(x)  # doctest: +SKIP
    """
    by_name = {n.name: n for n in net.graph.nodes}
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {by_name[block.start]: graph.placeholder("x")}
    owners: dict[str, object] = {}

    def arg(n: fx.Node) -> fx.Node:
        if n in env:
            return env[n]
        if n.op == "get_attr":  # a constant defined outside the unit: copy its definition in
            owners[str(n.target)] = _attr(net, str(n.target))
            env[n] = graph.node_copy(n, arg)
            return env[n]
        raise QuantbenchError(f"block {block.name}: node {n.name!r} uses {n.name!r} from outside the block")

    for name in block.nodes:
        node = by_name[name]
        if node.op == "call_module":
            target = str(node.target)
            module = net.get_submodule(target)
            chosen = module_for(target, module) if module_for is not None else module
            if chosen is None:
                env[node] = arg(node.args[0])  # type: ignore[arg-type]
                continue
            owners[target] = chosen
        elif node.op == "get_attr":
            owners[str(node.target)] = _attr(net, str(node.target))
        env[node] = graph.node_copy(node, arg)
    graph.output(env[by_name[block.end]])
    return fx.GraphModule(owners, graph)  # type: ignore[arg-type]


def _attr(root: nn.Module, target: str) -> object:
    obj: object = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def propagate(segment: nn.Module, x: Tensor, batch_size: int = 128) -> Tensor:
    """``segment`` applied to cached values ``x`` in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([segment(x[i: i + batch_size]) for i in range(0, len(x), batch_size)])
