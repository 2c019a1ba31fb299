"""Model preparation: fold BatchNorm, then place quantizers where integer kernels would.

The rule, applied on the torch.fx graph after BN folding:

* every conv/linear gets a weight quantizer (its :class:`LayerSpec` ``weight``) and a
  quantizer on its input value (``act``);
* ops that integer engines run on quantized tensors - residual ``add``, ``mul``, ``cat``,
  average pooling - get quantizers on their inputs (the plan's ``join_act``: the default
  ``act`` spec, at least 8 bits unless ``QuantPlan.joins`` is ``"same"``);
* ops that commute with quantization (ReLU, max-pool, flatten, reshape, slicing, zero
  padding) need none, so a conv followed by ReLU is quantized *after* the ReLU, exactly
  like a fused conv+ReLU kernel; the final logits stay float.

One quantizer is shared by every consumer of a value that asks for the same spec, so a
value is quantized once, as a deployed graph would do. The placement is what
:mod:`quantbench.engines.export` writes as QuantizeLinear/DequantizeLinear pairs, so the
simulated model is the deployed model.

Example:
    >>> qm = prepare(model, parse_scheme("w8a8"))  # doctest: +SKIP
    >>> calibrate(qm, calib_images)  # doctest: +SKIP
    >>> logits = qm(images)  # doctest: +SKIP
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.quant.fake import FakeQuant
from quantbench.quant.fold import fold_batchnorm
from quantbench.quant.observers import NonFiniteError
from quantbench.quant.spec import LayerSpec, QuantPlan, QuantSpec


class QConv2d(nn.Conv2d):
    """A (BN-folded) Conv2d whose weight passes through ``weight_fq`` on every call."""

    weight_fq: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight_fq(self.weight), self.bias)


class QLinear(nn.Linear):
    """A Linear whose weight passes through ``weight_fq`` on every call."""

    weight_fq: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_fq(self.weight), self.bias)


_QCLASS: dict[type, type] = {nn.Conv2d: QConv2d, nn.Linear: QLinear}

# Ops whose tensor inputs an integer engine wants quantized (besides conv/linear).
_JOIN_FUNCTIONS = {
    operator.add,
    torch.add,
    operator.mul,
    torch.mul,
    torch.cat,
    torch.matmul,
    operator.matmul,
    F.adaptive_avg_pool2d,
    F.avg_pool2d,
}
_JOIN_METHODS = {"add", "mul", "mean"}
_JOIN_MODULES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)


@dataclass
class LayerInfo:
    """A quantizable layer: its module name, type, resolved spec and position."""

    name: str
    kind: str
    spec: LayerSpec
    index: int
    is_first: bool
    is_last: bool
    input_quantizer: str | None = None


class QuantizedModel(nn.Module):
    """A prepared model: the traced, BN-folded network with fake quantizers in place.

    Attributes:
        net: The ``torch.fx.GraphModule`` (quantizers are its submodules).
        plan: The :class:`QuantPlan` it was prepared with.
        layers: One :class:`LayerInfo` per conv/linear, in execution order.
        act_sites: Activation quantizer name -> ``{"value": producing node, "consumers": [...]}``.
        notes: Choices made while quantizing, as the sentences a run records (e.g. ``"joins"``: which
            join placement :func:`~quantbench.quant.ptq.quantize_ptq` chose, and why).
    """

    def __init__(
        self,
        net: fx.GraphModule,
        plan: QuantPlan,
        layers: list[LayerInfo],
        act_sites: dict[str, dict[str, Any]],
    ) -> None:
        super().__init__()
        self.net = net
        self.plan = plan
        self.layers = layers
        self.act_sites = act_sites
        self.notes: dict[str, str] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def layer(self, name: str) -> nn.Module:
        return self.net.get_submodule(name)

    def act_quantizers(self) -> Iterator[tuple[str, FakeQuant]]:
        for name in self.act_sites:
            yield name, self.net.get_submodule(name)

    def weight_quantizers(self) -> Iterator[tuple[str, FakeQuant]]:
        for info in self.layers:
            fq = getattr(self.layer(info.name), "weight_fq", None)
            if isinstance(fq, FakeQuant):
                yield info.name, fq

    def set_mode(self, mode: str, which: str = "all") -> None:
        """Set ``mode`` on the activation (``"act"``), weight (``"weight"``) or all quantizers."""
        if which in ("all", "act"):
            for _, fq in self.act_quantizers():
                fq.mode = mode
        if which in ("all", "weight"):
            for _, fq in self.weight_quantizers():
                fq.mode = mode


def _is_join(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_function":
        return node.target in _JOIN_FUNCTIONS
    if node.op == "call_method":
        return node.target in _JOIN_METHODS
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _JOIN_MODULES)
    return False


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """The fx.Node inputs of ``node`` that carry tensors (cat's list flattened)."""
    out: list[fx.Node] = []
    for a in node.args:
        if isinstance(a, fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, fx.Node))
    return out


def _weight_quantizer(spec: QuantSpec, weight: torch.Tensor, learnable: bool) -> FakeQuant:
    """A weight quantizer already calibrated on its (known) weight tensor."""
    fq = FakeQuant(spec, role="weight", learnable=learnable)
    fq.observer.update(weight.detach())
    fq.freeze()
    return fq


def prepare(model: nn.Module, plan: QuantPlan, *, learnable: bool = False) -> QuantizedModel:
    """Fold BN and insert fake quantizers per ``plan``; activation quantizers start observing.

    Args:
        model: Any traceable ``nn.Module`` (a zoo model or the user's own); it is not modified.
        plan: Per-layer specs (``parse_scheme`` builds one from ``"w8a8"`` etc.).
        learnable: LSQ learnable scales (quantization-aware training).

    Returns:
        A :class:`QuantizedModel`; run :func:`calibrate` before using static activation specs.
    """
    gm = fold_batchnorm(model)
    modules = dict(gm.named_modules())
    order = [n for n in gm.graph.nodes if n.op == "call_module" and type(modules[n.target]) in _QCLASS]
    if not order:
        raise QuantbenchError(f"model {type(model).__name__} has no Conv2d/Linear layer to quantize")
    layers: list[LayerInfo] = []
    consumers: list[tuple[fx.Node, QuantSpec, str]] = []  # (node, input spec, label)
    for i, node in enumerate(order):
        spec = plan.for_layer(node.target, is_first=i == 0, is_last=i == len(order) - 1)
        info = LayerInfo(
            node.target, type(modules[node.target]).__name__, spec, i, i == 0, i == len(order) - 1
        )
        layers.append(info)
        if spec.weight is not None:
            old = modules[node.target]
            new = _QCLASS[type(old)].__new__(_QCLASS[type(old)])
            new.__dict__ = old.__dict__.copy()
            new._modules = dict(old._modules)
            new.weight_fq = _weight_quantizer(spec.weight, old.weight, learnable)
            _replace(gm, node.target, new)
        if spec.act is not None:
            consumers.append((node, spec.act, node.target))
    join_act = plan.join_act  # at least 8 bits unless the plan says "same" (QuantPlan.joins)
    if join_act is not None and not join_act.dynamic:
        for node in gm.graph.nodes:
            if _is_join(node, modules):
                consumers.append((node, join_act, node.name))

    act_sites: dict[str, dict[str, Any]] = {}
    shared: dict[tuple[str, QuantSpec], fx.Node] = {}
    per_value: dict[str, int] = {}  # quantizers already on a value (distinct specs)
    by_layer = {info.name: info for info in layers}
    for node, spec, label in consumers:
        for value in _tensor_inputs(node):
            key = (value.name, spec)
            if key not in shared:
                count = per_value.get(value.name, 0)
                name = f"aq_{value.name}" + (f"_{count}" if count else "")
                while name in act_sites:  # value ``relu``'s second quantizer must not take ``relu_1``'s name
                    count += 1
                    name = f"aq_{value.name}_{count}"
                per_value[value.name] = count + 1
                gm.add_submodule(name, FakeQuant(spec, role="act", learnable=learnable))
                with gm.graph.inserting_after(value):
                    fq_node = gm.graph.call_module(name, (value,))
                shared[key] = fq_node
                act_sites[name] = {"value": value.name, "consumers": [], "spec": spec}
            fq_node = shared[key]
            node.replace_input_with(value, fq_node)
            act_sites[fq_node.target]["consumers"].append(label)
            if label in by_layer:
                by_layer[label].input_quantizer = fq_node.target
    gm.graph.lint()
    gm.recompile()
    qm = QuantizedModel(gm, plan, layers, act_sites)
    for _, fq in qm.act_quantizers():
        if fq.spec.dynamic:
            fq.freeze()  # dynamic quantizers compute their range per batch: nothing to calibrate
    return qm.eval()


def _replace(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent_name, _, leaf = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, leaf, module)


def iterate_batches(data: Any, n_images: int | None, batch_size: int) -> Iterator[torch.Tensor]:
    """Image batches from a data set (``tensors()``/``batches()``), a tensor, or (x, y) pairs."""
    if isinstance(data, torch.Tensor):
        x = data if n_images is None else data[:n_images]
        for i in range(0, len(x), batch_size):
            yield x[i : i + batch_size]
        return
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        yield from iterate_batches(data[0], n_images, batch_size)
        return
    if hasattr(data, "tensors"):
        x, _ = data.tensors()
        yield from iterate_batches(x, n_images, batch_size)
        return
    count = 0
    for xb, *_ in data:
        if n_images is not None and count >= n_images:
            break
        xb = xb if n_images is None else xb[: n_images - count]
        count += len(xb)
        yield xb


def count_images(data: Any, n_images: int | None) -> int | None:
    """How many images :func:`iterate_batches` yields, where that is known without reading them (else None)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        data = data[0]
    try:
        if isinstance(data, torch.utils.data.DataLoader):
            n = len(data.dataset)  # type: ignore[arg-type]
        elif isinstance(data, torch.Tensor) or hasattr(data, "tensors"):
            n = len(data)
        else:
            return n_images
    except TypeError:
        return n_images
    return n if n_images is None else min(n, n_images)


def _name_non_finite_site(qm: QuantizedModel, static: list[tuple[str, Any]], xb: torch.Tensor) -> None:
    """Run ``xb`` again with a finiteness check in front of every quantizer; raise naming the first site
    whose input holds NaN/Inf (the observers found one but do not know where they sit)."""
    def check(name: str):
        def hook(_mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if not torch.isfinite(args[0]).all():
                site = qm.act_sites[name]["value"]
                raise QuantbenchError(
                    f"calibration: non-finite activations (NaN/Inf) at {site!r} (quantizer {name})"
                )

        return hook

    modes = [(fq, fq.mode) for _, fq in static]
    hooks = [fq.register_forward_pre_hook(check(name)) for name, fq in static]
    try:
        for fq, _ in modes:
            fq.mode = "off"  # observers keep what they saw before the bad batch
        with torch.no_grad():
            qm(xb)
    finally:
        for h in hooks:
            h.remove()
        for fq, mode in modes:
            fq.mode = mode


def calibrate(
    qm: QuantizedModel, data: Any, *, n_images: int | None = None, batch_size: int = 64, progress: bool = False
) -> QuantizedModel:
    """Observe activation ranges on calibration images, then freeze every static quantizer.

    ``progress``: a bar of images seen on stderr (calibrating a large model on a few thousand
    images takes minutes on a CPU).

    Raises:
        QuantbenchError: Non-finite activations (naming the value where they appeared), or no images.
    """
    static = [(n, fq) for n, fq in qm.act_quantizers() if not fq.spec.dynamic]
    for _, fq in static:
        fq.observer.reset()  # re-calibration (e.g. after AdaRound changed the weights) starts afresh
        fq.mode = "observe"
    from quantbench.progress import bar

    seen = 0
    shown = bar(total=count_images(data, n_images), desc="calibrate", unit="img", enabled=progress)
    try:
        with torch.no_grad():
            for xb in iterate_batches(data, n_images, batch_size):
                try:
                    qm(xb)
                except NonFiniteError:  # observers check min/max for free; name the site on the slow path
                    _name_non_finite_site(qm, static, xb)
                    raise
                seen += len(xb)
                shown.update(len(xb))
    finally:
        shown.close()
    if seen == 0:
        raise QuantbenchError("calibration: no images in the calibration data")
    for _, fq in static:
        fq.freeze()
    return qm
