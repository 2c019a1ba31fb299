"""Post-training quantization: one frozen config, one registry of algorithms, one verb.

An *algorithm* (``--algo``) is a named recipe: which observer picks weight and activation
ranges, and which low-bit rescue steps run (cross-layer equalization before quantizer
insertion, AdaRound on weights, bias correction after). Adding one is a registry entry,
not an ``if`` chain (the torchao habit).

Example:
    >>> cfg = PTQConfig(scheme="w8a8", algo="mse")
    >>> qm = quantize_ptq(model, cfg, calib_data)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.quant.prepare import QuantizedModel, calibrate, prepare
from quantbench.quant.spec import QuantPlan, parse_scheme
from quantbench.registry import Registry


@dataclass(frozen=True)
class Algorithm:
    """A PTQ recipe: range observers plus optional rescue steps."""

    weight_observer: str = "minmax"
    act_observer: str = "minmax"
    equalize: bool = False
    adaround: bool = False
    bias_correction: bool = False
    description: str = ""


ALGOS: Registry[Algorithm] = Registry("PTQ algorithm")
for _name, _algo in {
    "minmax": Algorithm("minmax", "minmax", description="min/max ranges, round to nearest"),
    "percentile": Algorithm(
        "minmax", "percentile", description="activations clipped at the 99.99th percentile"
    ),
    "mse": Algorithm("mse", "mse", description="ranges that minimise quantization MSE"),
    "entropy": Algorithm("minmax", "entropy", description="activation ranges by KL divergence (TensorRT)"),
    "adaround": Algorithm("mse", "mse", adaround=True, description="MSE ranges + AdaRound weight rounding"),
    "adaround-bc": Algorithm(
        "mse", "mse", adaround=True, bias_correction=True, description="AdaRound followed by bias correction"
    ),
    "cle-mse": Algorithm("mse", "mse", equalize=True, description="cross-layer equalization + MSE ranges"),
    "cle-adaround": Algorithm(
        "mse", "mse", equalize=True, adaround=True, description="cross-layer equalization + AdaRound"
    ),
    "bc-mse": Algorithm("mse", "mse", bias_correction=True, description="MSE ranges + bias correction"),
}.items():
    ALGOS.register(_name, description=_algo.description)(_algo)


@dataclass(frozen=True)
class PTQConfig:
    """Everything that defines a post-training quantization run (stored with its results)."""

    scheme: str = "w8a8"
    algo: str = "mse"
    per_channel: bool = True
    companding: str = "none"
    mu: float = 255.0
    first_last: str = "same"
    calib_size: int = 512
    calib_batch_size: int = 64
    adaround_iters: int = 1000
    equalize: bool | None = None  # None: the algorithm decides
    bias_correction: bool | None = None

    def algorithm(self) -> Algorithm:
        algo = ALGOS.get(self.algo)
        changes = {
            k: v
            for k, v in (("equalize", self.equalize), ("bias_correction", self.bias_correction))
            if v is not None
        }
        return dataclasses.replace(algo, **changes)

    def plan(self) -> QuantPlan:
        algo = self.algorithm()
        return parse_scheme(
            self.scheme,
            per_channel=self.per_channel,
            weight_observer=algo.weight_observer,
            act_observer=algo.act_observer,
            companding=self.companding,
            mu=self.mu,
            first_last=self.first_last,
        )

    def label(self) -> str:
        """Short method label used in results: ``w4a8-adaround``, ``dynamic``, ``w8a8-mse-pt-mulaw``."""
        if self.scheme in ("dynamic", "fp32"):
            return self.scheme
        parts = [self.scheme, self.algo]
        base, used = ALGOS.get(self.algo), self.algorithm()
        for flag, tag in (("equalize", "cle"), ("bias_correction", "bc")):
            if getattr(used, flag) != getattr(base, flag):  # an override: the label must say so
                parts.append(tag if getattr(used, flag) else f"no{tag}")
        if not self.per_channel:
            parts.append("pt")
        if self.companding != "none":
            parts.append(self.companding)
        if self.first_last != "same":
            parts.append(f"fl{self.first_last}")
        return "-".join(parts)


def with_observers(plan: QuantPlan, weight_observer: str, act_observer: str) -> QuantPlan:
    """``plan`` with every static spec's observer replaced (a plan built elsewhere, run by an algorithm)."""
    import dataclasses as dc

    def fix(spec: Any, observer: str) -> Any:
        return spec if spec is None or spec.dynamic else spec.replace(observer=observer)

    def layer(ls: Any) -> Any:
        return dc.replace(ls, weight=fix(ls.weight, weight_observer), act=fix(ls.act, act_observer))

    return plan.replace(default=layer(plan.default), overrides={k: layer(v) for k, v in plan.overrides.items()})


def quantize_ptq(model: nn.Module, cfg: PTQConfig, calib_data: Any = None, *,
                 plan: QuantPlan | None = None) -> QuantizedModel:
    """Quantize a float model after training.

    Args:
        model: The float model (left unchanged).
        cfg: Scheme, algorithm and options.
        calib_data: Calibration images (data set view, tensor or (x, y)); needed for static
            activation quantization and for AdaRound/bias correction; ignored for ``dynamic``
            and weight-only schemes unless a rescue step needs it.
        plan: A per-layer plan (e.g. mixed precision) used instead of ``cfg.scheme``; the
            algorithm's observers are applied to every quantizer of it.

    Returns:
        The prepared, calibrated :class:`QuantizedModel` in quantized mode.
    """
    algo = cfg.algorithm()
    plan = cfg.plan() if plan is None else with_observers(plan, algo.weight_observer, algo.act_observer)
    float_model = model.eval()
    if algo.equalize:
        from quantbench.quant.equalize import equalize_folded
        from quantbench.quant.fold import fold_batchnorm

        float_model = equalize_folded(fold_batchnorm(model))
    qm = prepare(float_model, plan)
    needs_data = (
        any(not fq.spec.dynamic for _, fq in qm.act_quantizers()) or algo.adaround or algo.bias_correction
    )
    if needs_data and calib_data is None:
        raise QuantbenchError(f"PTQ {cfg.label()}: calibration data is required")
    n = cfg.calib_size
    if algo.adaround:
        from quantbench.quant.adaround import adaround

        # AdaRound reconstructs each layer from the quantized network's inputs, so activation
        # ranges are calibrated first and refreshed once the weights have changed.
        calibrate(qm, calib_data, n_images=n, batch_size=cfg.calib_batch_size)
        adaround(qm, float_model, calib_data, n_images=n, iters=cfg.adaround_iters)
    if any(not fq.spec.dynamic for _, fq in qm.act_quantizers()):
        calibrate(qm, calib_data, n_images=n, batch_size=cfg.calib_batch_size)
    if algo.bias_correction:
        from quantbench.quant.bias_correction import bias_correction

        bias_correction(qm, float_model, calib_data, n_images=n)
    qm.set_mode("quant")
    return qm.eval()
