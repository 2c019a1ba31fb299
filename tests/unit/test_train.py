"""The shared training loop: learns, is deterministic, records history, saves checkpoints."""

from __future__ import annotations

import pytest
import torch

from quantbench.config import TrainConfig
from quantbench.data import open_dataset, split_dataset
from quantbench.measure.accuracy import evaluate
from quantbench.models import build_model
from quantbench.train import fit
from quantbench.train.loop import lr_at

SPEC = "synthetic:n=300,shape=1x8x8,classes=5,seed=1"


def _splits():
    ds = open_dataset(SPEC)
    return split_dataset(ds, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)


def _train(epochs: int = 3, **kw):
    parts = _splits()
    torch.manual_seed(123)
    model = build_model("lenet", num_classes=5, in_channels=1)
    hist = fit(model, parts["train"], parts["val"], TrainConfig(epochs=epochs, batch_size=32, **kw))
    return model, hist, parts


def test_training_learns_and_records_history(tmp_path):
    parts = _splits()
    model = build_model("lenet", num_classes=5, in_channels=1)
    before = evaluate(model, parts["test"]).top1
    ckpt = tmp_path / "m.pt"
    hist = fit(model, parts["train"], parts["val"], TrainConfig(epochs=4, batch_size=32), checkpoint_path=ckpt)
    after = evaluate(model, parts["test"]).top1
    assert after > max(before, 40.0)  # chance is 20%
    assert [e["epoch"] for e in hist.epochs] == [1, 2, 3, 4]
    recorded = {"train_loss", "train_top1", "val_loss", "val_top1", "val_topk", "lr", "seconds"}
    assert recorded.issubset(hist.epochs[0])
    assert hist.epochs[-1]["train_loss"] < hist.epochs[0]["train_loss"]
    assert hist.wall_s >= sum(e["seconds"] for e in hist.epochs) * 0.99
    assert not model.training
    saved = torch.load(ckpt, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_training_is_deterministic():
    m1, h1, _ = _train(seed=7)
    m2, h2, _ = _train(seed=7)
    assert [e["train_loss"] for e in h1.epochs] == [e["train_loss"] for e in h2.epochs]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    _, h3, _ = _train(seed=8)
    assert [e["train_loss"] for e in h3.epochs] != [e["train_loss"] for e in h1.epochs]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimizers(optimizer):
    lr = 0.05 if optimizer == "sgd" else 0.003
    _, hist, _ = _train(epochs=3, optimizer=optimizer, lr=lr)
    assert hist.epochs[-1]["train_loss"] < hist.epochs[0]["train_loss"]


def test_cosine_schedule():
    cfg = TrainConfig(lr=0.1, schedule="cosine")
    assert lr_at(cfg, 0, 100) == pytest.approx(0.1)
    assert lr_at(cfg, 50, 100) == pytest.approx(0.05)
    assert lr_at(cfg, 100, 100) == pytest.approx(0.0)
    assert lr_at(TrainConfig(lr=0.1, schedule="constant"), 70, 100) == 0.1
