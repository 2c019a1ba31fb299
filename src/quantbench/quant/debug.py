"""Per-layer quantization debugger: which layer loses the accuracy, and what leaving it in float buys.

Why: a drop of a few points says nothing about where it comes from. Like ONNX Runtime's
``qdq_loss_debug`` and AIMET's ``QuantAnalyzer``, this compares the float and the quantized
network layer by layer on the SAME images, and then measures the one number a user acts on:
the model's top-1 with only that layer left in float.

For every conv/linear (its output, before the activation that follows it):

* **cumulative** - whole model quantized: the error accumulated up to this layer;
* **isolated** - only this layer's weight and input quantizers, applied to the float
  network's own input of this layer: the error this layer adds by itself (computed from the
  float pass's captured inputs, so it costs no extra network pass);
* SQNR (dB; ``None`` when the outputs are identical, i.e. infinite, so records stay valid
  JSON), mean per-image cosine similarity and maximum absolute error;
* **clipping**: the fraction of the layer's float input values outside its activation
  quantizer's representable range, and of its float weights outside the weight quantizer's
  (outside by more than half a step: a value closer to the end code only rounds to it, with
  no more error than any other value);
* **recovery**: top-1 with this layer in float (float weights, input quantizer off) minus the
  fully quantized top-1. Layers are ranked by it (largest first), isolated SQNR breaking ties.

The float reference is a separate float network (``float_reference``), not the quantized one
with its quantizers off: AdaRound and bias correction rewrite the quantized model's weights, and
a ``.qbm`` holds only dequantized ones, so "quantizers off" would hide the weight error.

Note: an input quantizer shared with other consumers (a residual shortcut reading the same
value) is switched off for them too when its layer is left in float (``shared_input_with``
names them), as :mod:`quantbench.quant.sensitivity` does.

Example:
    >>> ref = float_reference(model, ptq_cfg)  # doctest: +SKIP
    >>> rep = debug_quantized(qm, ref, (images, labels), n_images=256)  # doctest: +SKIP
    >>> rep.layers[0].layer, rep.layers[0].recovery_points  # doctest: +SKIP
    ('block2.0', 3.5)
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.quant.fake import FakeQuant, broadcast_param
from quantbench.quant.prepare import LayerInfo, QuantizedModel

__all__ = ["DebugReport", "ErrorStats", "LayerDebug", "check_reference", "debug_quantized", "float_reference",
           "lint_by_layer"]

MISMATCH_STEPS = 1.001
"""A weight more than one quantization step from its float value was not quantized from it (round to
nearest moves a weight half a step at most, AdaRound less than one; the 0.001 absorbs float rounding)."""


@dataclass(frozen=True)
class ErrorStats:
    """Float vs quantized output of one layer over the debug images."""

    sqnr_db: float | None  # None: identical outputs (infinite SQNR)
    cosine: float
    max_abs_err: float


@dataclass(frozen=True)
class LayerDebug:
    """One conv/linear's row of the debug table."""

    layer: str
    kind: str
    spec: str
    index: int
    params: int
    quantized: bool
    cumulative: ErrorStats
    isolated: ErrorStats
    act_clip_fraction: float | None  # None: no static input quantizer (dynamic, weight-only, float input)
    weight_clip_fraction: float | None
    top1_layer_float: float
    recovery_points: float
    shared_input_with: list[str] = field(default_factory=list)
    lint: list[dict[str, str]] = field(default_factory=list)
    rank: int = 0


@dataclass(frozen=True)
class DebugReport:
    """The ranked table (worst layer first) and the two top-1s it is read against, on the same images."""

    n_images: int
    fp32_top1: float
    quant_top1: float
    layers: list[LayerDebug]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict (no inf/NaN)."""
        return {"n_images": self.n_images, "fp32_top1": self.fp32_top1, "quant_top1": self.quant_top1,
                "worst": self.layers[0].layer if self.layers else None,
                "layers": [asdict(x) for x in self.layers]}


class _Acc:
    """Running sums for one layer and mode: signal and noise power, cosines, the largest error."""

    def __init__(self) -> None:
        self.signal = self.noise = self.cos = self.max_err = 0.0
        self.n = 0

    def add(self, ref: torch.Tensor, out: torch.Tensor) -> None:
        r, o = ref.flatten(1).double(), out.flatten(1).double()
        d = r - o
        self.signal += float((r * r).sum())
        self.noise += float((d * d).sum())
        self.max_err = max(self.max_err, float(d.abs().max()) if d.numel() else 0.0)
        nr, no = r.norm(dim=1), o.norm(dim=1)
        cos = ((r * o).sum(1) / (nr * no).clamp(min=1e-30)).clamp(-1.0, 1.0)  # rounding can pass 1
        cos = torch.where((nr == 0) & (no == 0), torch.ones_like(cos), cos)  # two zero outputs agree
        self.cos += float(cos.sum())
        self.n += len(r)

    def stats(self) -> ErrorStats:
        if self.noise == 0.0:
            sqnr = None
        else:
            sqnr = 10.0 * math.log10(max(self.signal, 1e-30) / self.noise)
        return ErrorStats(sqnr, self.cos / max(self.n, 1), self.max_err)


def float_reference(model: nn.Module, ptq: Any = None) -> nn.Module:
    """The float network a quantized model of ``model`` was made from, with the same layer names.

    BatchNorm folded as :func:`~quantbench.quant.prepare.prepare` folds it, and cross-layer
    equalized when the PTQ config's algorithm equalizes (``quantize_ptq`` quantizes that network).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)).eval()
        >>> x = torch.randn(2, 1, 8, 8)
        >>> torch.allclose(float_reference(net)(x), net(x), atol=1e-5)
        True
    """
    from quantbench.quant.fold import fold_batchnorm

    ref = fold_batchnorm(model)
    if ptq is not None and ptq.algorithm().equalize:
        from quantbench.quant.equalize import equalize_folded

        ref = equalize_folded(ref)
    return ref.eval()


def _range(fq: FakeQuant, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[lo, hi] a calibrated static quantizer can represent, shaped to broadcast against ``like``."""
    scale, zp = fq.qparams()
    s, z, spec = broadcast_param(scale, like, fq.spec), broadcast_param(zp, like, fq.spec), fq.spec
    if spec.companding != "none":
        return -s * spec.qmax, s * spec.qmax
    return (spec.qmin - z) * s, (spec.qmax - z) * s


def _outside(fq: FakeQuant, x: torch.Tensor) -> int:
    """Values the quantizer clips: beyond half a step past its end codes (closer ones just round to them)."""
    lo, hi = _range(fq, x)
    half = broadcast_param(fq.qparams()[0], x, fq.spec) / 2
    return int(((x < lo - half) | (x > hi + half)).sum())


def check_reference(qm: QuantizedModel, ref: nn.Module, *, what: str = "quantized model") -> None:
    """Refuse a float reference the quantized model was not made from (other layers, shapes or weights).

    A weight of a matching pair lies within one quantization step of its float value (round to
    nearest: half a step; AdaRound: less than one), unless it was clipped; more than 5% of the
    in-range weights of any layer further away than ``MISMATCH_STEPS`` steps means other weights
    (also QAT's: fine-tuning moved them; debug a QAT model against its fine-tuned float weights).

    Raises:
        QuantbenchError: Naming the first layer that does not match.
    """
    for info in qm.layers:
        try:
            layer = ref.get_submodule(info.name)
        except AttributeError:
            raise QuantbenchError(f"{what}: has layer {info.name!r}, the float model has none; pass the --model "
                                  "it was quantized from") from None
        qlayer = qm.layer(info.name)
        if getattr(layer, "weight", None) is None or layer.weight.shape != qlayer.weight.shape:
            raise QuantbenchError(f"{what}: layer {info.name!r} has weight shape {tuple(qlayer.weight.shape)}, the "
                                  f"float model's is {tuple(getattr(layer, 'weight', torch.empty(0)).shape)}")
        fq = getattr(qlayer, "weight_fq", None)
        if not isinstance(fq, FakeQuant) or fq.spec.companding != "none":
            continue  # float weights, or a non-uniform grid: no step to compare with
        with torch.no_grad():
            wf, wq = layer.weight.detach(), fq(qlayer.weight.detach())
            lo, hi = _range(fq, wf)
            step = broadcast_param(fq.qparams()[0], wf, fq.spec)
            inside = (wf >= lo - step / 2) & (wf <= hi + step / 2)  # values that round into the grid
            far = ((wq - wf).abs() > MISMATCH_STEPS * step) & inside
        share = float(far.sum()) / max(int(inside.sum()), 1)
        if share > 0.05:
            raise QuantbenchError(f"{what}: was not quantized from this float model (layer {info.name!r}: "
                                  f"{100 * share:.0f}% of its weights are more than one quantization step "
                                  "from the float ones); pass the --model/--checkpoint (and --pretrain-epochs, "
                                  "method with cle) it was made from")


def lint_by_layer(findings: Sequence[Any], layers: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    """Lint findings per conv/linear: those about the layer itself, or naming it (the activation after
    it, the padding before it, a float op it feeds).

    Example:
        >>> from quantbench.quant.lint import Finding
        >>> f = Finding("unfused-activation", "warning", "act", "SiLU", "SiLU after conv1 is not fused", "fix")
        >>> lint_by_layer([f], ["conv1", "conv10"])["conv1"][0]["rule"]
        'unfused-activation'
    """
    out: dict[str, list[dict[str, str]]] = {name: [] for name in layers}
    for f in findings:
        for name in layers:
            named = re.search(rf"(?<![\w.]){re.escape(name)}(?!\w|\.\w)", f"{f.message} {f.fix}")
            if f.module == name or named:
                out[name].append({"rule": f.rule, "severity": f.severity, "message": f.message})
    return out


@contextmanager
def _layer_in_float(qm: QuantizedModel, ref: nn.Module, info: LayerInfo) -> Iterator[None]:
    """Run ``info``'s layer in float inside the block: float weights and bias, its quantizers off."""
    layer, flt = qm.layer(info.name), ref.get_submodule(info.name)
    fqs: list[FakeQuant] = [fq for fq in (getattr(layer, "weight_fq", None),
                                          qm.net.get_submodule(info.input_quantizer) if info.input_quantizer else None)
                            if isinstance(fq, FakeQuant)]
    modes = [fq.mode for fq in fqs]
    saved = {n: p.detach().clone() for n, p in layer.named_parameters(recurse=False)}
    try:
        with torch.no_grad():
            for n, p in layer.named_parameters(recurse=False):
                src = getattr(flt, n, None)
                if src is None and n == "bias":  # a bias that bias correction added to a bias-free layer
                    p.zero_()
                elif src is not None and src.shape == p.shape:
                    p.copy_(src)
        for fq in fqs:
            fq.mode = "off"
        yield
    finally:
        with torch.no_grad():
            for n, p in layer.named_parameters(recurse=False):
                p.copy_(saved[n])
        for fq, m in zip(fqs, modes, strict=True):
            fq.mode = m


def _hooks(net: nn.Module, names: Sequence[str], store: dict[str, Any], inputs: bool) -> list[Any]:
    handles = []
    for name in names:
        mod = net.get_submodule(name)
        handles.append(mod.register_forward_hook(lambda _m, _a, o, n=name: store.__setitem__(("out", n), o.detach())))
        if inputs:
            handles.append(mod.register_forward_pre_hook(
                lambda _m, a, n=name: store.__setitem__(("in", n), a[0].detach())))
    return handles


def _tensors(data: Any, n_images: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(data, "tensors"):
        x, y = data.tensors()
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        raise QuantbenchError(f"debug: images need labels; got {type(data).__name__}, expected (images, labels) or "
                              "a data set")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if n_images is not None:
        x, y = x[:n_images], y[:n_images]
    if len(x) == 0:
        raise QuantbenchError("debug: no images to compare float and quantized on")
    return x, y


def debug_quantized(qm: QuantizedModel, ref: nn.Module, data: Any, *, n_images: int | None = 256,
                    batch_size: int = 64, findings: Sequence[Any] = ()) -> DebugReport:
    """Compare ``qm`` with its float reference layer by layer on the same images; rank the layers.

    Args:
        qm: A calibrated :class:`QuantizedModel` (its quantizer modes and weights are restored afterwards).
        ref: Its float reference (:func:`float_reference`); checked with :func:`check_reference`.
        data: Labelled images: ``(images, labels)`` or a data set with ``tensors()``.
        n_images: The first N images are used (the cost is one quantized pass per layer).
        batch_size: Images per forward pass.
        findings: Lint findings of the float model (:func:`~quantbench.quant.lint.lint_model`), attached
            to the layers they are about.

    Returns:
        A :class:`DebugReport`, layers worst first.

    Example:
        >>> import torch
        >>> from quantbench.quant.ptq import PTQConfig, quantize_ptq
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        ...                           torch.nn.Linear(4 * 6 * 6, 3)).eval()
        >>> x = torch.randn(64, 1, 8, 8); y = net(x).argmax(1)
        >>> rep = debug_quantized(quantize_ptq(net, PTQConfig("w4a4", "minmax"), x), float_reference(net), (x, y))
        >>> sorted(r.layer for r in rep.layers), rep.fp32_top1
        (['0', '3'], 100.0)
    """
    if n_images is not None and n_images < 1:
        raise QuantbenchError(f"debug: n_images {n_images}: expected at least 1")
    check_reference(qm, ref)
    x, y = _tensors(data, n_images)
    names = [info.name for info in qm.layers]
    weight_fq, act_fq = dict(qm.weight_quantizers()), dict(qm.act_quantizers())
    all_fq = [*act_fq.values(), *weight_fq.values()]
    modes = {id(fq): fq.mode for fq in all_fq}
    cum = {n: _Acc() for n in names}
    iso = {n: _Acc() for n in names}
    clipped = dict.fromkeys(names, 0)
    seen = dict.fromkeys(names, 0)
    correct = {"fp32": 0, "quant": 0, **{n: 0 for n in names}}
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    try:
        qm.set_mode("quant")
        with torch.no_grad():
            for xb, yb in batches:
                f_store: dict[Any, torch.Tensor] = {}
                q_store: dict[Any, torch.Tensor] = {}
                handles = _hooks(ref, names, f_store, inputs=True)
                try:
                    correct["fp32"] += int((ref(xb).argmax(1) == yb).sum())
                finally:
                    for h in handles:
                        h.remove()
                handles = _hooks(qm.net, names, q_store, inputs=False)
                try:
                    correct["quant"] += int((qm(xb).argmax(1) == yb).sum())
                finally:
                    for h in handles:
                        h.remove()
                for info in qm.layers:
                    n, x_in, y_ref = info.name, f_store[("in", info.name)], f_store[("out", info.name)]
                    cum[n].add(y_ref, q_store[("out", n)])
                    aq = act_fq.get(info.input_quantizer) if info.input_quantizer else None
                    if aq is not None and not aq.spec.dynamic:
                        clipped[n] += _outside(aq, x_in)
                        seen[n] += x_in.numel()
                    iso[n].add(y_ref, qm.layer(n)(aq(x_in) if aq is not None else x_in))
            for info in qm.layers:
                if info.name not in weight_fq and not info.input_quantizer:
                    continue  # already float: nothing to recover
                with _layer_in_float(qm, ref, info):
                    correct[info.name] = sum(int((qm(xb).argmax(1) == yb).sum()) for xb, yb in batches)
    finally:
        for fq in all_fq:
            fq.mode = modes[id(fq)]
    total = len(x)
    fp32, quant = 100.0 * correct["fp32"] / total, 100.0 * correct["quant"] / total
    lint = lint_by_layer(findings, names)
    rows = []
    for info in qm.layers:
        n = info.name
        quantized = n in weight_fq or bool(info.input_quantizer)
        top1_float = 100.0 * correct[n] / total if quantized else quant
        wfq = weight_fq.get(n)
        w_clip = None
        if wfq is not None:
            w = ref.get_submodule(n).weight.detach()
            w_clip = _outside(wfq, w) / max(w.numel(), 1)
        shared = [c for c in qm.act_sites[info.input_quantizer]["consumers"] if c != n] if info.input_quantizer else []
        rows.append(LayerDebug(
            n, info.kind, info.spec.short(), info.index,
            sum(p.numel() for p in qm.layer(n).parameters(recurse=False)), quantized, cum[n].stats(), iso[n].stats(),
            clipped[n] / seen[n] if seen[n] else None, w_clip, top1_float, top1_float - quant, shared, lint[n]))
    rows.sort(key=lambda r: (-r.recovery_points, math.inf if r.isolated.sqnr_db is None else r.isolated.sqnr_db,
                             r.index))
    ranked = [dataclasses.replace(r, rank=i + 1) for i, r in enumerate(rows)]
    return DebugReport(total, fp32, quant, ranked)
