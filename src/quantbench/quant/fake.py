"""Quantize / dequantize / fake-quantize tensors, with the gradient rules QAT needs.

Why simulation ("fake" quantization): it rounds and clips exactly as an integer engine
would but keeps float tensors, so any PyTorch model can be measured and trained with
quantization error, and the engine-parity tests can hold the real engines to it.

Numerics follow ONNX ``QuantizeLinear``/``DequantizeLinear`` bit for bit:
``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` (division, not multiplication by
``1/scale``; round half to even), ``x' = (q - zero_point) * scale``. Per-channel ``scale``/
``zero_point`` of shape ``[C]`` are broadcast along ``spec.axis``; parameters that already
have ``x.dim()`` dimensions are used as given. Specs with ``companding="mulaw"`` go through
:mod:`quantbench.quant.companding` with the same ``scale`` (clipping magnitude
``scale * qmax``).

Gradients: :func:`fake_quantize` uses the straight-through estimator (gradient 1 where
``round(x / scale) + zero_point`` lies in ``[qmin, qmax]``, 0 where it is clipped);
:func:`lsq_fake_quantize` also learns ``scale`` (LSQ, Esser et al., ICLR 2020).

Example:
    >>> import torch
    >>> from quantbench.quant.spec import QuantSpec
    >>> spec = QuantSpec(bits=8)
    >>> fake_quantize(torch.tensor([0.1234]), torch.tensor(0.01), torch.tensor(0), spec)
    tensor([0.1200])
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from quantbench.errors import QuantbenchError
from quantbench.quant.companding import companded_dequantize, companded_fake_quant, companded_quantize
from quantbench.quant.spec import QuantSpec, deployed_code_range

if TYPE_CHECKING:  # observers.py imports this module at run time
    from quantbench.quant.observers import Observer

EPS = float(torch.finfo(torch.float32).eps)
"""Smallest scale used anywhere: guards all-zero ranges and keeps learned scales positive."""

MODES = ("observe", "quant", "off", "observe+quant")
ROLES = ("weight", "act")


def broadcast_param(p: Tensor | float | int, x: Tensor, spec: QuantSpec) -> Tensor:
    """Shape a scale / zero point for broadcasting against ``x``.

    ``[]`` and tensors with ``x.dim()`` dimensions are returned as they are; ``[C]`` is laid
    along ``spec.axis`` (negative axes count from the end, as in PyTorch).
    """
    p = torch.as_tensor(p, device=x.device)
    if p.dim() == 0 or p.dim() == x.dim():
        return p
    if p.dim() != 1:
        raise ValueError(
            f"quantization parameter of shape {tuple(p.shape)} cannot broadcast to {tuple(x.shape)}"
        )
    shape = [1] * x.dim()
    shape[spec.axis % x.dim()] = -1
    return p.reshape(shape)


def quantize(x: Tensor, scale: Tensor | float, zero_point: Tensor | int, spec: QuantSpec) -> Tensor:
    """Integer codes of ``x`` (int32), as ONNX ``QuantizeLinear`` computes them.

    Args:
        x: Float tensor.
        scale: ``[]`` or ``[C]`` (per channel along ``spec.axis``), > 0.
        zero_point: Same shape as ``scale``, integer values in ``[qmin, qmax]``.
        spec: Bits, signedness, companding.

    Returns:
        int32 tensor of ``x``'s shape with values in ``[spec.qmin, spec.qmax]``.
    """
    s = broadcast_param(scale, x, spec).to(torch.float32)
    if spec.companding != "none":
        return companded_quantize(x, s * spec.qmax, spec)
    z = broadcast_param(zero_point, x, spec)
    q = torch.round(x.to(torch.float32) / s) + z
    return torch.clamp(q, spec.qmin, spec.qmax).to(torch.int32)


def deployed_codes(
    x: Tensor, scale: Tensor | float, zero_point: Tensor | int, spec: QuantSpec
) -> tuple[Tensor, Tensor]:
    """The integer codes and zero point an engine stores for ``x``: :func:`quantize`'s codes, except
    that an asymmetric grid whose span fits int8 is stored re-centred, ``q - zero_point`` with zero
    point 0 - the same values ``(q - z) * scale``, in the form integer kernels take (see
    :func:`~quantbench.quant.spec.deployed_code_range`). One place for every exporter and engine.

    Returns:
        ``(codes int32, zero point int32 of scale's shape)``.

    Example:
        >>> spec = QuantSpec(bits=4, symmetric=False)
        >>> deployed_codes(torch.tensor([0.0, 1.5]), torch.tensor(0.1), torch.tensor(-8), spec)
        (tensor([ 0, 15], dtype=torch.int32), tensor(0, dtype=torch.int32))
    """
    q = quantize(x, scale, zero_point, spec)
    z = torch.as_tensor(zero_point).to(torch.int32)
    if deployed_code_range(spec) != (spec.qmin, spec.qmax):
        return q - broadcast_param(z, q, spec).to(torch.int32), torch.zeros_like(z)
    return q, z


def dequantize(q: Tensor, scale: Tensor | float, zero_point: Tensor | int, spec: QuantSpec) -> Tensor:
    """Real values (float32) of integer codes, as ONNX ``DequantizeLinear``: ``(q - zp) * scale``."""
    s = broadcast_param(scale, q, spec).to(torch.float32)
    if spec.companding != "none":
        return companded_dequantize(q, s * spec.qmax, spec)
    z = broadcast_param(zero_point, q, spec).to(torch.int32)
    return (q.to(torch.int32) - z).to(torch.float32) * s


def fake_quantize(x: Tensor, scale: Tensor | float, zero_point: Tensor | int, spec: QuantSpec) -> Tensor:
    """``dequantize(quantize(x))`` with a straight-through gradient for ``x``.

    The gradient is 1 where ``x`` falls inside the representable range and 0 where it is
    clipped, so QAT learns to pull outliers back in range instead of pushing them further.
    ``scale`` and ``zero_point`` get no gradient (see :func:`lsq_fake_quantize`).

    Returns:
        float32 tensor (or ``x``'s floating dtype) of ``x``'s shape.
    """
    s = broadcast_param(scale, x, spec).to(torch.float32)
    xd = x.detach().to(torch.float32)
    if spec.companding != "none":
        smax = s * spec.qmax
        xq = companded_fake_quant(xd, smax, spec)
        if x.requires_grad:
            inside = (xd <= smax) & (xd >= (-smax if spec.signed else torch.zeros_like(smax)))
    else:
        z = broadcast_param(zero_point, x, spec)
        t = torch.round(xd / s).add_(z)  # in place on the fresh quotient: x itself is never written
        if x.requires_grad:
            inside = (t >= spec.qmin) & (t <= spec.qmax)
            xq = (torch.clamp(t, spec.qmin, spec.qmax) - z) * s
        else:  # evaluation: the mask is not needed and the temporaries are reused (about half the passes)
            xq = t.clamp_(spec.qmin, spec.qmax).sub_(z).mul_(s)
    if x.is_floating_point():
        xq = xq.to(x.dtype)
    if not x.requires_grad:
        return xq
    return xq + (x - x.detach()) * inside


def lsq_grad_scale(numel: int, spec: QuantSpec) -> float:
    """LSQ's gradient scale ``g = 1 / sqrt(numel * qmax)`` (``numel`` elements per scale)."""
    return 1.0 / math.sqrt(max(int(numel), 1) * spec.qmax)


def lsq_fake_quantize(
    x: Tensor, scale: Tensor, zero_point: Tensor | int, spec: QuantSpec, grad_scale: float
) -> Tensor:
    """Fake quantization with a learnable step size (LSQ).

    Values equal :func:`fake_quantize`. Gradients (Esser et al. 2020, eq. 3) with
    ``v = x / scale``: for ``x`` 1 inside the range and 0 outside; for ``scale``
    ``round(v) - v`` inside, ``qmin - zp`` below and ``qmax - zp`` above, multiplied by
    ``grad_scale`` so that the step size learns at the pace of the weights.

    Args:
        x: Input.
        scale: Step size(s) requiring grad, ``[]`` or ``[C]``; keep them > 0 (clamp before).
        zero_point: Fixed integer zero point(s).
        spec: Uniform spec (companding is not learnable).
        grad_scale: ``g``, usually :func:`lsq_grad_scale`.
    """
    if spec.companding != "none":
        raise QuantbenchError(f"LSQ: companding {spec.companding!r} is not supported; use companding='none'")
    s = broadcast_param(scale, x, spec)
    s = scaled_grad(s, grad_scale)
    z = broadcast_param(zero_point, x, spec).to(s.dtype)
    return lsq_round_clamp(x, s, z, spec.qmin, spec.qmax)


def scaled_grad(s: Tensor, g: float) -> Tensor:
    """``s`` unchanged in value (bit for bit), its gradient multiplied by ``g`` (LSQ's step-size factor).

    Example:
        >>> s = torch.tensor(0.3, requires_grad=True)
        >>> scaled_grad(s, 0.5).backward()
        >>> float(s.grad)
        0.5
    """
    sg = s * g
    return s.detach() + (sg - sg.detach())


def lsq_round_clamp(x: Tensor, s: Tensor, z: Tensor, lo: Tensor | float, hi: Tensor | float) -> Tensor:
    """``(clamp(round(x / s) + z, lo, hi) - z) * s`` with a straight-through round: LSQ's core.

    With ``s`` and ``z`` already broadcast to ``x`` (and ``s`` carrying the gradient factor, see
    :func:`lsq_fake_quantize`), autograd's rules give exactly LSQ's gradients: ``x`` gets 1 where the
    code is inside ``[lo, hi]`` (clamp passes it at the bounds) and 0 outside; ``s`` gets ``round(v) - v``
    inside and ``lo - z`` / ``hi - z`` outside. One formula for the eager path and for the compiled
    one (:mod:`quantbench.quant.fused`, which passes the bounds as tensors so it never recompiles for them).

    Example:
        >>> x = torch.tensor([0.26, 9.0])
        >>> lsq_round_clamp(x, torch.tensor(0.1), torch.tensor(0.0), 0, 15)
        tensor([0.3000, 1.5000])
    """
    v = x / s
    r = v + (torch.round(v) - v).detach()  # round with identity gradient
    return (torch.clamp(r + z, lo, hi) - z) * s


def pact_fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor | int, spec: QuantSpec) -> Tensor:
    """Fake quantization whose clipping bound is learned with PACT's gradient (Choi et al. 2018).

    Values equal :func:`fake_quantize`. The upper clip is ``alpha = (qmax - zp) * scale``;
    as in PACT, ``d y / d alpha = 1`` where ``x >= alpha`` and 0 elsewhere (the rounding
    error inside the range does not move the bound, unlike LSQ), and ``x`` gets the
    straight-through gradient inside the range. Per-tensor scales only.
    """
    if spec.companding != "none":
        raise QuantbenchError(f"PACT: companding {spec.companding!r} is not supported; use companding='none'")
    s = broadcast_param(scale, x, spec)
    z = broadcast_param(zero_point, x, spec).to(s.dtype)
    hi = (spec.qmax - z) * s
    lo = (spec.qmin - z) * s.detach()
    clipped = torch.minimum(torch.maximum(x, lo), hi)  # gradient 1 to hi where x >= hi
    return fake_quantize(clipped.detach(), s.detach(), zero_point, spec) - clipped.detach() + clipped


class FakeQuant(nn.Module):
    """The quantizer inserted at a weight or an activation; what PTQ calibrates and QAT trains.

    Modes (``.mode``): ``"observe"`` feeds the observer and passes ``x`` through;
    ``"quant"`` fake-quantizes with the frozen ``scale``/``zero_point``; ``"observe+quant"``
    does both, refreshing the parameters from the observer on every batch (QAT with running
    ranges; a learnable scale is kept); ``"off"`` is the identity. Dynamic specs ignore the
    buffers and use each batch's own min/max, as ONNX ``DynamicQuantizeLinear`` does.

    Args:
        spec: The :class:`QuantSpec`.
        learnable: See below.
        role: See below.
        observer: A ready observer (e.g. ``EmaMinMaxObserver(spec, momentum=0.01)``);
            default: ``OBSERVERS.get(spec.observer)(spec)``.

    Attributes:
        spec: The :class:`QuantSpec`.
        role: ``"weight"`` or ``"act"`` (only changes LSQ's gradient scale: per-sample
            element count for activations, as in the paper).
        learnable: LSQ; ``freeze()`` turns ``scale`` into an ``nn.Parameter`` (build the
            optimizer after freezing). The step used is ``max(|scale|, EPS)``.
        observer: The observer instance (not part of ``state_dict``).
        calibrated: Whether ``scale``/``zero_point`` hold real values (set by ``freeze()``
            and by ``load_state_dict``).
        scale: Buffer (or Parameter when learnable), float32, ``[]`` or ``[C]``.
        zero_point: Buffer, int32, same shape.

    Example:
        >>> from quantbench.quant.spec import QuantSpec
        >>> fq = FakeQuant(QuantSpec(bits=8, signed=False, symmetric=False))
        >>> _ = fq(torch.rand(4, 3))        # observe
        >>> y = fq.freeze()(torch.rand(4, 3))  # quantize
    """

    scale: Tensor
    zero_point: Tensor

    def __init__(
        self, spec: QuantSpec, *, learnable: bool = False, role: str = "act", observer: Observer | None = None
    ) -> None:
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"FakeQuant needs a QuantSpec, got {type(spec).__name__}")
        if role not in ROLES:
            raise QuantbenchError(f"FakeQuant: role {role!r} unknown; expected one of: {', '.join(ROLES)}")
        if learnable and (spec.dynamic or spec.companding != "none"):
            raise QuantbenchError(f"FakeQuant: learnable scale is not supported for {spec.short()}")
        from quantbench.quant.observers import OBSERVERS  # observers import this module

        self.spec = spec
        self.role = role
        self.learnable = learnable
        self.observer = observer if observer is not None else OBSERVERS.get(spec.observer)(spec)
        self.calibrated = False
        self.grad = "lsq"  # how a learnable scale learns: "lsq" (step size) or "pact" (clip bound)
        self._mode = "observe"
        self.register_buffer("scale", torch.ones((), dtype=torch.float32))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))

    @property
    def mode(self) -> str:
        """One of :data:`MODES`."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise QuantbenchError(f"FakeQuant: mode {value!r} unknown; expected one of: {', '.join(MODES)}")
        self._mode = value

    def freeze(self) -> FakeQuant:
        """Take ``scale``/``zero_point`` from the observer and switch to ``"quant"`` mode.

        Raises:
            QuantbenchError: The observer saw no data (calibration did not run).
        """
        if not self.spec.dynamic:
            self._set_qparams(*self.observer.qparams())
            if self.learnable and not isinstance(self.scale, nn.Parameter):
                scale = self.scale.detach().clone()
                del self._buffers["scale"]
                self.scale = nn.Parameter(scale)
        self.calibrated = True
        self.mode = "quant"
        return self

    def make_learnable(self, grad: str = "lsq") -> FakeQuant:
        """Turn a calibrated quantizer's ``scale`` into a trainable parameter (QAT from a PTQ start).

        Args:
            grad: ``"lsq"`` (Esser et al. 2020: the step size learns from every element) or
                ``"pact"`` (Choi et al. 2018: only the clipping bound learns, from clipped
                elements; per-tensor activations).
        """
        if grad not in ("lsq", "pact"):
            raise QuantbenchError(f"FakeQuant: learnable scale gradient {grad!r} unknown; expected lsq or pact")
        if self.spec.dynamic or self.spec.companding != "none":
            raise QuantbenchError(f"FakeQuant: learnable scale is not supported for {self.spec.short()}")
        if not self.calibrated:
            raise QuantbenchError(f"FakeQuant({self.spec.short()}): calibrate before making the scale learnable")
        if grad == "pact" and self.scale.dim() != 0:
            raise QuantbenchError("FakeQuant: PACT learns one clipping bound per tensor, not per channel")
        self.learnable = True
        self.grad = grad
        if not isinstance(self.scale, nn.Parameter):
            scale = self.scale.detach().clone()
            del self._buffers["scale"]
            self.scale = nn.Parameter(scale)
        return self

    def qparams(self) -> tuple[Tensor, Tensor]:
        """Detached ``(scale, zero_point)`` as an engine should use them (scale > 0)."""
        return self.scale.detach().abs().clamp(min=EPS), self.zero_point.detach().clone()

    def _set_qparams(self, scale: Tensor, zero_point: Tensor) -> None:
        device = self.zero_point.device
        if isinstance(self.scale, nn.Parameter):
            with torch.no_grad():
                if self.scale.shape != scale.shape:
                    self.scale = nn.Parameter(scale.to(device).clone())
                else:
                    self.scale.copy_(scale)
        else:
            self.scale = scale.to(device=device, dtype=torch.float32)
        self.zero_point = zero_point.to(device=device, dtype=torch.int32)

    def _grad_scale(self, x: Tensor) -> float:
        numel = x.numel()
        if self.role == "act" and x.dim() > 1:
            numel //= max(x.shape[0], 1)
        if self.scale.dim() == 1:
            numel //= max(self.scale.numel(), 1)
        return lsq_grad_scale(numel, self.spec)

    def forward(self, x: Tensor) -> Tensor:
        mode = self._mode
        if mode == "off":
            return x
        if mode in ("observe", "observe+quant"):
            self.observer.update(x)
            if mode == "observe":
                return x
        if self.spec.dynamic:
            from quantbench.quant.observers import compute_qparams, tensor_range

            scale, zero_point = compute_qparams(*tensor_range(x, self.spec), self.spec)
            return fake_quantize(x, scale, zero_point, self.spec)
        if mode == "observe+quant" and not self.learnable:
            self._set_qparams(*self.observer.qparams())
            self.calibrated = True
        if not self.calibrated:
            raise QuantbenchError(
                f"FakeQuant({self.spec.short()}) has no quantization parameters; calibrate, then freeze()"
            )
        if self.learnable and isinstance(self.scale, nn.Parameter):
            # |s|: an optimizer step past 0 (Adam's steps ignore the gradient's size) flips the
            # sign instead of freezing the quantizer at EPS with a zero gradient.
            scale = self.scale.abs().clamp(min=EPS)
            if self.grad == "pact":
                return pact_fake_quantize(x, scale, self.zero_point, self.spec)
            return lsq_fake_quantize(x, scale, self.zero_point, self.spec, self._grad_scale(x))
        return fake_quantize(x, self.scale, self.zero_point, self.spec)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Per-channel parameters are created by freeze(); a fresh module has scalar
        # placeholders, so adopt the saved shapes instead of failing on a size mismatch.
        for name in ("scale", "zero_point"):
            incoming = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(incoming, Tensor) and incoming.shape != current.shape:
                fresh = torch.empty(incoming.shape, dtype=current.dtype, device=current.device)
                if isinstance(current, nn.Parameter):
                    setattr(self, name, nn.Parameter(fresh))
                else:
                    self._buffers[name] = fresh
        if prefix + "scale" in state_dict:
            if self.learnable and not isinstance(self.scale, nn.Parameter):
                scale = self.scale.detach().clone()
                del self._buffers["scale"]
                self.scale = nn.Parameter(scale)
            self.calibrated = True
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        extra = ", learnable" if self.learnable else ""
        return f"{self.spec.short()}, role={self.role}, mode={self._mode}{extra}"
