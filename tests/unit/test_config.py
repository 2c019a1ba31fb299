"""Config: YAML <-> frozen dataclasses, unknown/ill-typed keys are errors naming the key."""

from __future__ import annotations

import dataclasses

import pytest

from quantbench import config as C
from quantbench.errors import QuantbenchError


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = C.from_dict({"train": {"epochs": 3}, "measure": {"batch_sizes": [1, 4]}})
    path = tmp_path / "c.yaml"
    C.save(cfg, path)
    again = C.load(path)
    assert again == cfg
    assert again.measure.batch_sizes == (1, 4)
    assert again.train.epochs == 3


def test_frozen():
    cfg = C.from_dict({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"trian": {}}, "'trian'"),
        ({"train": {"epoch": 3}}, "train.epoch"),
        ({"train": {"epochs": "ten"}}, "train.epochs must be int"),
        ({"train": {"lr": "fast"}}, "train.lr must be float"),
        ({"train": {"epochs": True}}, "train.epochs must be int"),
        ({"model": {"name": 3}}, "model.name must be str"),
        ({"measure": {"batch_sizes": [1, "x"]}}, "measure.batch_sizes[1]"),
        ({"measure": {"batch_sizes": [0]}}, "measure.batch_sizes"),
        ({"train": {"optimizer": "lion"}}, "train.optimizer"),
        ({"data": {"split": {"train": 0.9, "test": 0.5}}}, "data.split"),
        ({"version": 99}, "version"),
    ],
)
def test_bad_keys_and_values_name_the_key(data, needle):
    with pytest.raises(QuantbenchError) as err:
        C.from_dict(data)
    assert needle in str(err.value)


def test_int_accepted_for_float_and_optional_none():
    cfg = C.from_dict({"train": {"lr": 1}, "model": {"checkpoint": None}, "data": {"resize": 16}})
    assert isinstance(cfg.train.lr, float) and cfg.model.checkpoint is None and cfg.data.resize == 16


def test_overrides_parse_yaml_scalars_and_revalidate():
    cfg = C.apply_overrides(C.from_dict({}), ["train.epochs=2", "model.hyper={alpha: 0.25}", "data.spec=synthetic"])
    assert cfg.train.epochs == 2 and cfg.model.hyper == {"alpha": 0.25} and cfg.data.spec == "synthetic"
    with pytest.raises(QuantbenchError, match="train.nope"):
        C.apply_overrides(cfg, ["train.nope=1"])
    with pytest.raises(QuantbenchError, match="KEY=VALUE"):
        C.apply_overrides(cfg, ["train.epochs"])


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(QuantbenchError, match="missing.yaml"):
        C.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(QuantbenchError, match="bad.yaml: not valid YAML"):
        C.load(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epoch: 3\n")
    with pytest.raises(QuantbenchError, match=r"typo.yaml: config: unknown key 'train.epoch'"):
        C.load(typo)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(QuantbenchError, match="list.yaml"):
        C.load(listy)
