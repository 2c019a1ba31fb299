"""load_checkpoint: wrappers and prefixes accepted; every failure is one QuantbenchError naming the file."""

from __future__ import annotations

import argparse
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from quantbench.errors import QuantbenchError
from quantbench.models import build_model, load_checkpoint


@pytest.fixture
def lenet_sd() -> dict[str, torch.Tensor]:
    return build_model("lenet").state_dict()


def assert_same(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0)


def test_raw_state_dict(tmp_path: Path, lenet_sd) -> None:
    torch.save(lenet_sd, tmp_path / "w.pt")
    assert_same(load_checkpoint(build_model("lenet"), tmp_path / "w.pt"), lenet_sd)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict"])
def test_wrappers(tmp_path: Path, lenet_sd, wrapper: str) -> None:
    torch.save({wrapper: lenet_sd, "epoch": 3, "best_prec1": 91.7}, tmp_path / "w.pt")
    assert_same(load_checkpoint(build_model("lenet"), str(tmp_path / "w.pt")), lenet_sd)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_prefixes_are_stripped(tmp_path: Path, lenet_sd, prefix: str) -> None:
    torch.save({"state_dict": OrderedDict((prefix + k, v) for k, v in lenet_sd.items())}, tmp_path / "w.pt")
    assert_same(load_checkpoint(build_model("lenet"), tmp_path / "w.pt"), lenet_sd)


def test_missing_num_batches_tracked_is_tolerated(tmp_path: Path, lenet_sd) -> None:
    sd = {k: v for k, v in lenet_sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "w.pt")
    assert_same(load_checkpoint(build_model("lenet"), tmp_path / "w.pt"), lenet_sd)


def test_legacy_serialization_format(tmp_path: Path, lenet_sd) -> None:
    torch.save(lenet_sd, tmp_path / "w.th", _use_new_zipfile_serialization=False)
    assert_same(load_checkpoint(build_model("lenet"), tmp_path / "w.th"), lenet_sd)


def test_missing_file() -> None:
    with pytest.raises(QuantbenchError, match=r"nope\.pt: file not found"):
        load_checkpoint(build_model("lenet"), "/nonexistent/nope.pt")


@pytest.mark.parametrize(
    "content",
    [os.urandom(2048), b"hello, this is not a checkpoint", b""],
    ids=["random", "text", "empty"],
)
def test_garbage_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(QuantbenchError, match=r"garbage\.pt") as err:
        load_checkpoint(build_model("lenet"), path)
    assert "\n" not in str(err.value)


def test_truncated_file(tmp_path: Path, lenet_sd) -> None:
    torch.save(lenet_sd, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(QuantbenchError, match=r"cut\.pt: corrupt"):
        load_checkpoint(build_model("lenet"), tmp_path / "cut.pt")


def test_checkpoint_with_python_objects_is_refused(tmp_path: Path, lenet_sd) -> None:
    """Old training scripts pickle their argparse args; weights_only must refuse, not execute."""
    torch.save({"state_dict": lenet_sd, "args": argparse.Namespace(lr=0.1)}, tmp_path / "args.pt")
    with pytest.raises(
        QuantbenchError, match=r"args\.pt: not a weights-only checkpoint.*argparse\.Namespace"
    ):
        load_checkpoint(build_model("lenet"), tmp_path / "args.pt")


class Payload:
    """An arbitrary object; unpickling it would run ``__reduce__`` code in an unsafe loader."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_plain_pickle_with_arbitrary_object_is_refused(tmp_path: Path, capsys) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(QuantbenchError, match=r"evil\.pkl: not a weights-only checkpoint"):
        load_checkpoint(build_model("lenet"), path)
    assert "pwned" not in capsys.readouterr().out


def test_no_state_dict_inside(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "acc": 0.9}, tmp_path / "meta.pt")
    with pytest.raises(QuantbenchError, match=r"meta\.pt: expected a state dict.*\['acc', 'epoch'\]"):
        load_checkpoint(build_model("lenet"), tmp_path / "meta.pt")


def test_key_mismatch_lists_missing_and_unexpected(tmp_path: Path) -> None:
    torch.save(build_model("resnet20").state_dict(), tmp_path / "r20.pt")
    with pytest.raises(QuantbenchError) as err:
        load_checkpoint(build_model("lenet"), tmp_path / "r20.pt")
    msg = str(err.value)
    assert "r20.pt" in msg and "missing 17 [block1.0.weight" in msg and "unexpected 116 [conv1.weight" in msg
    assert "(+" in msg  # long lists are cut, with a count


def test_unexpected_keys_allowed_when_not_strict(tmp_path: Path, lenet_sd) -> None:
    torch.save({**lenet_sd, "extra.weight": torch.zeros(3)}, tmp_path / "w.pt")
    with pytest.raises(QuantbenchError, match=r"unexpected 1 \[extra\.weight\]"):
        load_checkpoint(build_model("lenet"), tmp_path / "w.pt")
    assert_same(load_checkpoint(build_model("lenet"), tmp_path / "w.pt", strict=False), lenet_sd)


def test_shape_mismatch_names_key_and_shapes(tmp_path: Path) -> None:
    torch.save(build_model("lenet", num_classes=3).state_dict(), tmp_path / "three.pt")
    with pytest.raises(QuantbenchError, match=r"three\.pt: shape mismatch for 'fc\.weight': "
                       r"checkpoint \(3, 64\) vs model \(10, 64\) \(and 1 more keys\)"):  # fmt: skip
        load_checkpoint(build_model("lenet"), tmp_path / "three.pt", strict=False)


def test_returns_the_same_model(tmp_path: Path, lenet_sd) -> None:
    torch.save(lenet_sd, tmp_path / "w.pt")
    model = build_model("lenet")
    assert load_checkpoint(model, tmp_path / "w.pt") is model
