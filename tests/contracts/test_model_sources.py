"""Every model source kind (zoo, a .py file, a module factory, ONNX, torch.export) resolves, evaluates,
quantizes, lists split points and round-trips through a .qbm the same way; the refusals are one line."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from quantbench.cli import main
from quantbench.errors import QuantbenchError
from quantbench.models.sources import resolve_model, source_kind

SYN = "synthetic:n=64,shape=3x12x16,classes=5,seed=0"

NET = textwrap.dedent('''
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class Tiny(nn.Module):
        def __init__(self, num_classes=5, in_channels=3, width=8):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.branch = nn.Conv2d(width, width, 1)
            self.fc = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            x = F.relu(self.bn(self.conv(x)))
            x = torch.cat([x, F.hardswish(self.branch(x))], 1)
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


    def build(num_classes=5, in_channels=3, width=8):
        return Tiny(num_classes, in_channels, width)


    def broken(num_classes=5, in_channels=3):
        raise ValueError("this factory is broken on purpose")
''')


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """One tiny model of each source kind, built in the test."""
    d = tmp_path_factory.mktemp("sources")
    (d / "tinynet.py").write_text(NET)
    sys.path.insert(0, str(d))
    try:
        import tinynet
    finally:
        sys.path.remove(str(d))
    sys.modules.setdefault("tinynet", tinynet)
    torch.manual_seed(0)
    ref = tinynet.build().eval()
    x = torch.randn(1, 3, 12, 16)
    torch.onnx.export(ref, (x,), str(d / "tiny.onnx"), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})
    torch.export.save(torch.export.export(ref, (x,)), str(d / "tiny.pt2"))
    torch.save(ref.state_dict(), d / "tiny.pt")
    return {"zoo": ("lenet", None), "python": (f"{d / 'tinynet.py'}:build", d / "tiny.pt"),
            "module": ("tinynet:build", d / "tiny.pt"), "onnx": (str(d / "tiny.onnx"), None),
            "pt2": (str(d / "tiny.pt2"), None)}, ref


KINDS = ["zoo", "python", "module", "onnx", "pt2"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_source_resolves_and_matches_its_reference(sources, kind):
    table, ref = sources
    source, ckpt = table[kind]
    assert source_kind(source) == {"module": "python"}.get(kind, kind)
    loaded = resolve_model(source, checkpoint=str(ckpt) if ckpt else None, num_classes=5, in_channels=3)
    x = torch.randn(3, 3, 12, 16)
    with torch.no_grad():
        out = loaded.module(x)
        assert out.shape == (3, 5)
        if kind != "zoo":  # the same weights, whatever the file format: the same logits
            torch.testing.assert_close(out, ref(x), rtol=1e-4, atol=1e-4)
    if kind in ("onnx", "pt2"):
        assert loaded.input_shape == (3, 12, 16) and loaded.fixed_shape and loaded.num_classes == 5


@pytest.mark.parametrize("kind", KINDS)
def test_every_source_quantizes_splits_and_rebuilds_from_its_qbm(sources, kind, tmp_path, capsys):
    import json

    from quantbench.quant.save import load_quantized

    table, _ = sources
    source, ckpt = table[kind]
    args = ["--model", source, "--data", SYN, *(["--checkpoint", str(ckpt)] if ckpt else []),
            *(["--input-shape", "3x12x16"] if kind == "zoo" else [])]
    assert main(["quantize", *args, "--calib-size", "24", "--store", str(tmp_path / "q.db"), "--out",
                 str(tmp_path / "q"), "--no-progress", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["model"] == source and rec["n_images"] == 40
    qm = load_quantized(rec["quant"]["artifact"])  # rebuilt from the recorded source, weights from the file
    assert qm.input_shape == (3, 12, 16)
    assert main(["split", *args, "--list-splits", "--no-store", "--json"]) == 0
    points = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["points"]
    assert points and all(p["edge_macs"] + p["cloud_macs"] == points[0]["edge_macs"] + points[0]["cloud_macs"]
                          for p in points)


@pytest.mark.parametrize("argv_model, needle", [
    ("{d}/tinynet.py:nosuch", "no factory 'nosuch' in"),
    ("{d}/tinynet.py:broken", "the factory raised ValueError: this factory is broken on purpose"),
    ("{d}/missing.py:build", "missing.py: model file not found"),
    ("{d}/tinynet.py:build", "unknown hyper-parameter 'depth'"),
    ("{d}/bad_op.onnx", "operator not supported by quantbench's ONNX importer"),
    ("{d}/tiny.onnx", "has width 16, but --input-shape asks for 3x12x12"),
    ("{d}/tiny.pt2", "has width 16, but --input-shape asks for 3x12x12"),
    ("{d}/pickled.pt2", "stores tensors by pickle"),
    ("torchvision:resnet18", "torchvision"),
    ("timm:resnet18", "timm"),
    ("nosuchnet", "not a zoo model"),
])
def test_refusals_are_one_line_exit_2(sources, tmp_path, capsys, argv_model, needle):
    import onnx
    from onnx import TensorProto, helper

    d = Path(sources[0]["onnx"][0]).parent
    node = helper.make_node("Einsum", ["x", "x"], ["y"], equation="nchw,nchw->nc", name="odd")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(d / "bad_op.onnx"))
    _pickled_pt2(d / "tiny.pt2", d / "pickled.pt2")
    model = argv_model.format(d=d)
    importable = {"torchvision": _imports("torchvision"), "timm": _imports("timm")}
    if model.split(":")[0] in importable and importable[model.split(":")[0]]:
        pytest.skip(f"{model.split(':')[0]} imports here: its adapter builds models instead of refusing")
    extra = ["--hyper", "depth=3"] if "depth" in needle else []
    shape = ["--input-shape", "3x12x12"] if "--input-shape asks" in needle else []
    assert main(["eval", "--model", model, "--data", SYN, *extra, *shape, "--no-store", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err


def _imports(name: str) -> bool:
    try:
        __import__(name)
    except Exception:  # noqa: BLE001 - any failure means the adapter refuses
        return False
    return True


def _pickled_pt2(src: Path, dst: Path) -> None:
    """A copy of a .pt2 whose weights config claims pickled payloads (as a malicious file would)."""
    import json
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("weights_config.json"):
                doc = json.loads(data)
                for entry in doc.get("config", {}).values():
                    entry["use_pickle"] = True
                data = json.dumps(doc).encode()
            zout.writestr(item, data)


def test_a_python_factory_gets_classes_and_channels_from_the_data(sources):
    table, _ = sources
    loaded = resolve_model(table["python"][0], num_classes=7, in_channels=1, hyper={"width": 4})
    assert loaded.module.fc.out_features == 7 and loaded.module.conv.in_channels == 1
    assert loaded.module.conv.out_channels == 4 and loaded.hyper == {"width": 4}


def test_an_onnx_file_with_a_variable_size_needs_an_input_shape(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2)).eval()
    path = tmp_path / "var.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    with pytest.raises(QuantbenchError, match=r"variable shape \(3x\?x\?\); pass --input-shape"):
        resolve_model(str(path))
    loaded = resolve_model(str(path), input_shape=(3, 20, 24))
    assert loaded.input_shape == (3, 20, 24) and loaded.module(torch.zeros(2, 3, 20, 24)).shape == (2, 2)
