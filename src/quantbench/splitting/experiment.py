"""The split-computing experiment: split x qbins x companding -> accuracy, real coded bytes, bpp, latency.

For every split point the edge part runs on the evaluation images, its feature maps are quantized
(:class:`~quantbench.splitting.features.FeatureQuantizer`), entropy-coded into REAL bytes
(:mod:`quantbench.splitting.codec`, decoded back and checked), dequantized and finished by the cloud
part. Sizes come from totals: ``bpp = total coded bits / (N x H x W of the input images)``,
``CR = 24-bit RGB input bits / coded bits``, side information (per-sample ranges, the coder's
probability tables) included. Noise-aware fine-tuning (:func:`noise_finetune`) trains with the
quantizer's own error model at the split and is compared with the same fine-tuning without noise.

Example:
    >>> recs = run_split(model, calib, test, splits=[1, 3], qbins=[4, 8])  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.splitting.features import FeatureQuantizer
from quantbench.splitting.splitter import split_model

__all__ = ["FINETUNE_PARTS", "anonymization", "noise_finetune", "run_split", "split_costs"]


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(xb) for xb in x.split(batch)])


def _topk(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    return 100.0 * float((logits.topk(k, 1).indices == y.reshape(-1, 1)).any(1).float().mean())


def split_costs(model: nn.Module, after: int, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Edge and cloud MACs (per image) and the feature-map shape at a split; they sum to the whole model."""
    from quantbench.measure.macs import count_macs

    sp = split_model(model.eval(), after)
    with torch.no_grad():
        feat = tuple(sp.edge(torch.zeros(1, *input_shape)).shape[1:])
    edge = count_macs(sp.edge, input_shape).per_image_macs
    cloud = count_macs(sp.cloud, feat).per_image_macs
    return {"split": after, "block": sp.after_name, "unit": sp.unit, "feature_shape": list(feat),
            "edge_macs": int(edge), "cloud_macs": int(cloud), "total_macs": int(edge + cloud)}


def run_split(model: nn.Module, calib: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], *,
              splits: list[int], qbins: list[int], companding: list[str] = ("none",), range_mode: str = "sample",
              codec: str = "range-perchannel",
              models: dict[tuple[int, int, str], dict[str, nn.Module]] | None = None,
              log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One record per (split, qbins, companding[, noise-trained model]) with accuracy and coded size.

    ``models`` maps (split, qbins, companding) to fine-tuned models evaluated in addition to
    ``model`` for that cell, by label (``{"noise": m, "no-noise": m2}``); the record's ``noise``
    field names the model (``"none"`` = the original).
    """
    from quantbench.splitting import codec as codec_mod

    log = log or (lambda m: None)
    x, y = test
    n, _, h, w = x.shape
    input_bits = 24 * n * h * w
    records = []
    base = model.eval()
    with torch.no_grad():
        full = _batched(base, x)
    fp_top1, fp_top5 = _topk(full, y, 1), _topk(full, y, 5)
    for s in splits:
        costs = split_costs(base, s, tuple(x.shape[1:]))
        for q in qbins:
            for comp in companding:
                variants = [("none", base), *((models or {}).get((s, q, comp)) or {}).items()]
                for noise, m in variants:
                    sp = split_model(m.eval(), s)
                    fq = FeatureQuantizer(q, companding=comp, range_mode=range_mode)
                    if range_mode == "calibrated":
                        fq.calibrate(_batched(sp.edge, calib[0]))
                    z = _batched(sp.edge, x)
                    sym, side = fq.quantize(z)
                    blob = codec_mod.encode(sym.numpy(), q, codec)
                    back = codec_mod.decode(blob)
                    if not np.array_equal(back, sym.numpy()):
                        raise QuantbenchError(f"split: codec {codec} did not decode exactly at split {s}, qbins {q}")
                    side_bytes = fq.side_bytes(n)
                    total_bits = 8 * (len(blob) + side_bytes)
                    logits = _batched(sp.cloud, fq.dequantize(sym, side))
                    entropy = codec_mod.order0_entropy_bits(sym.numpy(), q)
                    rec = {**costs, "qbins": q, "companding": comp, "range": range_mode, "codec": codec,
                           "noise": noise, "top1": _topk(logits, y, 1), "top5": _topk(logits, y, 5),
                           "fp32_top1": fp_top1, "fp32_top5": fp_top5, "n_images": n,
                           "coded_bytes": len(blob), "side_bytes": side_bytes, "total_bits": total_bits,
                           "bpp": total_bits / (n * h * w), "cr": input_bits / total_bits,
                           "kb_per_sample": total_bits / 8 / 1000 / n,
                           "order0_entropy_bpp": entropy / (n * h * w), "feature_values": int(sym.numel())}
                    records.append(rec)
                    log(f"split {s} ({costs['block']}) q{q} {comp} {noise}: top-1 {rec['top1']:.2f}% "
                        f"bpp {rec['bpp']:.3f} CR {rec['cr']:.1f}")
    return records


FINETUNE_PARTS = ("cloud", "all")


def _freeze_bn_stats(module: nn.Module) -> None:
    """BatchNorm layers in eval mode: normalise with the running statistics and leave them untouched."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class _NoisyNet(nn.Module):
    """edge -> (quantization noise at block ``noise_at`` while training) -> cloud.

    ``edge=None``: the input already is the edge's features (the edge is frozen, computed once).
    ``freeze_bn``: BatchNorm keeps its running statistics while training (see :func:`noise_finetune`).
    """

    def __init__(self, edge: nn.Module | None, cloud: nn.Module, fq: FeatureQuantizer | None,
                 freeze_bn: bool = True) -> None:
        super().__init__()
        self.edge, self.cloud, self.fq, self.freeze_bn = edge, cloud, fq, freeze_bn

    def train(self, mode: bool = True) -> _NoisyNet:
        super().train(mode)
        if mode and self.freeze_bn:
            _freeze_bn_stats(self)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x if self.edge is None else self.edge(x)
        if self.training and self.fq is not None:
            z = self.fq.noise(z)
        return self.cloud(z)


def noise_finetune(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], *, noise_at: int, qbins: int,
                   companding: str = "none", epochs: int = 2, lr: float = 1e-4, noise: bool = True,
                   seed: int = 0, part: str = "cloud", freeze_bn: bool = True,
                   batch_size: int = 64) -> tuple[nn.Module, Any]:
    """Fine-tune a copy with the split's quantization noise (or, ``noise=False``, identically without it).

    The regime (the same for noise and no-noise, so that only the noise differs):

    * ``part="cloud"`` (default): only the cloud part (after block ``noise_at``) is trained; the
      edge is frozen - the deployed device keeps its model - and its features are computed once, in
      eval mode, which also makes each epoch much cheaper. ``part="all"``: edge and cloud trained.
    * ``freeze_bn=True`` (default): BatchNorm normalises with its running statistics and does not
      update them. A few thousand fine-tuning images (and, with noise, features whose statistics
      differ from the real quantizer's output) would otherwise re-estimate statistics that were
      measured on the full training set.

    AdamW, cosine decay from ``lr``, no weight decay, no augmentation (:func:`quantbench.train.fit`).
    ``noise_at`` may differ from the split evaluated later (training-regime comparisons, e.g. noise
    at block 1, evaluated at block 2 of the same stage). Returns (model, history).

    Example:
        >>> m, hist = noise_finetune(model, (x, y), noise_at=5, qbins=4, companding="mulaw")  # doctest: +SKIP
    """
    from quantbench.config import TrainConfig
    from quantbench.train import fit

    if part not in FINETUNE_PARTS:
        raise QuantbenchError(f"noise fine-tuning: part {part!r} unknown; expected cloud or all")
    m = copy.deepcopy(model).eval()
    sp = split_model(m, noise_at)  # shares m's modules: training them trains m
    fq = FeatureQuantizer(qbins, companding=companding) if noise else None
    x, y = train
    if part == "cloud":
        for p in sp.edge.parameters():
            p.requires_grad_(False)
        x = _batched(sp.edge.eval(), x)  # frozen edge in eval mode: its features once
        net = _NoisyNet(None, sp.cloud, fq, freeze_bn)
    else:
        net = _NoisyNet(sp.edge, sp.cloud, fq, freeze_bn)
    cfg = TrainConfig(epochs=epochs, lr=lr, optimizer="adamw", weight_decay=0.0, seed=seed, batch_size=batch_size)
    hist = fit(net, (x, y), None, cfg)
    for p in m.parameters():
        p.requires_grad_(True)
    return m.eval(), hist


def anonymization(model: nn.Module, after: int, calib: torch.Tensor, test: torch.Tensor, *,
                  fq: FeatureQuantizer | None = None, max_dims: int = 2048, ridge: float = 1e-1) -> dict[str, float]:
    """How much of the input a linear decoder recovers from the features: PSNR (dB) on held-out images.

    A ridge regression from (average-pooled, at most ``max_dims``) features to the input pixels is
    fit on ``calib`` and scored on ``test``; the peak is the test images' value range. Higher PSNR =
    more of the image is recoverable; compare with the PSNR of predicting the mean image (baseline).
    """
    sp = split_model(model.eval(), after)

    def feats(x: torch.Tensor) -> torch.Tensor:
        z = _batched(sp.edge, x)
        if fq is not None:
            z = fq.roundtrip(z)
        c, hh, ww = z.shape[1:]
        while c * hh * ww > max_dims and hh > 1:
            z = nn.functional.avg_pool2d(z, 2)
            c, hh, ww = z.shape[1:]
        return z.reshape(len(z), -1).double()

    a, b = feats(calib), feats(test)
    mu, sd = a.mean(0), a.std(0) + 1e-6
    a, b = (a - mu) / sd, (b - mu) / sd
    ya, yb = calib.reshape(len(calib), -1).double(), test.reshape(len(test), -1).double()
    ym = ya.mean(0)
    gram = a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=torch.float64)
    coef = torch.linalg.solve(gram, a.T @ (ya - ym))
    pred = b @ coef + ym
    peak = float(yb.max() - yb.min())

    def psnr(p: torch.Tensor) -> float:
        mse = float(((p - yb) ** 2).mean())
        return 10.0 * math.log10(peak * peak / mse) if mse > 0 else float("inf")

    return {"psnr_db": psnr(pred), "baseline_psnr_db": psnr(ym.expand_as(yb)), "feature_dims": int(a.shape[1]),
            "train_images": int(len(calib)), "test_images": int(len(test))}


def grid_png(model: nn.Module, after: int, x: torch.Tensor, fq: FeatureQuantizer, *, channels: int = 4,
             mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> bytes:
    """PNG grid: per sample, the input image, ``channels`` feature maps, and the same maps quantized."""
    from quantbench.report.figures import _plt, _png

    sp = split_model(model.eval(), after)
    with torch.no_grad():
        z = sp.edge(x)
        zq = fq.roundtrip(z)
    plt = _plt()
    n = len(x)
    cols = 1 + 2 * channels
    fig, axes = plt.subplots(n, cols, figsize=(1.4 * cols, 1.5 * n), squeeze=False)
    img = x.clone()
    if mean is not None and std is not None:
        img = img * torch.tensor(std).reshape(1, -1, 1, 1) + torch.tensor(mean).reshape(1, -1, 1, 1)
    for i in range(n):
        im = img[i].permute(1, 2, 0).numpy()
        im = (im - im.min()) / max(float(im.max() - im.min()), 1e-12)
        axes[i][0].imshow(im.squeeze(), cmap=None if im.shape[-1] == 3 else "gray")
        for c in range(min(channels, z.shape[1])):
            axes[i][1 + c].imshow(z[i, c].numpy(), cmap="viridis")
            axes[i][1 + channels + c].imshow(zq[i, c].numpy(), cmap="viridis")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("input", fontsize=7)
    for c in range(channels):
        axes[0][1 + c].set_title(f"feature {c}", fontsize=7)
        axes[0][1 + channels + c].set_title(f"{fq.label()} {c}", fontsize=6)
    return _png(fig)
