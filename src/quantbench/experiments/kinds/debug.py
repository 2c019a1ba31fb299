"""``debug``: which layer loses the accuracy - float vs quantized layer by layer on the same images.

The model is quantized exactly as ``quantize`` does (same method spelling, options and
calibration split), or a saved ``.qbm`` is loaded (``--quantized``) and checked against the
float model it must come from. The debug images are the first ``debug_images`` evaluation
images: prepare() keeps them disjoint from the calibration images, also when a ``.qbm`` is
given (the split is the one ``quantize`` uses with the same seed). See
:mod:`quantbench.quant.debug` for what each number means.

Example:
    >>> from quantbench.experiments.layer import config_for, run_experiment
    >>> cfg = config_for("debug", {"calib_size": 64, "debug_images": 32, "no_store": True})
    >>> rec = run_experiment(cfg, progress=False, log=lambda m: None).record
    >>> rec["method"], len(rec["layers"]), rec["layers"][0]["rank"]
    ('w8a8:mse', 4, 1)
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from quantbench.config import option
from quantbench.experiments.kinds.ptq import QuantizeOptions, needs_calibration
from quantbench.experiments.layer import Context, register_kind
from quantbench.experiments.options import Calibration, DataOptions, Pretraining, TrainingData


@dataclass(frozen=True)
class DebugExperiment(QuantizeOptions, Pretraining, Calibration, TrainingData, DataOptions):
    """Per-layer float-vs-quantized errors, clipping, lint, and the top-1 each layer recovers in float."""

    method: str = option("w8a8:mse", "SCHEME[:ALGO] to quantize with (as `quantize --method`); ignored with "
                         "--quantized")
    quantized: str | None = option(None, "debug this saved .qbm (or a folder holding one) instead of quantizing; "
                                   "--model/--checkpoint must be the float model it was made from",
                                   metavar="QBM", path="file")
    debug_images: int = option(256, "evaluation images on which float and quantized are compared (one quantized "
                               "pass per layer over them)", metavar="N", ge=1)

    def check(self) -> None:
        self.ptq_config(self.method, self.calib_size)  # a bad method fails before any data is read


def _quantized(cfg: DebugExperiment, ctx: Context, p: Any) -> tuple[Any, Any, str, str]:
    """(quantized model, its float reference, method label, where it came from)."""
    from quantbench.quant.debug import check_reference, float_reference
    from quantbench.quant.ptq import PTQConfig, quantize_ptq

    ptq = cfg.ptq_config(cfg.method, cfg.calib_size)
    if ctx.quantized is not None:  # Python API: an in-memory QuantizedModel
        ref = float_reference(p.model)
        check_reference(ctx.quantized, ref, what="the quantized model passed in")
        return ctx.quantized, ref, getattr(ctx.quantized.plan, "scheme", "quantized"), "the quantized model passed in"
    if cfg.quantized:
        from quantbench.experiments.bench import _find_qbm
        from quantbench.quant.save import load_quantized, read_quantized_meta

        path = _find_qbm(cfg.quantized)
        saved = (read_quantized_meta(path).get("extra") or {}).get("ptq")
        try:
            made_with = PTQConfig.from_stored(saved) if isinstance(saved, dict) else None
            label = made_with.label() if made_with else path.stem.removeprefix("model_")
        except Exception:  # noqa: BLE001 - an older or foreign header: no equalization assumed
            made_with, label = None, path.stem.removeprefix("model_")
        qm = load_quantized(path, copy.deepcopy(p.model))
        ref = float_reference(p.model, made_with)
        check_reference(qm, ref, what=str(path))
        return qm, ref, label, str(path)
    calib = p.calib
    ptq = dataclasses.replace(ptq, calib_size=min(ptq.calib_size, len(calib)) if calib is not None else 0)
    return quantize_ptq(p.model, ptq, calib), float_reference(p.model, ptq), ptq.label(), \
        f"quantized here ({p.split.get('calib', 'no calibration images')})"


def debug_model(cfg: DebugExperiment, ctx: Context) -> dict[str, Any]:
    from quantbench.data.splits import DatasetView
    from quantbench.experiments.prepare import prepare
    from quantbench.experiments.records import history_rows
    from quantbench.experiments.stages import pretrain
    from quantbench.quant.debug import debug_quantized
    from quantbench.quant.lint import lint_model

    ptq = cfg.ptq_config(cfg.method, cfg.calib_size)
    p = prepare(cfg, ctx, train=cfg.pretrain_epochs > 0, calib=needs_calibration(ptq))
    if cfg.pretrain_epochs > 0:
        hist = pretrain(p.model, p.train, None, cfg, out_dir=ctx.out_dir, epochs=cfg.pretrain_epochs,
                        lr=cfg.pretrain_lr, progress=ctx.progress)
        ctx.commit(history_rows(p.key, hist))
    p.model.eval()
    qm, ref, label, source = _quantized(cfg, ctx, p)
    images = DatasetView(p.test, list(range(min(cfg.debug_images, len(p.test)))), name="debug")
    rep = debug_quantized(qm, ref, images, n_images=None, batch_size=cfg.eval_batch_size,
                          findings=lint_model(p.model, p.input_shape))
    key = dataclasses.replace(p.key, method=label)
    rows = [p.key.row("debug_top1", rep.fp32_top1, "%", n_images=rep.n_images, split="debug"),
            key.row("debug_top1", rep.quant_top1, "%", n_images=rep.n_images, split="debug")]
    for mode in ("cumulative", "isolated"):  # isolated last: what "only this layer quantized" views show
        for x in rep.layers:
            info = {"layer": x.layer, "index": x.index, "mode": mode, "rank": x.rank,
                    "lint": [f"{f['rule']}: {f['message']}" for f in x.lint]}
            st = getattr(x, mode)
            rows += [key.row("layer_sqnr_db", st.sqnr_db, "dB", **info),
                     key.row("layer_cosine", st.cosine, "", **info),
                     key.row("layer_max_abs_err", st.max_abs_err, "", **info)]
    for x in rep.layers:
        info = {"layer": x.layer, "index": x.index, "rank": x.rank, "lint": [f"{f['rule']}: {f['message']}"
                                                                              for f in x.lint]}
        for what, value in (("input", x.act_clip_fraction), ("weight", x.weight_clip_fraction)):
            if value is not None:
                rows.append(key.row("layer_clip_fraction", value, "fraction", mode=what, **info))
        rows.append(key.row("layer_recovery_points", x.recovery_points, "points", mode="layer_in_float",
                            top1_layer_float=x.top1_layer_float, **info))
    ctx.commit(rows)
    return {"model": p.loaded.label, "data": cfg.data, "method": label, "quantized_from": source, "split": p.split,
            **rep.as_dict()}


register_kind("debug", DebugExperiment, debug_model,
              "which layer loses the accuracy: float vs quantized per layer on the same images, ranked by the "
              "top-1 that leaving each layer in float recovers")
