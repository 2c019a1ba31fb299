"""Seeded fuzzing of every reader of outside input: mutated inputs give a clean result or a QuantbenchError
(one line), never another exception, a hang or a change to what is stored.

The runs in ``make test`` are short and derandomized (the same examples every time); for a longer search
set ``QUANTBENCH_FUZZ_EXAMPLES`` (e.g. 5000) and ``QUANTBENCH_FUZZ_RANDOM=1`` and run
``pytest tests/fuzz --hypothesis-seed=N`` for several N.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install 'quantbench[dev]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from quantbench.errors import QuantbenchError  # noqa: E402

N = int(os.environ.get("QUANTBENCH_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=N, derandomize=not os.environ.get("QUANTBENCH_FUZZ_RANDOM"), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


def _one_line(exc: QuantbenchError) -> None:
    assert "\n" not in str(exc) and str(exc)


# ----------------------------------------------------------------------------- configs and specs

KEYS = ["model", "data", "method", "calib_size", "epochs", "lr", "hyper", "input_shape", "batch_sizes", "splits",
        "qbins", "companding", "normalize", "topk", "seed", "threads", "eval_size", "budget_kb", "nosuch"]


@FUZZ
@given(kind=st.sampled_from(["ptq", "qat", "mixed", "split", "bench", "train", "eval", "run", "lint"]),
       cfg=st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_config_values(kind, cfg):
    from quantbench.experiments.layer import config_for

    try:
        config_for(kind, cfg)
    except QuantbenchError as exc:
        _one_line(exc)


@FUZZ
@given(text=st.text(max_size=200))
def test_yaml_experiment_files(tmp_path_factory, text):
    from quantbench.experiments.files import read_experiment_file

    f = tmp_path_factory.mktemp("y") / "x.yaml"
    f.write_text(text, encoding="utf-8")
    try:
        read_experiment_file(f, "ptq")
    except QuantbenchError as exc:
        _one_line(exc)


@FUZZ
@given(spec=st.text(max_size=60), norm=st.text(max_size=40))
def test_data_specs_and_normalisations(spec, norm):
    from quantbench.data import parse_spec
    from quantbench.data.transforms import parse_normalization

    for fn, arg in ((parse_spec, spec), (parse_normalization, norm)):
        try:
            fn(arg)
        except QuantbenchError as exc:
            _one_line(exc)


# ----------------------------------------------------------------------------- binary files

def _mutations():
    return st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert"]), st.integers(0, 10**6),
                              st.integers(0, 255)), min_size=1, max_size=4)


def _mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op, pos, val in ops:
        if not b:
            break
        i = pos % len(b)
        if op == "flip":
            b[i] ^= val or 1
        elif op == "cut":
            del b[i:]
        else:
            b[i:i] = bytes([val]) * (1 + val % 8)
    return bytes(b)


@pytest.fixture(scope="module")
def small_qbm(tmp_path_factory):
    import torch

    import quantbench as qb
    from quantbench.quant.save import save_quantized

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3))
    qm = qb.quantize(net, "w4a8", torch.randn(16, 1, 8, 8))
    d = tmp_path_factory.mktemp("qbm")
    save_quantized(qm, d / "m.qbm", input_shape=(1, 8, 8))
    return (d / "m.qbm").read_bytes(), net


@FUZZ
@given(ops=_mutations())
def test_qbm_reader(tmp_path_factory, small_qbm, ops):
    import copy

    from quantbench.quant.save import load_quantized

    data, net = small_qbm
    f = tmp_path_factory.mktemp("m") / "m.qbm"
    f.write_bytes(_mutate(data, ops))
    try:
        load_quantized(f, copy.deepcopy(net))
    except QuantbenchError as exc:
        _one_line(exc)


@FUZZ
@given(ops=_mutations(), header=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)))
def test_idx_reader(tmp_path_factory, ops, header):
    from quantbench.data.idx import read_idx

    good = struct.pack(">I", 0x0803) + struct.pack(">III", 3, 4, 4) + bytes(range(48))
    bad_dims = struct.pack(">I", 0x0803) + struct.pack(">III", 3, *header) + bytes(10)
    f = tmp_path_factory.mktemp("i") / "x-idx3-ubyte"
    for blob in (_mutate(good, ops), bad_dims):
        f.write_bytes(blob)
        try:
            read_idx(f, 3)
        except QuantbenchError as exc:
            _one_line(exc)


@FUZZ
@given(ops=_mutations())
def test_cifar_batch_reader(tmp_path_factory, ops):
    import pickle

    import numpy as np

    from quantbench.data.cifar import read_batch

    good = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)
    f = tmp_path_factory.mktemp("c") / "data_batch_1"
    f.write_bytes(_mutate(good, ops))
    try:
        read_batch(f)
    except QuantbenchError as exc:
        _one_line(exc)


# ----------------------------------------------------------------------------- JSON from devices


def _leaves(doc, path=()):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _leaves(v, (*path, i))
    yield path


def _set(doc, path, value):
    if not path:
        return value
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return doc


@pytest.fixture(scope="module")
def device_results():
    return {"format": "quantbench-device-results-v1", "device": "edge",
            "bundle": {"model": "lenet", "input_shape": [1, 8, 8], "models": [{"scheme": "fp32", "macs": 1000},
                                                                              {"scheme": "w8a8:mse", "macs": 1000}]},
            "facts": {"cpu_model": "x"}, "checks": [{"scheme": "fp32", "ok": True, "cosine": 1.0}],
            "records": [{"scheme": "fp32", "batch": 1, "median_ms": 1.0, "p90_ms": 1.2},
                        {"scheme": "w8a8:mse", "batch": 1, "median_ms": 0.5, "p90_ms": 0.6}]}


@FUZZ
@given(pick=st.integers(0, 10**6), value=values)
def test_device_results_import(tmp_path_factory, device_results, pick, value):
    from quantbench.bundle import import_results
    from quantbench.cli import main
    from quantbench.store import ResultStore

    d = tmp_path_factory.mktemp("imp")
    db = d / "q.db"
    good = d / "good.json"
    good.write_text(json.dumps(device_results))
    import_results(good, store_path=str(db))
    with ResultStore(db) as store:
        before = [(r["run_id"], r["metric"], r["value"]) for r in store.query(unfinished=True)]
    doc = json.loads(json.dumps(device_results))
    paths = list(_leaves(doc))
    doc = _set(doc, paths[pick % len(paths)], value)
    bad = d / "bad.json"
    bad.write_text(json.dumps(doc, allow_nan=True))
    code = main(["import", str(bad), "--store", str(db), "--out", str(d / "report")])
    assert code in (0, 2)
    with ResultStore(db) as store:
        after = [(r["run_id"], r["metric"], r["value"]) for r in store.query(unfinished=True)]
    assert after[: len(before)] == before  # nothing stored before is changed
    written = {p.resolve() for p in d.rglob("*") if p.is_file()}
    assert all(str(p).startswith(str(d.resolve())) for p in written)  # nothing written outside its folder


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    from quantbench.bundle import build_bundle

    out = tmp_path_factory.mktemp("bundle") / "b"
    build_bundle("lenet", variants=("fp32",), calib="random", calib_size=8, n_samples=2, out_dir=out, make_zip=False,
                 formats=("onnx",))
    return out


@FUZZ
@given(pick=st.integers(0, 10**6), value=values)
def test_bundle_manifest(bundle_dir, pick, value):
    from quantbench.bundle_runner import BundleError, validate_manifest

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    paths = list(_leaves(manifest))
    doc = _set(json.loads(json.dumps(manifest)), paths[pick % len(paths)], value)
    if not isinstance(doc, dict):
        return
    for m in doc.get("models", []) if isinstance(doc.get("models"), list) else []:
        if isinstance(m, dict):
            m.setdefault("format", "onnx")
            m.setdefault("engine", "onnxruntime")
    try:
        validate_manifest(Path(bundle_dir), doc, Path(bundle_dir) / "manifest.json")
    except BundleError as exc:
        assert "\n" not in str(exc)
