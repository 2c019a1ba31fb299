"""Post-training quantization: one frozen config, one registry of algorithms, one verb.

An *algorithm* (``--algo``) is a named recipe: which observer picks weight and activation
ranges, and which low-bit rescue steps run (cross-layer equalization before quantizer
insertion, AdaRound on weights or BRECQ/QDrop block reconstruction, bias correction after).
Adding one is a registry entry, not an ``if`` chain (the torchao habit).

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
from quantbench.quant.spec import JOINS, WEIGHT_RANGES, QuantPlan, parse_scheme
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
    reconstruct: str = "none"  # "block": BRECQ/QDrop block reconstruction (quantbench.quant.brecq)
    drop_prob: float = 0.0  # QDrop's probability of skipping an activation quantizer element
    pd_weight: float = 0.0  # PD-Quant's prediction-difference term in the reconstruction loss (0: none)
    iters: int = 1000  # default optimisation steps per layer (AdaRound) or per block (BRECQ/QDrop)
    asymmetric_weights: bool = False  # weights below 8 bits on a per-channel asymmetric grid (parse_scheme)
    bias_tuning: bool = False  # finally learn every bias against the float predictions (quant/bias_tuning.py)


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
    # 3,000 steps per block: what W4A4 needed on the shared ResNet-20 (1,000: +2.04 points, 3,000: +0.60;
    # docs/benchmarks/ptq.md); AdaRound's 1,000 per layer holds W4A8 within noise. Asymmetric low-bit
    # weights, as the published BRECQ/QDrop recipes quantize them: shared ResNet-20 W2A4 QDrop +4.1..+4.7
    # points symmetric, +1.87 asymmetric (docs/benchmarks/ptq.md); ``-noasym`` gives the symmetric grid.
    "brecq": Algorithm("mse", "mse", reconstruct="block", iters=3000, asymmetric_weights=True, description=(
        "BRECQ: block-wise weight rounding with the block output loss + learned activation steps")),
    "qdrop": Algorithm("mse", "mse", reconstruct="block", drop_prob=0.5, iters=3000, asymmetric_weights=True,
                       description=("QDrop: BRECQ with activation quantization dropped per element (p 0.5) "
                                    "while reconstructing")),
    # PD-Quant's ResNet setting (weight 1/0.2, temperature 4), without its distribution correction. First
    # hold-out CNN W4A4: +1.30/+1.20 points (seeds 0/1) against QDrop's +1.30/+2.60, lower cross-entropy on
    # both, 1.8x QDrop's time; shared ResNet-20 W4A4 -0.00 against +0.42 in 1,225 s against 496 s (ptq.md).
    "pdquant": Algorithm("mse", "mse", reconstruct="block", drop_prob=0.5, pd_weight=5.0, iters=3000,
                         asymmetric_weights=True,
                         description=("PD-Quant: QDrop + the float network's prediction difference (KL) in the "
                                      "loss of each block (2-2.5x QDrop's time)")),
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
    adaround_iters: int | None = None  # None: the algorithm's own step count (Algorithm.iters)
    equalize: bool | None = None  # None: the algorithm decides
    bias_correction: bool | None = None
    weight_range: str = "full"  # "reduced": 7-bit codes for 8-bit weights (see QuantPlan.weight_range)
    asymmetric_weights: bool | None = None  # None: the algorithm decides (brecq/qdrop/pdquant asymmetric, others not)
    bias_tuning: bool | None = None  # None: the algorithm decides
    # inputs of residual adds/concats/pooling below 8-bit activations: "int8" (>= 8 bits), "same" (the
    # activations' bits) or "auto": whichever matches the float model better on the calibration images
    # (quantbench.quant.joins; the plan then holds the choice)
    joins: str = "auto"

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> PTQConfig:
        """The config a result or ``.qbm`` header stored (``asdict``); keys added since read as what
        files from before them were made with (``joins="same"``).

        Example:
            >>> PTQConfig.from_stored({"scheme": "w4a4", "algo": "mse"}).label()
            'w4a4:mse-jsame'
        """
        return cls(**{"joins": "same", **data})

    def algorithm(self) -> Algorithm:
        algo = ALGOS.get(self.algo)
        changes = {
            k: v
            for k, v in (("equalize", self.equalize), ("bias_correction", self.bias_correction),
                         ("asymmetric_weights", self.asymmetric_weights), ("bias_tuning", self.bias_tuning))
            if v is not None
        }
        return dataclasses.replace(algo, **changes)

    def iterations(self) -> int:
        """Reconstruction steps per layer (AdaRound) or per block (BRECQ/QDrop): the explicit
        ``adaround_iters``, else the algorithm's default."""
        return self.adaround_iters if self.adaround_iters is not None else self.algorithm().iters

    def resolved(self) -> PTQConfig:
        """This config with the step count spelled out where the algorithm uses one: what a result
        and a model file store, so they say how many steps made them even when the default did."""
        algo = self.algorithm()
        out = self
        if self.adaround_iters is None and (algo.adaround or algo.reconstruct != "none"):
            out = dataclasses.replace(out, adaround_iters=algo.iters)
        if self.asymmetric_weights is None and self.plan().has_asymmetric_weights:
            out = dataclasses.replace(out, asymmetric_weights=True)
        return out

    def plan(self) -> QuantPlan:
        if self.weight_range not in WEIGHT_RANGES:
            raise QuantbenchError(f"PTQ config: weight_range {self.weight_range!r} unknown; expected one of: "
                                  f"{', '.join(WEIGHT_RANGES)}")
        if self.joins not in JOINS_CHOICES:
            raise QuantbenchError(f"PTQ config: joins {self.joins!r} unknown; expected one of: {', '.join(JOINS_CHOICES)}")
        algo = self.algorithm()
        plan = parse_scheme(
            self.scheme,
            per_channel=self.per_channel,
            weight_observer=algo.weight_observer,
            act_observer=algo.act_observer,
            companding=self.companding,
            mu=self.mu,
            first_last=self.first_last,
            # the algorithm's default applies where it can (uniform levels); asked for with mu-law, it is refused
            asymmetric_weights=algo.asymmetric_weights and (self.companding == "none" or bool(self.asymmetric_weights)),
            joins="int8" if self.joins == "auto" else self.joins,  # auto: quantize_ptq chooses on the model
        )
        if self.weight_range != "full" and plan.can_saturate:  # where it changes nothing, it is not stored
            plan = plan.replace(weight_range=self.weight_range)
        return plan

    def label(self) -> str:
        """The method's one spelling, also its label in results: ``w4a8:adaround``, ``dynamic``,
        ``w8a8:mse-pt-mulaw`` (options that differ from the algorithm's defaults are tags).

        :func:`parse_method` reads every label back, so a label copied from a table is a valid ``--method``.
        """
        if self.scheme in ("dynamic", "fp32"):
            return self.scheme
        tags = []
        base, used = ALGOS.get(self.algo), self.algorithm()
        for flag, tag in (("equalize", "cle"), ("bias_correction", "bc"), ("asymmetric_weights", "asym"),
                          ("bias_tuning", "bt")):
            if getattr(used, flag) != getattr(base, flag):  # an override: the label must say so
                tags.append(tag if getattr(used, flag) else f"no{tag}")
        if not self.per_channel:
            tags.append("pt")
        if self.companding != "none":
            tags.append(self.companding)
        if self.first_last != "same":
            tags.append(f"fl{self.first_last}")
        if self.weight_range != "full" and self.plan().weight_range != "full":  # plan(): only where it applies
            tags.append(self.weight_range)
        if self.joins != "auto" and self.plan().has_low_bit_joins:
            tags.append(f"j{self.joins}")
        return f"{self.scheme}:{'-'.join([self.algo, *tags])}"


_TAGS = {"cle": {"equalize": True}, "nocle": {"equalize": False}, "bc": {"bias_correction": True},
         "nobc": {"bias_correction": False}, "pt": {"per_channel": False}, "mulaw": {"companding": "mulaw"},
         "flint8": {"first_last": "int8"}, "flfp32": {"first_last": "fp32"}, "reduced": {"weight_range": "reduced"},
         "asym": {"asymmetric_weights": True}, "noasym": {"asymmetric_weights": False}, "jsame": {"joins": "same"},
         "jint8": {"joins": "int8"}, "bt": {"bias_tuning": True}, "nobt": {"bias_tuning": False}}
METHOD_TAGS = tuple(_TAGS)  # what a method label may carry after its algorithm, ``-flint8``


def parse_method(text: str, **defaults: Any) -> PTQConfig:
    """``SCHEME[:ALGO[-TAG...]]`` -> :class:`PTQConfig` (the inverse of :meth:`PTQConfig.label`).

    The algorithm defaults to ``mse``; tags are the label's option tags (``pt`` per-tensor, ``mulaw``,
    ``flint8``/``flfp32`` first/last layer policy, ``cle``/``bc`` and their ``no`` forms, ``reduced``
    7-bit codes for 8-bit weights, ``asym``/``noasym`` asymmetric grids for weights below 8 bits or not;
    ``brecq``, ``qdrop`` and ``pdquant`` use them by default, as their published recipes do; ``jsame`` quantizes the
    inputs of residual adds, concatenations and pooling at the activations' bits below 8 bits, where
    ``jint8`` at 8 bits; without either, :func:`quantize_ptq` measures both on the model and keeps the one
    that matches the float model better, see :mod:`quantbench.quant.joins`; ``bt`` finally tunes every
    bias against the float predictions, see :mod:`quantbench.quant.bias_tuning`).
    ``defaults`` are PTQConfig fields set before the tags apply (e.g. ``calib_size``).

    Example:
        >>> parse_method("w4a8:adaround-flint8").first_last
        'int8'
        >>> parse_method("w8a8").label()
        'w8a8:mse'
    """
    if not isinstance(text, str) or not text.strip():
        raise QuantbenchError(f"method {text!r}: expected SCHEME[:ALGO], e.g. w8a8:mse or w4a8:adaround")
    scheme, _, rest = text.strip().partition(":")
    scheme = scheme.strip()
    rest = rest.strip() or "mse"
    names = sorted(ALGOS.names(), key=len, reverse=True)
    algo = next((a for a in names if rest == a or rest.startswith(a + "-")), None)
    if algo is None:
        raise QuantbenchError(f"method {text!r}: unknown algorithm in {rest!r}; expected one of: "
                              f"{', '.join(ALGOS.names())}")
    fields: dict[str, Any] = dict(defaults)
    for tag in [t for t in rest[len(algo):].split("-") if t]:
        if tag not in _TAGS:
            raise QuantbenchError(f"method {text!r}: unknown option tag {tag!r}; expected: {', '.join(_TAGS)}")
        fields.update(_TAGS[tag])
    cfg = PTQConfig(scheme=scheme, algo=algo, **fields)
    plan = cfg.plan()  # validates the scheme now
    if cfg.asymmetric_weights is not None and not (
            plan.has_asymmetric_weights or dataclasses.replace(cfg, asymmetric_weights=True).plan().has_asymmetric_weights):
        tag = "asym" if cfg.asymmetric_weights else "noasym"
        raise QuantbenchError(f"method {text!r}: '{tag}' applies to weights below 8 bits; {scheme} has none "
                              "(8-bit weights stay symmetric, the grid integer kernels take)")
    if cfg.joins != "auto" and not plan.has_low_bit_joins:
        raise QuantbenchError(f"method {text!r}: 'j{cfg.joins}' applies to static activations below 8 bits; {scheme} has "
                              "none (joins of 8-bit activations are 8-bit already)")
    return cfg


WEIGHT_RANGE_CHOICES = ("auto", *WEIGHT_RANGES)
JOINS_CHOICES = ("auto", *JOINS)


def resolve_weight_range(cfg: PTQConfig, choice: str = "auto") -> tuple[PTQConfig, str]:
    """``cfg`` with its 8-bit weight grid chosen, and why (the sentence a run records).

    ``auto`` takes 7-bit codes (``reduced``) where this CPU's u8 x s8 kernels saturate (x86 without
    VNNI/AMX, see :func:`~quantbench.engines.base.int8_saturates`), the full grid elsewhere; ``full``
    and ``reduced`` are taken as they are. A method whose label already says ``reduced`` keeps it
    under ``auto``; the flag ``full`` beside that tag is a contradiction and refused. Plans without
    8-bit weights meeting 8-bit activations (w4a8, w8 weight-only, dynamic) are unchanged.

    Example:
        >>> resolve_weight_range(parse_method("w8a8"), "reduced")[0].label()
        'w8a8:mse-reduced'
        >>> resolve_weight_range(parse_method("w4a8"), "reduced")[0].label()  # no 8-bit weights
        'w4a8:mse'
    """
    if choice not in WEIGHT_RANGE_CHOICES:
        raise QuantbenchError(f"weight_range {choice!r} unknown; expected one of: {', '.join(WEIGHT_RANGE_CHOICES)}")
    if not cfg.plan().can_saturate:
        return cfg, "full (no 8-bit weights meet 8-bit activations in this method)"
    if cfg.weight_range == "reduced":
        if choice == "full":
            raise QuantbenchError(f"method {cfg.label()!r} says reduced but weight_range is full; drop one of them")
        return cfg, "reduced (asked for in the method)"
    if choice != "auto":
        return dataclasses.replace(cfg, weight_range=choice), f"{choice} (asked for)"
    from quantbench.engines.base import int8_saturates

    saturates, why = int8_saturates()
    return dataclasses.replace(cfg, weight_range="reduced" if saturates else "full"), \
        f"{'reduced' if saturates else 'full'} (auto: {why})"


def with_observers(plan: QuantPlan, weight_observer: str, act_observer: str) -> QuantPlan:
    """``plan`` with every static spec's observer replaced (a plan built elsewhere, run by an algorithm)."""
    import dataclasses as dc

    def fix(spec: Any, observer: str) -> Any:
        return spec if spec is None or spec.dynamic else spec.replace(observer=observer)

    def layer(ls: Any) -> Any:
        return dc.replace(ls, weight=fix(ls.weight, weight_observer), act=fix(ls.act, act_observer))

    return plan.replace(default=layer(plan.default), overrides={k: layer(v) for k, v in plan.overrides.items()})


def quantize_ptq(model: nn.Module, cfg: PTQConfig, calib_data: Any = None, *,
                 plan: QuantPlan | None = None, progress: bool = False,
                 reconstruct_options: dict[str, Any] | None = None) -> QuantizedModel:
    """Quantize a float model after training.

    Args:
        model: The float model (left unchanged).
        cfg: Scheme, algorithm and options.
        calib_data: Calibration images (data set view, tensor or (x, y)); needed for static
            activation quantization and for AdaRound/bias correction; ignored for ``dynamic``
            and weight-only schemes unless a rescue step needs it.
        plan: A per-layer plan (e.g. mixed precision) used instead of ``cfg.scheme``; the
            algorithm's observers are applied to every quantizer of it.
        progress: Bars on stderr for calibration, AdaRound, block reconstruction and bias correction.
        reconstruct_options: Keywords for :func:`~quantbench.quant.brecq.reconstruct` over the
            algorithm's own (``drop_prob``, ``act_lr``, ``seed``, ...): for studying BRECQ/QDrop variants
            (benchmarks/reconstruct_variants.py); refused for an algorithm without block reconstruction.

    Returns:
        The prepared, calibrated :class:`QuantizedModel` in quantized mode.
    """
    algo = cfg.algorithm()
    if reconstruct_options and algo.reconstruct == "none":
        with_it = ", ".join(n for n in ALGOS.names() if ALGOS.get(n).reconstruct != "none")
        raise QuantbenchError(f"PTQ {cfg.label()}: reconstruction options given to a method without block "
                              f"reconstruction ({with_it})")
    plan = cfg.plan() if plan is None else with_observers(plan, algo.weight_observer, algo.act_observer)
    float_model = model.eval()
    if algo.equalize:
        from quantbench.quant.equalize import equalize_folded
        from quantbench.quant.fold import fold_batchnorm

        float_model = equalize_folded(fold_batchnorm(model))
    reconstructs = algo.reconstruct != "none"
    n = cfg.calib_size
    joins_note, calibrated = "", False
    if cfg.joins == "auto" and plan.has_low_bit_joins and calib_data is not None:  # without data: refused below
        from quantbench.quant.joins import choose_joins

        # both placements calibrated; the one closer to the float model goes on (already calibrated)
        qm, joins_note = choose_joins(float_model, plan, calib_data, n_images=n, batch_size=cfg.calib_batch_size,
                                      progress=progress)
        calibrated = True
    else:
        qm = prepare(float_model, plan if cfg.joins == "auto" else plan.replace(joins=cfg.joins))
    needs_data = (any(not fq.spec.dynamic for _, fq in qm.act_quantizers()) or algo.adaround
                  or algo.bias_correction or algo.bias_tuning or reconstructs)
    if needs_data and calib_data is None:
        raise QuantbenchError(f"PTQ {cfg.label()}: calibration data is required")

    def calibrate_once() -> None:
        nonlocal calibrated  # once: a second call (bias tuning after reconstruction) must keep learned steps
        if not calibrated:
            calibrate(qm, calib_data, n_images=n, batch_size=cfg.calib_batch_size, progress=progress)
            calibrated = True

    if algo.adaround:
        from quantbench.quant.adaround import adaround

        # AdaRound reconstructs each layer from the quantized network's inputs, so activation
        # ranges are calibrated first and refreshed once the weights have changed.
        calibrate_once()
        adaround(qm, float_model, calib_data, n_images=n, iters=cfg.iterations(), progress=progress)
    if reconstructs:
        from quantbench.quant.brecq import reconstruct

        # Block reconstruction starts from calibrated activation steps and learns them, so there is
        # no re-calibration afterwards (it would discard the learned steps).
        calibrate_once()
        options = {"iters": cfg.iterations(), "drop_prob": algo.drop_prob, "granularity": algo.reconstruct,
                   "pd_weight": algo.pd_weight, **(reconstruct_options or {})}
        reconstruct(qm, float_model, calib_data, n_images=n, progress=progress, module_tree=model, **options)
    elif any(not fq.spec.dynamic for _, fq in qm.act_quantizers()):
        calibrate_once()
    if algo.bias_correction:
        from quantbench.quant.bias_correction import bias_correction

        bias_correction(qm, float_model, calib_data, n_images=n, progress=progress)
    if algo.bias_tuning:
        from quantbench.quant.bias_tuning import tune_biases

        # last: every other step has chosen its weights and steps (and calibrated); the biases absorb
        # what they pass on, learned against the model as it will be deployed
        qm.set_mode("quant")
        tuned = tune_biases(qm, float_model, calib_data, n_images=n, progress=progress)
        qm.notes["bias tuning"] = (f"calibration KL {tuned['kl_before']:.4g} -> {tuned['kl_after']:.4g}"
                                   + ("" if tuned["kept"] else " (not lower: biases unchanged)"))
    qm.set_mode("quant")
    if joins_note:
        qm.notes["joins"] = joins_note
    return qm.eval()
