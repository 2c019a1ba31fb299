"""Top-1/top-k accuracy with confidence intervals, and paired comparisons of two models.

Why this module exists: an accuracy number without its uncertainty invites over-reading
(a 0.3-point "drop" on 500 images is noise). Every accuracy therefore carries a Wilson score
interval, and a drop versus FP32 is computed *paired* (both models on the same images), which
is far tighter than comparing two independent intervals and comes with an exact McNemar test.

Conventions: accuracies are percentages; differences are percentage points, ``B - A``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from quantbench.errors import QuantbenchError

__all__ = [
    "EvalResult",
    "PairedDifference",
    "evaluate",
    "mcnemar_exact_p",
    "paired_difference",
    "proportion_ci",
]


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one model on one set of images.

    Attributes:
        n_images: number of images evaluated.
        top1: top-1 accuracy in percent.
        topk: accuracy in percent for each k evaluated (always includes 1; a k larger than
            the number of classes is skipped, since it would be 100% by construction).
        ci: 95% Wilson score interval, in percent, for each k in ``topk``.
        loss: mean cross-entropy in nats.
        correct: bool per image, top-1 hit, in data order (feed it to :func:`paired_difference`).
        correct_k: bool per image for each k.
        logits: ``(n_images, num_classes)`` float32 logits when ``keep_logits=True``, else None.
        labels: int64 label per image, in data order (stored rows hash them to tell whether two
            runs scored the same images, for paired comparisons across runs).
    """

    n_images: int
    top1: float
    topk: dict[int, float]
    ci: dict[int, tuple[float, float]]
    loss: float
    correct: np.ndarray = field(repr=False)
    correct_k: dict[int, np.ndarray] = field(repr=False)
    logits: np.ndarray | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no per-image arrays).

        Example:
            >>> r = evaluate(model, (x, y))  # doctest: +SKIP
            >>> json.dumps(r.as_dict())  # doctest: +SKIP
        """
        return {
            "n_images": self.n_images,
            "top1": self.top1,
            "topk": {int(k): float(v) for k, v in self.topk.items()},
            "ci": {int(k): [float(lo), float(hi)] for k, (lo, hi) in self.ci.items()},
            "loss": self.loss,
        }


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy difference ``B - A`` of two models scored on the same images.

    Attributes:
        diff_points: top-1 of B minus top-1 of A, in percentage points.
        ci_low: lower end of the confidence interval of ``diff_points`` (points).
        ci_high: upper end (points).
        p_value: exact two-sided McNemar test (binomial test on the discordant pairs).
        n: number of images.
        n_a_only: images A got right and B got wrong.
        n_b_only: images B got right and A got wrong.
        level: confidence level of the interval and of :attr:`significant`.
        method: ``"newcombe"`` or ``"bootstrap"``, how the interval was computed.
    """

    diff_points: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    n_a_only: int
    n_b_only: int
    level: float = 0.95
    method: str = "newcombe"

    @property
    def significant(self) -> bool:
        """True when the exact McNemar test rejects "no difference" at ``1 - level``.

        The exact test is the conservative criterion: at the margin the (approximate) interval
        can just exclude 0 while the exact test does not reject (e.g. 6 vs 16 discordant pairs
        in 161: interval -11.9..-0.5 points, p = 0.052); we then say "not significant".

        Example:
            >>> paired_difference([1, 1, 0], [1, 1, 0]).significant
            False
        """
        return self.p_value < 1.0 - self.level

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields plus ``significant``.

        Example:
            >>> paired_difference([1, 0], [1, 1]).as_dict()["n_b_only"]
            1
        """
        return {
            "diff_points": self.diff_points,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "p_value": self.p_value,
            "n": self.n,
            "n_a_only": self.n_a_only,
            "n_b_only": self.n_b_only,
            "level": self.level,
            "method": self.method,
            "significant": self.significant,
        }


# ----------------------------------------------------------------------------- statistics


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise QuantbenchError(f"confidence level must be in (0, 1), got {level}")
    return statistics.NormalDist().inv_cdf(0.5 + level / 2.0)


def proportion_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion, as fractions in [0, 1].

    Why Wilson: unlike the textbook normal (Wald) interval it never leaves [0, 1], is not
    degenerate at 0% or 100%, and keeps close to nominal coverage for small ``n``
    (Newcombe 1998, "Two-sided confidence intervals for the single proportion").

    Args:
        successes: number of hits, ``0 <= successes <= n``.
        n: number of trials, ``n > 0``.
        level: confidence level, e.g. 0.95.

    Returns:
        ``(low, high)`` with ``0 <= low <= successes/n <= high <= 1``.

    Example:
        >>> [round(v, 4) for v in proportion_ci(0, 10)]
        [0.0, 0.2775]
    """
    if n <= 0:
        raise QuantbenchError(f"proportion_ci: n must be > 0, got {n}")
    if not 0 <= successes <= n:
        raise QuantbenchError(f"proportion_ci: successes must be in [0, n={n}], got {successes}")
    z = _z(level)
    p = successes / n
    z2n = z * z / n
    center = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n))
    # Exact ends at 0 and n (the formula gives them up to rounding).
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def _log_binom_cdf_half(k: int, m: int) -> float:
    """log P(X <= k) for X ~ Binomial(m, 1/2), summed in log space (exact for large m)."""
    log_terms = [math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) for i in range(k + 1)]
    top = max(log_terms)
    return top + math.log(math.fsum(math.exp(t - top) for t in log_terms)) - m * math.log(2.0)


def mcnemar_exact_p(n_a_only: int, n_b_only: int) -> float:
    """Exact two-sided McNemar p-value: binomial test of the discordant pairs against 1/2.

    Under "both models are equally accurate", each image that exactly one model gets right
    is equally likely to favour either, so ``n_b_only ~ Binomial(n_a_only + n_b_only, 1/2)``.

    Example:
        >>> round(mcnemar_exact_p(16, 6), 6)
        0.052479
    """
    m = n_a_only + n_b_only
    if m == 0:
        return 1.0
    k = min(n_a_only, n_b_only)
    if 2 * k == m:
        return 1.0
    return min(1.0, 2.0 * math.exp(_log_binom_cdf_half(k, m)))


def _newcombe_paired(both: int, b_only: int, a_only: int, neither: int, level: float) -> tuple[float, float]:
    """Newcombe (1998) method 10 for paired proportions: Wilson intervals of each margin,
    combined "square-and-add" with the corrected phi coefficient. Fractions, for p_B - p_A."""
    n = both + b_only + a_only + neither
    p1, p2 = (both + b_only) / n, (both + a_only) / n  # p1: B right, p2: A right
    l1, u1 = proportion_ci(both + b_only, n, level)
    l2, u2 = proportion_ci(both + a_only, n, level)
    margins = (both + b_only, a_only + neither, both + a_only, b_only + neither)
    phi = 0.0
    if min(margins) > 0:
        det = both * neither - b_only * a_only
        if det > n / 2:
            det_c = det - n / 2
        elif det >= 0:
            det_c = 0.0
        else:
            det_c = float(det)
        phi = det_c / math.sqrt(math.prod(float(x) for x in margins))
    d = p1 - p2
    dl = math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)))
    du = math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)))
    return max(-1.0, d - dl), min(1.0, d + du)


def _bootstrap_paired(
    b_only: int, a_only: int, n: int, level: float, seed: int, n_boot: int
) -> tuple[float, float]:
    """Percentile paired bootstrap of p_B - p_A (fractions).

    Resampling images with replacement only changes how many resampled images fall in each
    cell of the 2x2 table, so drawing the cell counts from a multinomial is the same
    bootstrap as resampling indices, at O(n_boot) cost instead of O(n_boot * n).
    """
    rng = np.random.default_rng(seed)
    probs = [b_only / n, a_only / n, 1.0 - (b_only + a_only) / n]
    probs[2] = max(0.0, probs[2])
    counts = rng.multinomial(n, probs, size=n_boot)
    diffs = (counts[:, 0] - counts[:, 1]) / n
    alpha = 1.0 - level
    lo, hi = np.quantile(diffs, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def _as_bool_vector(x: Any, name: str) -> np.ndarray:
    if isinstance(x, EvalResult):
        x = x.correct
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise QuantbenchError(f"paired_difference: {name} must be 1-D (one flag per image), got shape {arr.shape}")
    if arr.dtype != bool:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise QuantbenchError(f"paired_difference: {name} must hold booleans or 0/1 values")
        arr = arr.astype(bool)
    return arr


def paired_difference(
    correct_a: np.ndarray | Sequence[bool] | EvalResult,
    correct_b: np.ndarray | Sequence[bool] | EvalResult,
    level: float = 0.95,
    method: Literal["newcombe", "bootstrap"] = "newcombe",
    seed: int = 0,
    n_boot: int = 10_000,
) -> PairedDifference:
    """Top-1 difference ``B - A`` of two models evaluated on the SAME images, with CI and test.

    Why paired: most images are right (or wrong) for both models, and only the discordant
    images carry information about the difference. Treating the two accuracies as independent
    would give intervals several times too wide and hide real drops; treating them as exact
    would call noise a drop. The interval is Newcombe's method 10 (square-and-add of Wilson
    intervals with the corrected phi; Newcombe 1998, Stat Med 17:2635) or a percentile
    paired bootstrap with a fixed seed; the p-value is the exact McNemar test.

    Args:
        correct_a: per-image top-1 hits of model A (e.g. FP32), or its :class:`EvalResult`.
        correct_b: per-image hits of model B (e.g. INT8), same images in the same order.
        level: confidence level of the interval.
        method: ``"newcombe"`` (default, deterministic) or ``"bootstrap"``.
        seed: random seed of the bootstrap (results are reproducible).
        n_boot: bootstrap resamples.

    Returns:
        A :class:`PairedDifference`; ``diff_points < 0`` means B is worse than A.

    Raises:
        QuantbenchError: arrays of different lengths, empty, or not boolean; unknown method.

    Example:
        >>> a = np.array([True] * 90 + [False] * 10)
        >>> b = np.array([True] * 80 + [False] * 20)
        >>> d = paired_difference(a, b)
        >>> d.diff_points, d.n_a_only, d.significant
        (-10.0, 10, True)
    """
    a = _as_bool_vector(correct_a, "correct_a")
    b = _as_bool_vector(correct_b, "correct_b")
    if a.shape != b.shape:
        raise QuantbenchError(
            f"paired_difference: both models must be scored on the same images, got {a.size} and {b.size} flags"
        )
    n = int(a.size)
    if n == 0:
        raise QuantbenchError("paired_difference: no images (empty arrays)")
    both = int(np.count_nonzero(a & b))
    a_only = int(np.count_nonzero(a & ~b))
    b_only = int(np.count_nonzero(~a & b))
    neither = n - both - a_only - b_only
    _z(level)  # validate level
    if method == "newcombe":
        lo, hi = _newcombe_paired(both, b_only, a_only, neither, level)
    elif method == "bootstrap":
        if n_boot < 100:
            raise QuantbenchError(f"paired_difference: n_boot must be >= 100, got {n_boot}")
        lo, hi = _bootstrap_paired(b_only, a_only, n, level, seed, n_boot)
    else:
        raise QuantbenchError(f"paired_difference: method must be 'newcombe' or 'bootstrap', got {method!r}")
    return PairedDifference(
        diff_points=100.0 * (b_only - a_only) / n,
        ci_low=100.0 * lo,
        ci_high=100.0 * hi,
        p_value=mcnemar_exact_p(a_only, b_only),
        n=n,
        n_a_only=a_only,
        n_b_only=b_only,
        level=level,
        method=method,
    )


# ----------------------------------------------------------------------------- evaluation


def _batches(data: Any, batch_size: int) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], int | None]:
    """Yield (images, labels) batches from any supported data form, plus the total if known."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in data):
        images, labels = (torch.as_tensor(t) for t in data)
        return _tensor_batches(images, labels, batch_size), int(images.shape[0])
    tensors = getattr(data, "tensors", None)
    if callable(tensors) and not isinstance(data, DataLoader):
        images, labels = tensors()
        return _tensor_batches(images, labels, batch_size), int(images.shape[0])
    if isinstance(data, DataLoader):
        try:
            total: int | None = len(data.dataset)  # type: ignore[arg-type]
        except TypeError:
            total = None
        return iter(data), total
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
        return iter(loader), len(data)  # type: ignore[arg-type]
    raise QuantbenchError(
        f"evaluate: data must be a Dataset, a DataLoader or an (images, labels) tensor pair, got {type(data).__name__}"
    )


def _tensor_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if images.shape[0] != labels.shape[0]:
        raise QuantbenchError(
            f"evaluate: {images.shape[0]} images but {labels.shape[0]} labels; expected one label per image"
        )
    for i in range(0, images.shape[0], batch_size):
        yield images[i : i + batch_size], labels[i : i + batch_size]


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _normalize_topk(topk: Iterable[int] | int) -> list[int]:
    ks = [topk] if isinstance(topk, int) else list(topk)
    for k in ks:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise QuantbenchError(f"evaluate: topk values must be integers >= 1, got {k!r}")
    return sorted({1, *(int(k) for k in ks)})


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    topk: Iterable[int] | int = (1, 5),
    batch_size: int = 256,
    progress: bool | str = False,
    keep_logits: bool = False,
) -> EvalResult:
    """Top-1/top-k accuracy (with Wilson 95% intervals) and mean cross-entropy of a classifier.

    The model is run in eval mode under ``torch.inference_mode`` (its previous train/eval mode
    is restored afterwards, so a training loop can call this between epochs). Images are
    moved to the device of the model's parameters. Per-image hits are kept in data order so
    two models evaluated on the same data can be compared with :func:`paired_difference`.

    Args:
        model: maps a batch of images to ``(batch, num_classes)`` logits (if it returns a
            tuple/list, the first element is used).
        data: one of: an ``(images, labels)`` pair of tensors (or numpy arrays); a Dataset of
            ``(image, int label)`` items (its ``tensors()`` method, if any, returning all
            images and labels at once, is used as a fast path); or a DataLoader (used as is,
            ``batch_size`` is then ignored).
        topk: the k values to report; 1 is always included; any k larger than the number of
            classes is skipped (it would be 100% by construction).
        batch_size: images per forward pass.
        progress: show a tqdm bar on stderr; a string is used as its description.
        keep_logits: also return all logits (float32, ``n_images x num_classes``).

    Returns:
        An :class:`EvalResult`.

    Raises:
        QuantbenchError: empty data, bad ``topk``/``batch_size``, or mismatched images/labels.

    Example:
        >>> x, y = torch.randn(100, 3, 8, 8), torch.randint(0, 10, (100,))
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
        >>> r = evaluate(model, (x, y), topk=(1, 5))
        >>> sorted(r.topk), r.n_images
        ([1, 5], 100)
    """
    from quantbench.progress import bar as progress_bar

    if batch_size <= 0:
        raise QuantbenchError(f"evaluate: batch_size must be > 0, got {batch_size}")
    ks = _normalize_topk(topk)
    device = _model_device(model)
    batches, total = _batches(data, batch_size)
    hits: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    kept: list[torch.Tensor] = []
    seen_labels: list[torch.Tensor] = []
    loss_sum = 0.0
    n = 0
    num_classes: int | None = None
    was_training = model.training
    model.eval()
    bar = progress_bar(total=total, desc=progress if isinstance(progress, str) else "", unit="img",
                       enabled=bool(progress))
    try:
        with torch.inference_mode():
            for images, labels in batches:
                labels = torch.as_tensor(labels).to(device=device, dtype=torch.long).reshape(-1)
                out = model(images.to(device))
                if isinstance(out, (tuple, list)):
                    out = out[0]
                logits = out.float()
                if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
                    raise QuantbenchError(
                        f"evaluate: model output shape {tuple(logits.shape)} does not match "
                        f"{labels.shape[0]} labels; expected (batch, num_classes) logits"
                    )
                num_classes = int(logits.shape[1])
                loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
                kmax = min(max(ks), num_classes)
                top = logits.topk(kmax, dim=1).indices  # (batch, kmax), best first
                match = top == labels[:, None]
                for k in ks:
                    if k <= num_classes:
                        hits[k].append(match[:, :k].any(dim=1).cpu())
                seen_labels.append(labels.cpu())
                if keep_logits:
                    kept.append(logits.cpu())
                n += int(labels.shape[0])
                bar.update(int(labels.shape[0]))
    finally:
        bar.close()
        model.train(was_training)
    if n == 0 or num_classes is None:
        raise QuantbenchError("evaluate: the data holds no images")
    correct_k = {k: torch.cat(v).numpy().astype(bool) for k, v in hits.items() if k <= num_classes}
    topk_pct = {k: 100.0 * float(c.mean()) for k, c in correct_k.items()}
    ci = {}
    for k, c in correct_k.items():
        lo, hi = proportion_ci(int(c.sum()), n)
        ci[k] = (100.0 * lo, 100.0 * hi)
    return EvalResult(
        n_images=n,
        top1=topk_pct[1],
        topk=topk_pct,
        ci=ci,
        loss=loss_sum / n,
        correct=correct_k[1],
        correct_k=correct_k,
        logits=torch.cat(kept).numpy() if keep_logits else None,
        labels=torch.cat(seen_labels).numpy().astype(np.int64),
    )
