"""What to quantize and how: :class:`QuantSpec` (one tensor), :class:`LayerSpec`, :class:`QuantPlan`.

Why frozen dataclasses: a quantization method is *data* (the torchao habit). A plan is saved
beside every result and inside every artefact (:meth:`QuantPlan.as_dict`), so it must be
plain, comparable and validated once, here, instead of in every algorithm that reads it.

Conventions (they follow ONNX ``QuantizeLinear`` so that export is a copy, not a translation):

* ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``, ``x' = (q - zero_point) * scale``,
  rounding half to even (``torch.round``).
* Weights: signed, symmetric (zero point 0), per output channel along ``axis=0`` by default;
  below 8 bits optionally asymmetric (``parse_scheme(asymmetric_weights=True)``), deployed as
  re-centred int8 codes with zero point 0 (:func:`deployed_code_range`).
* Activations: unsigned, asymmetric (``uint8`` for 8 bits) - the u8-activation/s8-weight QDQ
  format that ONNX Runtime has fast integer kernels for (DESIGN.md section 4).
* ``narrow_range`` drops the most negative code of a signed type (``-127..127`` for 8 bits).

Example:
    >>> plan = parse_scheme("w4a8")
    >>> plan.default.weight.short(), plan.default.act.short()
    ('int4-sym-pc', 'uint8-asym')
    >>> plan.for_layer("conv1", is_first=True, is_last=False).weight.bits
    4
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from quantbench.errors import QuantbenchError

COMPANDINGS = ("none", "mulaw")
FIRST_LAST = ("same", "int8", "fp32")
WEIGHT_RANGES = ("full", "reduced")
JOINS = ("same", "int8")
MIN_BITS, MAX_BITS = 2, 16
SCHEME_FORMS = "wXaY (X, Y in 2..16, e.g. w8a8, w4a8, w4a4, w2a8), wX (weights only), dynamic, fp32"


def _check_type(owner: str, key: str, value: Any, tp: type) -> None:
    ok = isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise QuantbenchError(f"{owner}: {key} must be {tp.__name__}, got {value!r}")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor (a weight or an activation) is quantized.

    Attributes:
        bits: Integer width, 2..16.
        signed: Signed codes (``-2^(b-1)..2^(b-1)-1``) or unsigned (``0..2^b-1``).
        symmetric: Zero point fixed at 0. Signed: range ``[-amax, amax]`` with
            ``scale = amax / qmax``. Unsigned: range ``[0, max]`` (no ``2^(b-1)`` midpoint).
        per_channel: One scale/zero point per slice along ``axis`` instead of one per tensor.
        axis: The channel axis for ``per_channel`` (0 = conv/linear output channels).
        observer: Name in ``quantbench.quant.observers.OBSERVERS`` that picks the range.
        percentile: Clipping percentile for the ``percentile`` observer, in (0, 100].
        companding: ``"none"`` (uniform levels) or ``"mulaw"`` (levels dense near 0).
        mu: The mu-law parameter (larger = more levels near 0).
        narrow_range: Signed codes ``-(2^(b-1)-1)..2^(b-1)-1`` (symmetric around 0).
        dynamic: Activation range measured on each batch at run time (no calibration).
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    per_channel: bool = False
    axis: int = 0
    observer: str = "minmax"
    percentile: float = 99.99
    companding: str = "none"
    mu: float = 255.0
    narrow_range: bool = False
    dynamic: bool = False

    def __post_init__(self) -> None:
        own = "quant spec"
        for f in dataclasses.fields(self):
            tp = {"int": int, "bool": bool, "str": str, "float": float}[str(f.type)]
            _check_type(own, f.name, getattr(self, f.name), tp)
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise QuantbenchError(f"{own}: bits {self.bits} out of range; expected {MIN_BITS}..{MAX_BITS}")
        if not 0.0 < self.percentile <= 100.0:
            raise QuantbenchError(f"{own}: percentile {self.percentile} out of range; expected (0, 100]")
        if self.companding not in COMPANDINGS:
            raise QuantbenchError(
                f"{own}: unknown companding {self.companding!r}; expected one of: {', '.join(COMPANDINGS)}"
            )
        if not (math.isfinite(self.mu) and self.mu > 0):
            raise QuantbenchError(f"{own}: mu {self.mu} must be a finite number > 0")
        if self.companding != "none" and not self.symmetric:
            raise QuantbenchError(
                f"{own}: companding {self.companding!r} needs symmetric=True (mu-law is centred on 0)"
            )
        if self.narrow_range and not self.signed:
            raise QuantbenchError(f"{own}: narrow_range needs signed=True (it drops the code -2^(bits-1))")
        # Imported here because observers.py imports this module; this makes a typo in an
        # observer name, or a per-tensor-only observer asked per channel, fail at spec time.
        from quantbench.quant.observers import OBSERVERS

        meta = OBSERVERS.meta(self.observer)
        if self.per_channel and not meta.get("per_channel", True):
            per_ch = ", ".join(n for n in OBSERVERS.names() if OBSERVERS.meta(n).get("per_channel", True))
            raise QuantbenchError(
                f"{own}: observer {self.observer!r} is per-tensor only; use per_channel=False "
                f"or one of: {per_ch}"
            )

    @property
    def qmax(self) -> int:
        """Largest integer code."""
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def qmin(self) -> int:
        """Smallest integer code (``-qmax`` when ``narrow_range``)."""
        if not self.signed:
            return 0
        return -self.qmax if self.narrow_range else -(1 << (self.bits - 1))

    @property
    def levels(self) -> int:
        """Number of representable codes, ``qmax - qmin + 1``."""
        return self.qmax - self.qmin + 1

    def replace(self, **changes: Any) -> QuantSpec:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def short(self) -> str:
        """A compact label for tables and logs, e.g. ``int8-sym-pc`` or ``uint8-asym-dyn``."""
        parts = [f"{'int' if self.signed else 'uint'}{self.bits}", "sym" if self.symmetric else "asym"]
        if self.per_channel:
            parts.append("pc" if self.axis == 0 else f"pc{self.axis}")
        if self.narrow_range:
            parts.append("narrow")
        if self.companding != "none":
            parts.append(f"{self.companding}{self.mu:g}")
        if self.dynamic:
            parts.append("dyn")
        if self.observer != "minmax" and not self.dynamic:
            parts.append(f"p{self.percentile:g}" if self.observer == "percentile" else self.observer)
        return "-".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantSpec:
        """Inverse of :meth:`as_dict`; an unknown key is an error naming it."""
        if not isinstance(data, dict):
            raise QuantbenchError(f"quant spec: expected a mapping, got {data!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise QuantbenchError(
                f"quant spec: unknown key {unknown[0]!r}; expected one of: {', '.join(names)}"
            )
        return cls(**data)


@dataclass(frozen=True)
class LayerSpec:
    """The specs of one layer's weight and input activation; ``None`` keeps that tensor FP32."""

    weight: QuantSpec | None = None
    act: QuantSpec | None = None

    def __post_init__(self) -> None:
        for key in ("weight", "act"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, QuantSpec):
                raise QuantbenchError(f"layer spec: {key} must be a QuantSpec or None, got {value!r}")

    @property
    def is_fp32(self) -> bool:
        """True when neither tensor is quantized."""
        return self.weight is None and self.act is None

    def short(self) -> str:
        """E.g. ``w:int8-sym-pc a:uint8-asym`` or ``fp32``."""
        if self.is_fp32:
            return "fp32"
        w = self.weight.short() if self.weight else "fp32"
        a = self.act.short() if self.act else "fp32"
        return f"w:{w} a:{a}"

    def as_dict(self) -> dict[str, Any]:
        """``{"weight": dict | None, "act": dict | None}``."""
        return {
            k: (s.as_dict() if s is not None else None)
            for k, s in (("weight", self.weight), ("act", self.act))
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSpec:
        """Inverse of :meth:`as_dict`."""
        if not isinstance(data, dict) or set(data) - {"weight", "act"}:
            raise QuantbenchError(f"layer spec: expected a mapping with keys weight, act; got {data!r}")
        w, a = data.get("weight"), data.get("act")
        return cls(
            weight=QuantSpec.from_dict(w) if w is not None else None,
            act=QuantSpec.from_dict(a) if a is not None else None,
        )


FP32_LAYER = LayerSpec(None, None)


def _with_bits(spec: QuantSpec | None, bits: int) -> QuantSpec | None:
    return None if spec is None else spec.replace(bits=bits)


@dataclass(frozen=True)
class QuantPlan:
    """Per-layer quantization of a whole model.

    Attributes:
        default: The spec of every quantizable layer without an override.
        overrides: Layer name (as in ``named_modules``) -> its own spec; wins over everything,
            which is how mixed precision is expressed.
        first_last: Policy for the first and last quantizable layers, which are the most
            sensitive ones: ``"same"`` (no special case), ``"int8"`` (their quantized tensors
            use 8 bits, other settings kept) or ``"fp32"`` (left unquantized).
        scheme: The name the plan was built from (``parse_scheme``), for labels.
        weight_range: ``"full"`` (the whole grid of each weight's bits) or ``"reduced"``: 8-bit
            weights of layers with 8-bit unsigned activations use 7-bit codes (-64..63) in their
            8-bit storage. Why: x86 CPUs without VNNI multiply u8 activations by s8 weights with
            ``vpmaddubsw``, which adds two products in int16 and saturates unless
            ``2 x 255 x |w| <= 32767``; ONNX Runtime's ``reduce_range`` and NNCF's overflow fix
            make the same choice. Applied last in :meth:`for_layer`, so overrides and the
            first/last policy get it too, and the simulation uses the grid the engines deploy.
        joins: Precision of the inputs of join operations (residual ``add``, ``mul``, ``cat``,
            average pooling), which :func:`~quantbench.quant.prepare.prepare` quantizes with the
            default activation spec: ``"same"`` (its bits) or ``"int8"`` (at least 8 bits). Why:
            low-bit activations are what a convolution or GEMM kernel reads; the element-wise
            join runs in the kernel's requantizing epilogue, at 8 bits or wider, which is also
            where the published low-bit records (BRECQ, QDrop, MQBench's academic setting) leave
            it. 4-bit join inputs cost the shared ResNet-20 about 5 points of W4A4 accuracy at
            round to nearest (docs/benchmarks/ptq.md). Changes nothing where activations
            have 8 bits or more (such plans hold ``"same"``, their one spelling). :func:`parse_scheme`
            builds ``"int8"``; plans stored without the key (files from before it) read as
            ``"same"``, the placement they were built with.
    """

    default: LayerSpec = FP32_LAYER
    overrides: dict[str, LayerSpec] = field(default_factory=dict, hash=False)
    first_last: str = "same"
    scheme: str = "custom"
    weight_range: str = "full"
    joins: str = "same"

    def __post_init__(self) -> None:
        if not isinstance(self.default, LayerSpec):
            raise QuantbenchError(f"quant plan: default must be a LayerSpec, got {self.default!r}")
        if self.first_last not in FIRST_LAST:
            raise QuantbenchError(
                f"quant plan: first_last {self.first_last!r} unknown; expected one of: {', '.join(FIRST_LAST)}"
            )
        if self.weight_range not in WEIGHT_RANGES:
            raise QuantbenchError(f"quant plan: weight_range {self.weight_range!r} unknown; expected one of: "
                                  f"{', '.join(WEIGHT_RANGES)}")
        if self.joins not in JOINS:
            raise QuantbenchError(f"quant plan: joins {self.joins!r} unknown; expected one of: {', '.join(JOINS)}")
        if not self.has_low_bit_joins:  # one spelling of a plan the option does not change (8-bit activations)
            object.__setattr__(self, "joins", "same")
        overrides = dict(self.overrides)  # a private copy: the plan stays what it was built as
        for name, spec in overrides.items():
            if not isinstance(name, str) or not isinstance(spec, LayerSpec):
                raise QuantbenchError(f"quant plan: override {name!r} must map a layer name to a LayerSpec")
        object.__setattr__(self, "overrides", overrides)

    @property
    def is_fp32(self) -> bool:
        """True when no layer is quantized at all."""
        return self.default.is_fp32 and all(s.is_fp32 for s in self.overrides.values())

    def for_layer(self, name: str, is_first: bool = False, is_last: bool = False) -> LayerSpec:
        """The spec of layer ``name``: its override, else the first/last policy, else the default
        (then ``weight_range`` applies)."""
        if name in self.overrides:
            spec = self.overrides[name]
        elif (is_first or is_last) and self.first_last != "same":
            spec = self._edge_layer()
            if spec.is_fp32:
                return spec
        else:
            spec = self.default
        return reduce_weight_range(spec) if self.weight_range == "reduced" else spec

    @property
    def can_saturate(self) -> bool:
        """True when some layer could pair 8-bit weights with 8-bit unsigned activations: the
        products that saturate ``vpmaddubsw`` on x86 CPUs without VNNI (what ``reduced`` avoids)."""
        edge = [self._edge_layer()] if self.first_last != "same" else []
        return any(_saturating(s) for s in (self.default, *self.overrides.values(), *edge))

    @property
    def has_asymmetric_weights(self) -> bool:
        """True when some layer's weights use an asymmetric grid (``parse_scheme(asymmetric_weights=True)``
        below 8 bits, or a spec written so)."""
        edge = [self._edge_layer()] if self.first_last != "same" else []
        return any(s.weight is not None and not s.weight.symmetric
                   for s in (self.default, *self.overrides.values(), *edge))

    @property
    def join_act(self) -> QuantSpec | None:
        """The spec of the inputs of join operations (see ``joins``); ``None`` when activations stay float.

        Example:
            >>> parse_scheme("w4a4").join_act.bits, parse_scheme("w4a4", joins="same").join_act.bits
            (8, 4)
        """
        act = self.default.act
        return act if self.joins == "same" else act.replace(bits=8)  # "int8" only stays on low-bit static plans

    @property
    def has_low_bit_joins(self) -> bool:
        """True when ``joins`` changes something: static activations below 8 bits."""
        act = self.default.act
        return act is not None and not act.dynamic and act.bits < 8

    def _edge_layer(self) -> LayerSpec:
        """The first/last layers' spec under a ``first_last`` policy other than ``"same"``."""
        if self.first_last == "fp32":
            return FP32_LAYER
        weight = _with_bits(self.default.weight, 8)
        if weight is not None and not weight.symmetric and self.default.weight.bits < 8:
            # An asymmetric low-bit grid deploys as re-centred int8 codes; at 8 bits those would
            # not fit int8, so the 8-bit edge layers take the symmetric grid integer kernels use.
            weight = weight.replace(symmetric=True)
        return LayerSpec(weight, _with_bits(self.default.act, 8))

    def replace(self, **changes: Any) -> QuantPlan:
        """A copy with ``changes`` applied (e.g. ``overrides=...`` from a mixed-precision search)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict, stored in results and artefacts."""
        out = {
            "scheme": self.scheme,
            "first_last": self.first_last,
            "default": self.default.as_dict(),
            "overrides": {k: _layer_diff(self.default, v) for k, v in self.overrides.items()},
        }
        if self.weight_range != "full":  # plans (and files) from before the option read as "full"
            out["weight_range"] = self.weight_range
        if self.joins != "same":  # plans (and files) from before the option read as "same"
            out["joins"] = self.joins
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantPlan:
        """Inverse of :meth:`as_dict`; unknown keys are errors naming them."""
        keys = ("scheme", "first_last", "default", "overrides", "weight_range", "joins")
        if not isinstance(data, dict):
            raise QuantbenchError(f"quant plan: expected a mapping, got {data!r}")
        unknown = [k for k in data if k not in keys]
        if unknown:
            raise QuantbenchError(
                f"quant plan: unknown key {unknown[0]!r}; expected one of: {', '.join(keys)}"
            )
        overrides = data.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise QuantbenchError(f"quant plan: overrides must be a mapping, got {overrides!r}")
        default = LayerSpec.from_dict(data.get("default") or {})
        return cls(
            default=default,
            overrides={str(k): _layer_over(default, v) for k, v in overrides.items()},
            first_last=data.get("first_last", "same"),
            scheme=data.get("scheme", "custom"),
            weight_range=data.get("weight_range", "full"),
            joins=data.get("joins", "same"),
        )


def _saturating(spec: LayerSpec) -> bool:
    w, a = spec.weight, spec.act
    return (w is not None and a is not None and w.bits == 8 and w.signed and not a.signed and a.bits == 8
            and not a.dynamic and w.companding == "none")


def reduce_weight_range(spec: LayerSpec) -> LayerSpec:
    """``spec`` with its 8-bit weights on the 7-bit grid (-64..63) where they meet 8-bit unsigned
    static activations; any other layer is returned as it is.

    Example:
        >>> reduce_weight_range(parse_scheme("w8a8").default).weight.bits
        7
        >>> reduce_weight_range(parse_scheme("w8").default).weight.bits  # no integer GEMM: unchanged
        8
    """
    if not _saturating(spec):
        return spec
    return LayerSpec(spec.weight.replace(bits=7), spec.act)


def deployed_code_range(spec: QuantSpec) -> tuple[int, int]:
    """The integer codes an engine stores for a tensor of ``spec``, as ``(lowest, highest)``.

    Why: integer kernels take weights with zero point 0 (per-channel zero points are refused or
    slow on ONNX Runtime, PyTorch and LiteRT). An asymmetric grid ``s * (q - z)`` whose code span
    ``qmax - qmin`` fits int8 is the same set of values as int8 codes ``q - z`` with zero point 0,
    so it is stored that way (:func:`~quantbench.quant.fake.deployed_codes`); its codes then lie
    within ``+-(qmax - qmin)``. Other specs keep their own ``[qmin, qmax]``.

    Example:
        >>> deployed_code_range(QuantSpec(bits=4, symmetric=False))
        (-15, 15)
        >>> deployed_code_range(QuantSpec(bits=8))
        (-128, 127)
    """
    span = spec.qmax - spec.qmin
    if not spec.symmetric and spec.companding == "none" and span <= 127:
        return -span, span
    return spec.qmin, spec.qmax


def _layer_diff(default: LayerSpec, spec: LayerSpec) -> dict[str, Any]:
    """An override as its difference from the default: a key is absent when that tensor's spec
    equals the default's, ``None`` when it is FP32, else only the changed fields (or all of
    them when the default is FP32). Mixed-precision plans differ in one field per layer, so
    files and stored configs stay small (a full spec is about 300 bytes of JSON per layer)."""
    out: dict[str, Any] = {}
    for key in ("weight", "act"):
        base, mine = getattr(default, key), getattr(spec, key)
        if mine == base:
            continue
        if mine is None or base is None:
            out[key] = None if mine is None else mine.as_dict()
            continue
        b, m = base.as_dict(), mine.as_dict()
        out[key] = {f: v for f, v in m.items() if b[f] != v}
    return out


def _layer_over(default: LayerSpec, data: Any) -> LayerSpec:
    """Inverse of :func:`_layer_diff` (a full layer dict, as older files hold, also works)."""
    if not isinstance(data, dict) or set(data) - {"weight", "act"}:
        raise QuantbenchError(f"layer spec: expected a mapping with keys weight, act; got {data!r}")
    parts: dict[str, QuantSpec | None] = {}
    for key in ("weight", "act"):
        base = getattr(default, key)
        if key not in data:
            parts[key] = base
        elif data[key] is None:
            parts[key] = None
        elif not isinstance(data[key], dict):
            raise QuantbenchError(f"layer spec: {key} must be a mapping or null, got {data[key]!r}")
        else:
            parts[key] = QuantSpec.from_dict({**(base.as_dict() if base is not None else {}), **data[key]})
    return LayerSpec(parts["weight"], parts["act"])


def _bits(scheme: str, what: str, text: str) -> int:
    bits = int(text)
    if not MIN_BITS <= bits <= MAX_BITS:
        raise QuantbenchError(
            f"quant scheme {scheme!r}: {what} bits {bits} out of range; expected {MIN_BITS}..{MAX_BITS}"
        )
    return bits


def parse_scheme(
    name: str,
    *,
    per_channel: bool = True,
    weight_observer: str = "minmax",
    act_observer: str = "minmax",
    companding: str = "none",
    mu: float = 255.0,
    first_last: str = "same",
    asymmetric_weights: bool = False,
    joins: str = "int8",
) -> QuantPlan:
    """Turn a scheme name into a :class:`QuantPlan`.

    Accepted forms: ``wXaY`` (X-bit weights, Y-bit activations, X, Y in 2..16), ``wX``
    (weights only, activations stay FP32), ``dynamic`` (INT8 per-channel weights quantized
    offline, activations quantized per batch at run time as ONNX ``DynamicQuantizeLinear``
    does: unsigned 8-bit asymmetric) and ``fp32`` (nothing quantized).

    Conventions: weights are signed symmetric (per channel along axis 0 when
    ``per_channel``) because symmetric weights make integer kernels cheap (no zero-point
    cross terms); activations are unsigned asymmetric because post-ReLU tensors are
    non-negative and ONNX Runtime is fast with u8 activations / s8 weights. ``companding``
    applies to weights only: their bell-shaped distributions are what mu-law levels suit,
    while activations stay uniform so that they map onto integer engines.

    Args:
        name: The scheme name (case-insensitive).
        per_channel: Per-output-channel weight scales.
        weight_observer: Observer picking weight ranges.
        act_observer: Observer picking (static) activation ranges.
        companding: ``"none"`` or ``"mulaw"`` for the weights.
        mu: The mu-law parameter.
        first_last: Policy for the first and last layers (see :class:`QuantPlan`).
        asymmetric_weights: Weights below 8 bits on an asymmetric grid (a zero point per
            channel): all ``2^b`` levels span each channel's own ``[min, max]`` instead of
            ``[-amax, amax]``, which matters at 2-4 bits (round to nearest, shared ResNet-20 W4A8:
            +4.80 -> +0.89 points, docs/benchmarks/ptq.md). Free at deployment: the codes are
            stored re-centred, int8 with zero point 0 (:func:`deployed_code_range`). 8-bit and
            wider weights stay symmetric. Not with ``companding`` (mu-law is centred on 0).
        joins: Precision of the inputs of residual adds, concatenations and pooling: ``"int8"``
            (at least 8 bits, the default) or ``"same"`` (the activations' bits); see :class:`QuantPlan`.

    Returns:
        The plan, with ``scheme`` set to the normalised name.

    Raises:
        QuantbenchError: Unknown form, bits out of range, or an invalid option.

    Example:
        >>> parse_scheme("dynamic").default.act.dynamic
        True
    """
    if not isinstance(name, str):
        raise QuantbenchError(f"quant scheme {name!r} unknown; expected one of: {SCHEME_FORMS}")
    key = name.strip().lower()

    if asymmetric_weights and companding != "none":
        raise QuantbenchError(f"quant scheme {name!r}: asymmetric weights cannot be {companding}-companded "
                              "(mu-law levels are centred on 0); drop one of them")

    def weight(bits: int) -> QuantSpec:
        return QuantSpec(
            bits=bits, signed=True, symmetric=not (asymmetric_weights and bits < 8), per_channel=per_channel,
            axis=0, observer=weight_observer, companding=companding, mu=mu,
        )  # fmt: skip

    def act(bits: int, dynamic: bool = False) -> QuantSpec:
        return QuantSpec(
            bits=bits, signed=False, symmetric=False, per_channel=False,
            observer="minmax" if dynamic else act_observer, dynamic=dynamic,
        )  # fmt: skip

    if key == "fp32":
        layer = FP32_LAYER
    elif key == "dynamic":
        layer = LayerSpec(weight(8), act(8, dynamic=True))
    elif m := re.fullmatch(r"w(\d+)a(\d+)", key):
        layer = LayerSpec(weight(_bits(name, "weight", m[1])), act(_bits(name, "activation", m[2])))
    elif m := re.fullmatch(r"w(\d+)", key):
        layer = LayerSpec(weight(_bits(name, "weight", m[1])), None)
    else:
        raise QuantbenchError(f"quant scheme {name!r} unknown; expected one of: {SCHEME_FORMS}")
    return QuantPlan(default=layer, first_last=first_last, scheme=key, joins=joins)
