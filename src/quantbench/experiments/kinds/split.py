"""``split``: split computing - cut after point N, quantize and entropy-code the features, finish in the cloud.

Split points come from the model's traced graph (:mod:`quantbench.splitting.splitter`), so any model
splits; ``list_splits`` (``--list-splits``) prints them with edge/cloud MACs and feature shapes.

Example:
    >>> from quantbench.experiments.layer import config_for
    >>> config_for("split", {"model": "resnet20", "splits": "1,3"}).splits
    (1, 3)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from quantbench.config import option
from quantbench.errors import QuantbenchError
from quantbench.experiments.layer import Context, register_kind
from quantbench.experiments.options import Calibration, DataOptions, TrainingData


@dataclass(frozen=True)
class SplitExperiment(Calibration, TrainingData, DataOptions):
    """Edge/cloud split x feature levels x companding: accuracy, real coded bytes, bpp, latency estimate."""

    splits: tuple[int, ...] = option((), "split points (indices of --list-splits; default: three spread over the "
                                     "model)", metavar="N1,N2", ge=0)
    list_splits: bool = option(False, "print the candidate split points (edge/cloud MACs, feature shape) and stop")
    qbins: tuple[int, ...] = option((4, 6, 8), "feature quantization levels", metavar="Q1,Q2", ge=2, le=256)
    companding: tuple[str, ...] = option(("none", "mulaw"), "feature companding: none and/or mulaw",
                                         choices=("none", "mulaw"))
    range: str = option("sample", "per-sample min/max (sent as side info) or one calibrated range",
                        choices=("sample", "calibrated"))
    codec: str = option("range-perchannel", "entropy coder (see quantbench.splitting.codec)")
    noise_train: int = option(0, "fine-tune with quantization noise at the split for N epochs (and without, for "
                              "comparison)", ge=0, metavar="EPOCHS")
    noise_qbins: tuple[int, ...] = option((4,), "qbins of the noise while fine-tuning", metavar="Q", ge=2, le=256)
    noise_at: tuple[int, ...] = option((), "inject the noise after point N instead of at the evaluated split; "
                                       "several (1,2): one fine-tuned model per point, each evaluated at every "
                                       "split - the training-regime comparison", ge=0, metavar="N1,N2")
    finetune_part: str = option("cloud", "fine-tuning trains the cloud part only (edge frozen) or all",
                                choices=("cloud", "all"))
    bn_stats: str = option("frozen", "BatchNorm running statistics while fine-tuning: kept or re-estimated",
                           choices=("frozen", "update"))
    lr: float = option(1e-4, "fine-tuning learning rate", gt=0)
    edge: str = option("raspberry-pi-4b", "edge device: a published profile, a device imported into --store (its "
                       "measured ceiling), or NAME=GFLOPS")
    cloud: str = option("nvidia-a100", "cloud device: a published profile, an imported device, or NAME=GFLOPS")
    bandwidths: tuple[float, ...] = option((1.0, 10.0, 100.0), "link bandwidths in Mbit/s for the latency model",
                                           metavar="MBPS", gt=0)

    def check(self) -> None:
        from quantbench.splitting.codec import CODECS, available_codecs
        from quantbench.splitting.latency import parse_profile

        if self.codec not in available_codecs():
            why = "not installed here" if self.codec in CODECS else "unknown"
            raise QuantbenchError(f"config: codec {self.codec!r} {why}; available: {', '.join(available_codecs())}")
        parse_profile(self.edge, self.store)
        parse_profile(self.cloud, self.store)


def default_splits(n_points: int) -> tuple[int, ...]:
    """Three points spread over the model (a quarter, half and three quarters of its split points)."""
    return tuple(sorted({min(n_points - 1, max(0, round(n_points * k / 4))) for k in (1, 2, 3)}))


def list_points(model: Any, input_shape: tuple[int, int, int]) -> list[dict[str, Any]]:
    """Each candidate split point with its edge/cloud MACs and feature shape."""
    from quantbench.splitting.experiment import split_costs
    from quantbench.splitting.splitter import split_points

    return [{"index": p.index, "label": p.label, "unit": p.unit, **split_costs(model, p.index, input_shape)}
            for p in split_points(model, input_shape)]


def regime_label(noise: bool, at: int | None) -> str:
    """How a fine-tuned model is named in records and reports: ``noise`` / ``no-noise`` when the noise sat at
    the evaluated split (the default), ``noise@N`` / ``no-noise@N`` when ``noise_at`` placed it after point N.

    Example:
        >>> regime_label(True, None), regime_label(False, 2)
        ('noise', 'no-noise@2')
    """
    return ("noise" if noise else "no-noise") + ("" if at is None else f"@{at}")


def split_model_experiment(cfg: SplitExperiment, ctx: Context) -> dict[str, Any]:
    from quantbench.experiments.prepare import prepare
    from quantbench.splitting.experiment import split_costs
    from quantbench.splitting.splitter import split_points

    listing = cfg.list_splits
    p = prepare(cfg, ctx, train=cfg.noise_train > 0 and not listing, calib=not listing)
    if listing:
        points = list_points(p.model, p.input_shape)
        return {"model": p.loaded.label, "input_shape": list(p.input_shape), "points": points}
    every = split_points(p.model, p.input_shape)
    splits = cfg.splits or default_splits(len(every))
    bad = [s for s in (*splits, *cfg.noise_at) if s >= len(every)]
    if bad:
        raise QuantbenchError(f"split: {p.loaded.label} has split points 0..{len(every) - 1} (see --list-splits), "
                              f"got {bad[0]}")
    # MACs only at the evaluated splits: each costs two forward passes (a ResNet-101 at 224 has 34 points)
    points = {s: {"index": s, "label": every[s].label, "unit": every[s].unit,
                  **split_costs(p.model, s, p.input_shape)} for s in splits}
    return _run(cfg, ctx, p, list(splits), points)


def _finetuned(cfg: SplitExperiment, model: Any, train_xy: Any, splits: list[int]) -> dict[tuple[int, int, str], Any]:
    """The fine-tuned models of each (split, qbins, companding) cell, by regime label (see :func:`regime_label`).

    Each model is trained once and shared by every cell it belongs to: with ``noise_at`` (1, 2) the model
    trained with noise after point 1 is evaluated at every split, as is the no-noise model of point 1.
    """
    from quantbench.splitting.experiment import noise_finetune

    regime = {"epochs": cfg.noise_train, "lr": cfg.lr, "seed": cfg.seed, "part": cfg.finetune_part,
              "freeze_bn": cfg.bn_stats == "frozen"}
    noisy: dict[tuple[int, int, str], Any] = {}
    plain: dict[int, Any] = {}  # no-noise fine-tuning does not depend on qbins or companding
    models: dict[tuple[int, int, str], dict[str, Any]] = {}
    for s in splits:
        for q in cfg.noise_qbins:
            for c in cfg.companding:
                cell: dict[str, Any] = {}
                for at in cfg.noise_at or (s,):
                    if (at, q, c) not in noisy:
                        noisy[(at, q, c)] = noise_finetune(model, train_xy, noise_at=at, qbins=q, companding=c,
                                                           **regime)[0]
                    if at not in plain:
                        plain[at] = noise_finetune(model, train_xy, noise_at=at, qbins=q, companding=c, noise=False,
                                                   **regime)[0]
                    label_at = at if cfg.noise_at else None
                    cell[regime_label(True, label_at)] = noisy[(at, q, c)]
                    cell[regime_label(False, label_at)] = plain[at]
                models[(s, q, c)] = cell
    return models


def _run(cfg: SplitExperiment, ctx: Context, p: Any, splits: list[int], points: dict[int, dict[str, Any]]
         ) -> dict[str, Any]:
    from quantbench.splitting.experiment import anonymization, grid_png, run_split
    from quantbench.splitting.features import FeatureQuantizer
    from quantbench.splitting.latency import best_split, estimate_latency, parse_profile

    edge, cloud = parse_profile(cfg.edge, cfg.store), parse_profile(cfg.cloud, cfg.store)
    devices = {"edge": edge.name, "cloud": cloud.name, "edge_source": edge.source, "cloud_source": cloud.source,
               "edge_gflops": edge.gflops, "cloud_gflops": cloud.gflops}
    test_xy, calib_xy = p.test.tensors(), p.calib.tensors()
    train_xy = p.train.tensors() if p.train is not None else None
    models = _finetuned(cfg, p.model, train_xy, splits) if cfg.noise_train > 0 else {}
    recs = run_split(p.model, calib_xy, test_xy, splits=splits, qbins=list(cfg.qbins),
                     companding=list(cfg.companding), range_mode=cfg.range, codec=cfg.codec, models=models,
                     log=ctx.log if ctx.progress else None)
    key = p.key
    rows = []
    for r in recs:
        est = {f"{bw:g}": estimate_latency(edge_macs=r["edge_macs"], cloud_macs=r["cloud_macs"],
                                           coded_bytes=r["total_bits"] / 8 / r["n_images"], bandwidth_mbps=bw,
                                           edge=edge, cloud=cloud)["total_s"] for bw in cfg.bandwidths}
        r["latency_s_by_bandwidth"] = est
        method = f"split{r['split']}-q{r['qbins']}-{r['companding']}" + (f"-{r['noise']}" if r["noise"] != "none"
                                                                          else "")
        k = dataclasses.replace(key, method=method)
        info = {k2: r[k2] for k2 in ("split", "block", "qbins", "companding", "range", "codec", "noise",
                                    "n_images", "feature_shape")}
        for metric, unit in (("top1", "%"), ("top5", "%"), ("bpp", "bits/pixel"), ("cr", "x"),
                             ("kb_per_sample", "kB"), ("coded_bytes", "bytes"), ("side_bytes", "bytes"),
                             ("order0_entropy_bpp", "bits/pixel"), ("edge_macs", "MACs"), ("cloud_macs", "MACs")):
            rows.append(k.row(f"split.{metric}", r[metric], unit, **info))
        for bw, t in est.items():
            rows.append(k.row("split.latency_s", t, "s", **info, bandwidth_mbps=float(bw), **devices))
    plans = best_split([{**points[s], "split": s,
                         "coded_bytes": min(r["total_bits"] for r in recs if r["split"] == s) / 8 / recs[0]["n_images"]}
                        for s in splits], list(cfg.bandwidths), edge, cloud)
    for plan in plans:
        rows.append(key.row("split.best", plan["best"]["split"], "block", bandwidth_mbps=plan["bandwidth_mbps"],
                            latency_s=plan["best"]["total_s"], **devices))
    # anonymization: how much of the input a linear decoder recovers, and what the features look like
    fq_view = FeatureQuantizer(min(cfg.qbins), companding=cfg.companding[0])
    for s in splits:
        a = anonymization(p.model, s, calib_xy[0][:400], test_xy[0][:200])
        aq = anonymization(p.model, s, calib_xy[0][:400], test_xy[0][:200], fq=fq_view)
        png = ctx.out_dir / f"anonymization_split{s}.png"
        png.write_bytes(grid_png(p.model, s, test_xy[0][:4], fq_view))
        rows.append(key.row("split.recover_psnr_db", a["psnr_db"], "dB", split=s, features="float",
                            baseline_psnr_db=a["baseline_psnr_db"], file=png.name))
        rows.append(key.row("split.recover_psnr_db", aq["psnr_db"], "dB", split=s, features=fq_view.label(),
                            baseline_psnr_db=aq["baseline_psnr_db"], file=png.name))
        for r in recs:
            if r["split"] == s:
                r.setdefault("recover_psnr_db", a["psnr_db"])
    ctx.commit(rows)
    return {"model": p.loaded.label, "data": cfg.data, "split": p.split, "n_images": len(test_xy[1]),
            "codec": cfg.codec, "range": cfg.range, "records": recs,
            "fp32_top1": recs[0]["fp32_top1"] if recs else None, "edge": edge.as_dict(), "cloud": cloud.as_dict(),
            "points": [points[s] for s in splits]}


register_kind("split", SplitExperiment, split_model_experiment,
              "split computing: cut after point N, quantize + entropy-code the features")
