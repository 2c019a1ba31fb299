"""evaluate(), Wilson intervals and paired differences (quantbench.measure.accuracy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from quantbench.errors import QuantbenchError
from quantbench.measure import EvalResult, evaluate, mcnemar_exact_p, paired_difference, proportion_ci

# ----------------------------------------------------------------------------- fixtures

NUM_CLASSES = 6


class Echo(nn.Module):
    """Logits = the input itself (flattened), so the answer is known in advance."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) + 0 * self.dummy


def known_problem(n: int = 50, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Images whose logits put the true label at a chosen rank; returns (x, y, rank)."""
    rng = np.random.default_rng(seed)
    ranks = rng.integers(0, NUM_CLASSES, size=n)
    labels = rng.integers(0, NUM_CLASSES, size=n)
    x = np.zeros((n, NUM_CLASSES), dtype=np.float32)
    for i in range(n):
        scores = np.arange(NUM_CLASSES, 0, -1, dtype=np.float32)  # 6, 5, ..., 1: rank r -> score 6 - r
        others = [c for c in range(NUM_CLASSES) if c != labels[i]]
        order = list(rng.permutation(others))
        order.insert(int(ranks[i]), int(labels[i]))  # class at position r has the r-th best score
        x[i, order] = scores
    return torch.from_numpy(x).reshape(n, 1, 1, NUM_CLASSES), torch.from_numpy(labels).long(), ranks


class SlowDataset(Dataset):
    """(image, int) items, no tensors() fast path."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


class FastDataset(SlowDataset):
    """Same data with a tensors() fast path whose use we can observe."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__(x, y)
        self.tensors_calls = 0

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        raise AssertionError("the tensors() fast path should have been used")

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.tensors_calls += 1
        return self.x, self.y


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_exact_topk_and_loss() -> None:
    x, y, ranks = known_problem()
    r = evaluate(Echo(), (x, y), topk=(1, 3, 5), batch_size=7)
    assert r.n_images == 50
    assert sorted(r.topk) == [1, 3, 5]
    for k in (1, 3, 5):
        expected = ranks < k
        np.testing.assert_array_equal(r.correct_k[k], expected)
        assert r.topk[k] == pytest.approx(100.0 * expected.mean())
        lo, hi = proportion_ci(int(expected.sum()), 50)
        assert r.ci[k] == pytest.approx((100 * lo, 100 * hi))
    np.testing.assert_array_equal(r.correct, ranks == 0)
    assert r.top1 == r.topk[1]
    logits = x.reshape(50, NUM_CLASSES).double()
    expected_loss = float(torch.nn.functional.cross_entropy(logits, y))
    assert r.loss == pytest.approx(expected_loss, rel=1e-6)
    assert r.logits is None


def test_all_data_forms_agree() -> None:
    x, y, _ = known_problem(n=37)
    fast = FastDataset(x, y)
    results = [
        evaluate(Echo(), (x, y), batch_size=8),
        evaluate(Echo(), (x.numpy(), y.numpy()), batch_size=8),
        evaluate(Echo(), fast, batch_size=8),
        evaluate(Echo(), SlowDataset(x, y), batch_size=8),
        evaluate(Echo(), DataLoader(SlowDataset(x, y), batch_size=5)),
    ]
    assert fast.tensors_calls == 1
    ref = results[0]
    for r in results[1:]:
        got, want = r.as_dict(), ref.as_dict()
        assert got.pop("loss") == pytest.approx(want.pop("loss"), rel=1e-6)  # batch sums differ in order
        assert got == want
        np.testing.assert_array_equal(r.correct, ref.correct)
        for k in ref.correct_k:
            np.testing.assert_array_equal(r.correct_k[k], ref.correct_k[k])


def test_topk_larger_than_classes_is_skipped_and_1_always_included() -> None:
    x, y, ranks = known_problem(n=20)
    r = evaluate(Echo(), (x, y), topk=(3, 10))
    assert sorted(r.topk) == [1, 3]
    assert sorted(r.ci) == [1, 3]
    assert r.topk[3] == pytest.approx(100.0 * (ranks < 3).mean())
    r6 = evaluate(Echo(), (x, y), topk=NUM_CLASSES)
    assert r6.topk[NUM_CLASSES] == 100.0


def test_keep_logits_and_mode_restored() -> None:
    x, y, _ = known_problem(n=10)
    model = Echo().train()
    r = evaluate(model, (x, y), keep_logits=True, batch_size=3)
    assert model.training  # a training loop may call evaluate between epochs
    assert r.logits is not None and r.logits.shape == (10, NUM_CLASSES)
    np.testing.assert_allclose(r.logits, x.reshape(10, NUM_CLASSES).numpy())


def test_eval_mode_is_used_inside() -> None:
    seen: list[bool] = []

    class Spy(Echo):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(self.training or torch.is_grad_enabled())
            return super().forward(x)

    x, y, _ = known_problem(n=4)
    evaluate(Spy().train(), (x, y))
    assert seen == [False]


def test_as_dict_is_json_friendly() -> None:
    x, y, _ = known_problem(n=12)
    d = evaluate(Echo(), (x, y), topk=(1, 2)).as_dict()
    back = json.loads(json.dumps(d))
    assert set(back) == {"n_images", "top1", "topk", "ci", "loss"}
    assert back["n_images"] == 12


def test_progress_bar_writes_description_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    x, y, _ = known_problem(n=8)
    evaluate(Echo(), (x, y), progress="eval fp32")
    captured = capsys.readouterr()
    assert "eval fp32" in captured.err
    assert captured.out == ""


@pytest.mark.parametrize(
    "kwargs, match",
    [({"topk": (0,)}, "topk"), ({"batch_size": 0}, "batch_size")],
)
def test_evaluate_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    x, y, _ = known_problem(n=4)
    with pytest.raises(QuantbenchError, match=match):
        evaluate(Echo(), (x, y), **kwargs)


def test_evaluate_rejects_bad_data() -> None:
    x, y, _ = known_problem(n=4)
    with pytest.raises(QuantbenchError, match="labels"):
        evaluate(Echo(), (x, y[:3]))
    with pytest.raises(QuantbenchError, match="no images"):
        evaluate(Echo(), (x[:0], y[:0]))
    with pytest.raises(QuantbenchError, match="Dataset"):
        evaluate(Echo(), 42)


# ----------------------------------------------------------------------------- Wilson


@pytest.mark.parametrize(
    "successes, n, lo, hi",
    [
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (50, 100, 0.4038, 0.5962),
        # Newcombe (1998) Stat Med 17:857, Table II, method 3 (score, no continuity correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_known_values(successes: int, n: int, lo: float, hi: float) -> None:
    got = proportion_ci(successes, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_level_and_errors() -> None:
    narrow, wide = proportion_ci(30, 100, 0.80), proportion_ci(30, 100, 0.99)
    assert wide[0] < narrow[0] < 0.3 < narrow[1] < wide[1]
    for bad in [(1, 0), (11, 10), (-1, 10)]:
        with pytest.raises(QuantbenchError):
            proportion_ci(*bad)
    with pytest.raises(QuantbenchError, match="level"):
        proportion_ci(1, 10, level=1.5)


# ----------------------------------------------------------------------------- paired


def table(both: int, b_only: int, a_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image hits of models A and B from the 2x2 table counts (shuffled)."""
    a = np.array([1] * both + [0] * b_only + [1] * a_only + [0] * neither, dtype=bool)
    b = np.array([1] * both + [1] * b_only + [0] * a_only + [0] * neither, dtype=bool)
    perm = np.random.default_rng(0).permutation(a.size)
    return a[perm], b[perm]


@pytest.mark.parametrize("method", ["newcombe", "bootstrap"])
def test_identical_models_show_no_difference(method: str) -> None:
    a, _ = table(70, 0, 0, 30)
    d = paired_difference(a, a.copy(), method=method)
    assert d.diff_points == 0.0
    assert d.ci_low <= 0.0 <= d.ci_high
    assert d.p_value == 1.0
    assert not d.significant
    assert (d.n, d.n_a_only, d.n_b_only) == (100, 0, 0)


@pytest.mark.parametrize("method", ["newcombe", "bootstrap"])
def test_clearly_better_model_is_significant(method: str) -> None:
    a, b = table(700, 150, 10, 140)  # B: 85%, A: 71%
    d = paired_difference(a, b, method=method)
    assert d.diff_points == pytest.approx(14.0)
    assert 0.0 < d.ci_low < 14.0 < d.ci_high
    assert d.p_value < 1e-20
    assert d.significant
    swapped = paired_difference(b, a, method=method)
    assert swapped.diff_points == pytest.approx(-14.0)
    assert swapped.ci_high < 0.0


def test_newcombe_matches_published_example() -> None:
    # Fagerland, Lydersen & Laake (2017) ch. 8, Cavo et al. 2012: table [[59, 6], [16, 80]]:
    # Newcombe square-and-add -0.0621 (95% CI -0.1186 to -0.0046); exact McNemar P = 0.052479.
    a, b = table(59, 6, 16, 80)
    d = paired_difference(a, b)
    assert d.diff_points == pytest.approx(-6.21, abs=0.005)
    assert d.ci_low == pytest.approx(-11.86, abs=0.005)
    assert d.ci_high == pytest.approx(-0.46, abs=0.005)
    assert d.p_value == pytest.approx(0.052479, abs=5e-7)
    assert not d.significant  # the exact test is the (conservative) criterion


def test_bootstrap_and_newcombe_roughly_agree() -> None:
    a, b = table(800, 40, 60, 100)
    nc = paired_difference(a, b, method="newcombe")
    bs = paired_difference(a, b, method="bootstrap", seed=3)
    assert nc.diff_points == bs.diff_points == pytest.approx(-2.0)
    assert abs(nc.ci_low - bs.ci_low) < 0.5
    assert abs(nc.ci_high - bs.ci_high) < 0.5


def test_bootstrap_is_reproducible() -> None:
    a, b = table(50, 9, 4, 37)
    first = paired_difference(a, b, method="bootstrap", seed=7)
    assert paired_difference(a, b, method="bootstrap", seed=7) == first


def test_mcnemar_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for a_only, b_only in [(16, 6), (0, 5), (3, 3), (120, 80), (5000, 4800)]:
        expected = stats.binomtest(b_only, a_only + b_only, 0.5).pvalue
        assert mcnemar_exact_p(a_only, b_only) == pytest.approx(expected, rel=1e-9)
    assert mcnemar_exact_p(0, 0) == 1.0


def test_paired_accepts_eval_results_and_lists() -> None:
    x, y, _ = known_problem(n=30)
    r = evaluate(Echo(), (x, y))
    assert isinstance(r, EvalResult)
    d = paired_difference(r, r)
    assert d.n == 30 and d.diff_points == 0.0
    d2 = paired_difference([1, 0, 1], [True, True, False])
    assert (d2.n_a_only, d2.n_b_only) == (1, 1)
    assert json.loads(json.dumps(d2.as_dict()))["significant"] is False


def test_paired_rejects_bad_input() -> None:
    with pytest.raises(QuantbenchError, match="same images"):
        paired_difference(np.ones(10, bool), np.ones(9, bool))
    with pytest.raises(QuantbenchError, match="empty"):
        paired_difference(np.ones(0, bool), np.ones(0, bool))
    with pytest.raises(QuantbenchError, match="0/1"):
        paired_difference([0, 2], [1, 1])
    with pytest.raises(QuantbenchError, match="method"):
        paired_difference([1], [1], method="wald")  # type: ignore[arg-type]
