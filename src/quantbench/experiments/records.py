"""Turn measurement objects into store rows (:class:`~quantbench.store.Result`).

Kept in one place so every verb (run, eval, quantize, bench, ...) names its metrics and units
the same way, and the report can rely on them:

======================  =======  ===============================================
metric                  unit     meaning
======================  =======  ===============================================
top1, top{k}            %        accuracy; extra: ci_low, ci_high, n_images, split;
                                 test top1 also: correct_bits (per-image hits,
                                 packed, base64), images_sha256 (which images)
loss                    nats     mean cross-entropy on the same images
top1_drop               points   FP32 top-1 minus this top-1 (paired, same images);
                                 extra: ci_low, ci_high, p_value
params                  count    parameters (unique tensors)
size_bytes              bytes    bytes of the saved file (extra: file)
macs / flops            MACs /   per image at batch 1, and per batch (batch=b);
                        FLOPs    FLOPs = 2 x MACs
latency_median_ms       ms       one batch, median (extra: p90, threads, iters,
                                 median_ci_low_ms/_high_ms: bootstrap 95%
                                 interval, other_cpu_share: machine load)
latency_p90_ms          ms       one batch, 90th percentile
throughput_ips          img/s    batch / median latency
train_time_s            s        wall-clock training time
epoch.<name>            varies   per-epoch training history (extra: epoch)
======================  =======  ===============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.store import Result

TRAIN_PREFIX = "train_"
"""Metric prefix of accuracy measured on training images (``train_top1``; ``top1`` is always test)."""


@dataclass(frozen=True)
class RowKey:
    """Who a row is about: which model, on which data, produced how, run by what."""

    model: str
    data: str
    method: str = "fp32"
    engine: str = "torch"

    def row(self, metric: str, value: float | None, unit: str, batch: int | None = None, **extra: Any) -> Result:
        return Result(self.model, self.data, self.method, self.engine, metric, value, unit, batch, extra)


def accuracy_rows(key: RowKey, ev: Any, split: str, prefix: str = "") -> list[Result]:
    """Rows for an :class:`~quantbench.measure.accuracy.EvalResult`.

    ``prefix`` names metrics measured on other images than the evaluation split
    (``train_top1`` ...), so a query for ``top1`` always means evaluation accuracy.
    """
    rows = []
    for k, acc in sorted(ev.topk.items()):
        lo, hi = ev.ci[k]
        hits = correctness_extra(ev, key.data, split) if k == 1 and not prefix else {}
        rows.append(key.row(f"{prefix}top{k}", acc, "%", ci_low=lo, ci_high=hi, n_images=ev.n_images, split=split,
                            **hits))
    rows.append(key.row(f"{prefix}loss", ev.loss, "nats", n_images=ev.n_images, split=split))
    return rows


def images_identity(data: str, split: str, labels: Any) -> str:
    """Hash naming which images were scored, in which order: the data spec, the split and every label.

    Two runs with the same hash scored the same images in the same order, so their per-image hits
    pair up (see ``docs/decisions.md``, "Per-image correctness in the store").

    Example:
        >>> images_identity("digits", "test", [0, 1]) == images_identity("digits", "test", [0, 1])
        True
    """
    import hashlib

    import numpy as np

    h = hashlib.sha256(f"{data}\x00{split}\x00".encode())
    h.update(np.asarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def correctness_extra(ev: Any, data: str, split: str) -> dict[str, Any]:
    """``correct_bits`` (top-1 hit per image, ``np.packbits`` then base64: n/8 bytes) and ``images_sha256``.

    Example:
        >>> class E: correct, labels = np.array([True, False, True]), np.array([3, 1, 2])  # doctest: +SKIP
        >>> correct_from_extra(correctness_extra(E, "digits", "test"))  # doctest: +SKIP
        array([ True, False,  True])
    """
    import base64

    import numpy as np

    if getattr(ev, "labels", None) is None:
        return {}
    bits = np.packbits(np.asarray(ev.correct, dtype=bool))
    return {"correct_bits": base64.b64encode(bits.tobytes()).decode("ascii"),
            "images_sha256": images_identity(data, split, ev.labels)}


def correct_from_extra(extra: dict[str, Any]) -> Any:
    """The per-image top-1 hits a ``top1`` row stored (bool array), or None when it stored none.

    Example:
        >>> correct_from_extra({"n_images": 3, "correct_bits": "oA=="}).tolist()
        [True, False, True]
    """
    import base64
    import binascii

    import numpy as np

    bits, n = extra.get("correct_bits"), extra.get("n_images")
    if not isinstance(bits, str) or not isinstance(n, int) or n <= 0:
        return None
    try:
        raw = np.frombuffer(base64.b64decode(bits, validate=True), dtype=np.uint8)
    except (binascii.Error, ValueError):
        return None
    if raw.size != (n + 7) // 8:
        return None
    return np.unpackbits(raw)[:n].astype(bool)


def _negate(x: float) -> float:
    """-x without producing -0.0 (which would print as "-0.00")."""
    return -x + 0.0


def drop_row(key: RowKey, paired: Any, split: str) -> Result:
    """Top-1 drop vs FP32 on the same images (positive = worse than FP32), with its paired CI."""
    d = paired.as_dict()
    return key.row(
        "top1_drop", _negate(d["diff_points"]), "points", ci_low=_negate(d["ci_high"]), ci_high=_negate(d["ci_low"]),
        p_value=d["p_value"], n_images=d["n"], split=split,
    )


def cost_rows(key: RowKey, *, params: int, size_bytes: int, size_file: str, macs: Any,
              batch_sizes: tuple[int, ...] = ()) -> list[Result]:
    """Parameters, bytes on disk and MACs/FLOPs (per image, and per batch for each batch size)."""
    rows = [
        key.row("params", params, "count"),
        key.row("size_bytes", size_bytes, "bytes", file=size_file),
        key.row("macs", macs.per_image_macs, "MACs", 1, per="image"),
        key.row("flops", 2 * macs.per_image_macs, "FLOPs", 1, per="image", convention="FLOPs = 2 x MACs"),
    ]
    for b in batch_sizes:
        rows.append(key.row("macs_batch", macs.per_image_macs * b, "MACs", b, per="batch"))
    return rows


def latency_rows(key: RowKey, lat: Any) -> list[Result]:
    """Rows for one :class:`~quantbench.measure.latency.LatencyResult`; every field but the raw samples
    (the median's interval and the machine load included) goes into each row's extra."""
    info = {k: v for k, v in lat.as_dict().items() if k != "samples_ms"}
    b = lat.batch_size
    return [
        key.row("latency_median_ms", lat.median_ms, "ms", b, **info),
        key.row("latency_p90_ms", lat.p90_ms, "ms", b, **info),
        key.row("throughput_ips", lat.throughput_ips, "img/s", b, **info),
    ]


def history_rows(key: RowKey, history: Any) -> list[Result]:
    """Per-epoch history rows plus the total training time."""
    rows = []
    units = {"loss": "nats", "top1": "%", "topk": "%", "lr": "lr", "seconds": "s"}
    for rec in history.epochs:
        for name, value in rec.items():
            if name == "epoch":
                continue
            unit = next((u for suffix, u in units.items() if name.endswith(suffix)), "")
            rows.append(key.row(f"epoch.{name}", value, unit, epoch=int(rec["epoch"])))
    rows.append(key.row("train_time_s", history.wall_s, "s", epochs=len(history.epochs)))
    return rows
