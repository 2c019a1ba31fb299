"""Configs: every kind is a frozen dataclass; keys, types and ranges are checked where they are parsed;
experiment files (one format for every verb and for sweeps) resolve their paths against the file."""

from __future__ import annotations

import dataclasses

import pytest

from quantbench.config import build, parse_hyper, parse_shape, read_yaml_mapping
from quantbench.errors import QuantbenchError
from quantbench.experiments.files import read_experiment_file
from quantbench.experiments.layer import KINDS, config_for


@pytest.mark.parametrize("kind", ["bench", "eval", "lint", "mixed", "ptq", "qat", "run", "split", "train"])
def test_every_kind_has_valid_frozen_defaults(kind):
    values = {"budget_kb": 100} if kind == "mixed" else {}
    cfg = config_for(kind, values)
    assert type(cfg).kind == kind
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 5  # type: ignore[misc]
    for f in dataclasses.fields(cfg):  # every option has help text (it becomes the flag's help)
        assert f.metadata.get("help"), (kind, f.name)


def test_the_same_concept_has_one_declaration_and_default_everywhere():
    shared = ("store", "out", "threads", "seed", "model", "checkpoint", "hyper", "input_shape", "no_store")
    for name in KINDS.names():
        fields = {f.name: f for f in dataclasses.fields(KINDS.get(name).config)}
        for key in shared:
            assert key in fields, (name, key)
    defaults = {KINDS.get(k).config.__dataclass_fields__["adaround_iters"].default
                for k in ("ptq", "qat", "run")}
    assert defaults == {None}  # one budget: each algorithm's own default, not 1000 / 500 / 200
    calib = {KINDS.get(k).config.__dataclass_fields__["calib_size"].default for k in ("ptq", "qat", "mixed", "run")}
    assert calib == {512}


@pytest.mark.parametrize("kind, values, needle", [
    ("ptq", {"calib_sizes": 3}, "unknown key 'calib_sizes'"),
    ("ptq", {"calib_size": 0}, "calib_size must be >= 1, got 0"),
    ("ptq", {"calib_size": "many"}, "calib_size must be int"),
    ("ptq", {"calib_size": True}, "calib_size must be int"),
    ("ptq", {"method": "w8a8:nosuch"}, "unknown algorithm"),
    ("ptq", {"first_last": "int4"}, "first_last must be one of same, int8, fp32"),
    ("train", {"lr": -1}, "lr must be > 0"),
    ("train", {"lr": float("nan")}, "lr must be a finite number"),
    ("train", {"optimizer": "lion"}, "optimizer must be one of sgd, adamw"),
    ("train", {"seed": -1}, "seed must be >= 0"),
    ("qat", {"method": "dynamic"}, "QAT needs a static wXaY scheme"),
    ("qat", {"batch_size": -1}, "batch_size must be >= 1"),
    ("split", {"eval_size": 0}, "eval_size must be >= 1"),
    ("split", {"noise_train": -1}, "noise_train must be >= 0"),
    ("split", {"qbins": "4,1"}, r"qbins must be >= 2, got 1"),
    ("split", {"companding": "none,alaw"}, "companding must be one of none, mulaw"),
    ("mixed", {"budget_kb": float("nan")}, "budget_kb must be a finite number"),
    ("mixed", {}, "exactly one budget"),
    ("eval", {"topk": 1000000}, "topk must be <= 1000"),
    ("eval", {"input_shape": "3x32"}, "input_shape must be CxHxW"),
    ("eval", {"input_shape": "3x20000x20000"}, "too large"),
    ("bench", {"engines": "nosuchengine"}, "unknown engine 'nosuchengine'"),
    ("bench", {"min_time_s": -1}, "min_time_s must be > 0"),
])
def test_bad_values_name_the_key(kind, values, needle):
    with pytest.raises(QuantbenchError, match=needle):
        config_for(kind, values)


def test_text_forms_of_shapes_lists_and_hyper_parameters():
    cfg = config_for("bench", {"input_shape": "3x224x160", "batch_sizes": "1,8", "hyper": ["a=1,b=[2,3]", "c=x"]})
    assert cfg.input_shape == (3, 224, 160) and cfg.batch_sizes == (1, 8)
    assert cfg.hyper == {"a": 1, "b": [2, 3], "c": "x"}
    assert parse_shape([1, 8, 8]) == (1, 8, 8)
    assert parse_hyper({"k": 1}) == {"k": 1}
    with pytest.raises(QuantbenchError, match="KEY=VALUE"):
        parse_hyper("noequals")


def test_build_rejects_unknown_keys_of_any_dataclass():
    @dataclasses.dataclass(frozen=True)
    class Small:
        n: int = 1

    assert build(Small, {"n": 3}).n == 3
    with pytest.raises(QuantbenchError, match="unknown key 'm'"):
        build(Small, {"m": 3})


def test_yaml_alias_bombs_and_deep_nesting_are_refused_quickly(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(QuantbenchError, match="bomb.yaml: not valid YAML .*values"):
        read_yaml_mapping(bomb, "experiment file")
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(QuantbenchError, match="deep.yaml: not valid YAML"):
        read_yaml_mapping(deep, "experiment file")


def test_experiment_file_paths_resolve_against_the_file(tmp_path):
    folder = tmp_path / "studies"
    folder.mkdir()
    f = folder / "x.yaml"
    f.write_text("kind: ptq\nmodel: nets/my.py:build\ncheckpoint: w.th\ndata: imagefolder:../data\n"
                 "calib: synthetic:n=64\nstore: out/x.db\ngrid:\n  method: [w8a8, w4a8]\n")
    ef = read_experiment_file(f)
    assert ef.kind == "ptq" and ef.is_sweep and ef.name == "x"
    assert ef.values["model"] == f"{folder}/nets/my.py:build"
    assert ef.values["checkpoint"] == f"{folder}/w.th"
    assert ef.values["data"] == f"imagefolder:{folder}/../data"
    assert ef.values["calib"] == "synthetic:n=64"  # a spec without a path is left alone
    assert ef.values["store"] == f"{folder}/out/x.db"
    with pytest.raises(QuantbenchError, match="is a 'ptq' experiment file; this verb runs 'split'"):
        read_experiment_file(f, "split")
    f.write_text("kind: ptq\nmethods: [w8a8]\n")
    with pytest.raises(QuantbenchError, match="x.yaml: unknown key 'methods' for a ptq experiment"):
        read_experiment_file(f)
    f.write_text("model: lenet\n")
    with pytest.raises(QuantbenchError, match="says no kind"):
        read_experiment_file(f)
    f.write_text("kind: nosuch\n")
    with pytest.raises(QuantbenchError, match="unknown experiment kind 'nosuch'"):
        read_experiment_file(f)
    with pytest.raises(QuantbenchError, match="missing.yaml: cannot read"):
        read_experiment_file(folder / "missing.yaml")
