"""The front door, tried as a new user would: models quantbench has never seen, through every verb.

* a model in the user's own ``.py`` file (dense concatenation, channel shuffle, squeeze-excitation,
  hard-swish) trains on ``digits``, quantizes (W8A8 drop <= 1 point), deploys INT8 on ONNX Runtime
  and OpenVINO with the simulated accuracy, splits at a listed point and runs as a sweep;
* a hand-written ("third-party", TensorFlow-style NHWC) ONNX CNN with a non-square input and
  mean/std 0.5 evaluates at the accuracy onnxruntime gives on the same images and quantizes W8A8
  within 0.5 points.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quantbench.cli import main

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'quantbench[onnx]')")

USER_MODEL = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class SqueezeExcite(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


def channel_shuffle(x, groups):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class DenseLayer(nn.Module):
    def __init__(self, c, growth):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(c), nn.Conv2d(c, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.hardswish(self.bn(x)))], 1)


class ShuffleSENet(nn.Module):
    def __init__(self, num_classes=10, in_channels=1, width=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.Hardswish())
        self.dense = DenseLayer(width, 8)
        self.se = SqueezeExcite(width + 8)
        self.group = nn.Conv2d(width + 8, 24, 1, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(24)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x):
        x = self.se(self.dense(self.stem(x)))
        x = channel_shuffle(F.relu(self.bn(self.group(x))), 2)
        x = F.hardswish(self.dw(x)) + x
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.max_pool2d(x, 2), 1), 1))


def build(num_classes=10, in_channels=1, width=16):
    return ShuffleSENet(num_classes, in_channels, width)
'''


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """The user's file and a checkpoint trained by `quantbench train` (no change to quantbench)."""
    d = tmp_path_factory.mktemp("user")
    (d / "nets.py").write_text(USER_MODEL)
    source = f"{d / 'nets.py'}:build"
    assert main(["train", "--model", source, "--data", "digits", "--epochs", "12", "--store", str(d / "t.db"),
                 "--out", str(d / "train"), "--no-progress", "--json"]) == 0
    return source, d / "train" / "model_fp32.pt", d


def test_users_model_quantizes_deploys_and_splits(user_model, tmp_path, capsys):
    source, ckpt, _ = user_model
    capsys.readouterr()
    assert main(["quantize", "--model", source, "--checkpoint", str(ckpt), "--data", "digits", "--calib-size", "300",
                 "--method", "w8a8:mse", "--store", str(tmp_path / "q.db"), "--out", str(tmp_path / "q"),
                 "--no-progress", "--json"]) == 0
    rec = _last_json(capsys)
    assert rec["fp32"]["top1"] > 85.0, rec["fp32"]  # the model really trained
    assert rec["drop"]["top1_points"] <= 1.0, rec["drop"]
    qbm = rec["quant"]["artifact"]
    # deploy the same .qbm on real INT8 engines: the engine's accuracy is the simulated one
    from quantbench.data import open_dataset, subset
    from quantbench.engines.base import Deployable, evaluate_session, get_engine, load_session
    from quantbench.measure.accuracy import evaluate
    from quantbench.quant.save import load_quantized

    qm = load_quantized(qbm)  # rebuilt from the user's file, no zoo involved
    test = subset(open_dataset("digits"), 400, seed=3)
    simulated = evaluate(qm, test)
    for engine in ("onnxruntime", "openvino"):
        if not get_engine(engine).available()[0]:
            continue
        sess = load_session(engine, Deployable(qm, qm, (1, 8, 8), name="user"), "int8", threads=1)
        deployed = evaluate_session(sess, test)
        agree = float(np.mean(np.asarray(deployed.correct) == np.asarray(simulated.correct)))
        assert agree >= 0.99 and abs(deployed.top1 - simulated.top1) <= 0.75, (engine, deployed.top1, simulated.top1)
    # split: list the points, then cut at one of them
    assert main(["split", "--model", source, "--checkpoint", str(ckpt), "--data", "digits", "--list-splits",
                 "--no-store", "--json"]) == 0
    points = _last_json(capsys)["points"]
    assert len(points) >= 5 and {p["label"] for p in points} >= {"dense", "se"}
    dense = next(p["index"] for p in points if p["label"] == "dense")
    assert main(["split", "--model", source, "--checkpoint", str(ckpt), "--data", "digits", "--splits", str(dense),
                 "--qbins", "8", "--companding", "none", "--calib-size", "200", "--no-store", "--no-progress",
                 "--json"]) == 0
    (r,) = _last_json(capsys)["records"]
    assert r["block"] == "dense" and r["feature_shape"] == [24, 8, 8] and r["top1"] >= r["fp32_top1"] - 3.0


def test_users_model_runs_as_a_sweep_and_exports(user_model, tmp_path, capsys):
    source, ckpt, d = user_model
    rel = Path(source.split(":")[0]).relative_to(d)
    (d / "user_sweep.yaml").write_text(f"name: user\nkind: ptq\nmodel: {rel}:build\ncheckpoint: train/model_fp32.pt\n"
                                       f"data: digits\ncalib_size: 200\nout: {tmp_path / 'sweeps'}\n"
                                       "grid:\n  method: [w8a8:minmax, w4a8:mse]\n")
    sweep = d / "user_sweep.yaml"  # paths in it are relative to its folder
    assert main(["sweep", str(sweep), "--store", str(tmp_path / "s.db"), "--no-progress", "--json"]) == 0
    assert _last_json(capsys)["ran"] == 2
    assert main(["quantize", "--model", source, "--checkpoint", str(ckpt), "--data", "digits", "--calib-size", "200",
                 "--store", str(tmp_path / "q.db"), "--out", str(tmp_path / "q"), "--no-progress", "--json"]) == 0
    qbm = _last_json(capsys)["quant"]["artifact"]
    assert main(["export", qbm, "--formats", "onnx,openvino", "--out", str(tmp_path / "deploy"), "--data", "digits",
                 "--check-images", "64", "--json"]) == 0
    files = {f["format"]: f for f in _last_json(capsys)["files"]}
    assert set(files) == {"onnx", "openvino"}
    for f in files.values():
        assert Path(f["path"]).is_file() and f["top1_agreement"] >= 0.95 and f["images"] == 64


# ----------------------------------------------------------------------------- a third-party ONNX CNN


def _nonsquare_folder(root: Path) -> Path:
    """The digits as 12x16 (HxW) RGB PNGs in class folders: non-square images a user might have."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        arr = (img / 16.0 * 255).astype(np.uint8)
        Image.fromarray(arr).resize((16, 12), Image.Resampling.BILINEAR).convert("RGB").save(folder / f"{i:04d}.png")
    return root


def _tf_style_onnx(net: torch.nn.Module, path: Path) -> None:
    """Write ``net`` (conv-bn-relu6 x2, global pool, dense) as a TensorFlow-style ONNX graph by hand:
    NHWC input with a leading Transpose, fixed batch 1, BatchNormalization nodes, Clip(0, 6),
    asymmetric 'SAME' padding, a Reshape to a constant [1, C] and Gemm + Softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    conv1, bn1, conv2, bn2, fc = net[0], net[1], net[3], net[4], net[7]
    inits, nodes = [], []

    def init(name, t):
        inits.append(numpy_helper.from_array(t.detach().numpy().astype(np.float32), name))
        return name

    nodes.append(helper.make_node("Transpose", ["input_1"], ["t0"], perm=[0, 3, 1, 2], name="to_nchw"))
    prev = "t0"
    for i, (conv, bn, stride) in enumerate(((conv1, bn1, 1), (conv2, bn2, 2)), 1):
        pads = [0, 0, 1, 1] if stride == 2 else [1, 1, 1, 1]  # TF 'SAME' with stride 2: pad bottom/right only
        nodes.append(helper.make_node("Conv", [prev, init(f"w{i}", conv.weight)], [f"c{i}"], strides=[stride] * 2,
                                      pads=pads, kernel_shape=[3, 3], name=f"conv{i}"))
        nodes.append(helper.make_node("BatchNormalization", [f"c{i}", init(f"g{i}", bn.weight), init(f"b{i}", bn.bias),
                                      init(f"m{i}", bn.running_mean), init(f"v{i}", bn.running_var)], [f"n{i}"],
                                      epsilon=bn.eps, name=f"bn{i}"))
        nodes.append(helper.make_node("Clip", [f"n{i}", "zero", "six"], [f"r{i}"], name=f"relu6_{i}"))
        prev = f"r{i}"
    inits += [numpy_helper.from_array(np.array(0, np.float32), "zero"),
              numpy_helper.from_array(np.array(6, np.float32), "six"),
              numpy_helper.from_array(np.array([1, fc.in_features], np.int64), "flat_shape")]
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"], name="gap"),
              helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", init("fc_w", fc.weight), init("fc_b", fc.bias)], ["logits"],
                               transB=1, name="dense"),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax")]
    graph = helper.make_graph(nodes, "tf_style", [helper.make_tensor_value_info("input_1", TensorProto.FLOAT,
                                                                                [1, 12, 16, 3])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tf2onnx-like")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_third_party_onnx_nonsquare_mean_std_half(tmp_path, capsys):
    import onnxruntime as ort

    from quantbench.config import TrainConfig
    from quantbench.data import open_dataset
    from quantbench.train import fit

    folder = _nonsquare_folder(tmp_path / "imgs")
    spec, norm = f"imagefolder:{folder}", "0.5,0.5,0.5/0.5,0.5,0.5"
    ds = open_dataset(spec, normalize=norm)
    assert ds.input_shape == (3, 12, 16) and ds.normalization["mean"] == [0.5, 0.5, 0.5]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16),
                              torch.nn.ReLU6(), torch.nn.Conv2d(16, 32, 3, stride=2, bias=False),
                              torch.nn.BatchNorm2d(32), torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Linear(32, 10))
    # train the stand-in for "someone else's model": the same layers in a flattening wrapper
    train_net = torch.nn.Sequential(*net[:3], torch.nn.ZeroPad2d((0, 1, 0, 1)), *net[3:7], torch.nn.Flatten(), net[7])
    fit(train_net, ds, None, TrainConfig(epochs=12, lr=0.05))
    onnx_path = tmp_path / "third_party.onnx"
    _tf_style_onnx(net.eval(), onnx_path)
    # what onnxruntime gives on the images quantbench feeds (same decoding, same normalisation)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x, y = ds.tensors()
    nhwc = x.permute(0, 2, 3, 1).numpy()
    ort_pred = np.array([sess.run(None, {"input_1": nhwc[i:i + 1]})[0].argmax() for i in range(len(x))])
    ort_top1 = 100.0 * float((ort_pred == y.numpy()).mean())
    assert ort_top1 > 90.0  # a real classifier
    assert main(["eval", "--model", str(onnx_path), "--data", spec, "--normalize", norm, "--no-store",
                 "--no-progress", "--json"]) == 0
    rec = _last_json(capsys)
    assert rec["input_shape"] == [3, 12, 16] and rec["n_images"] == len(x)
    assert abs(rec["top1"] - ort_top1) <= 100.0 / len(x) + 1e-9, (rec["top1"], ort_top1)  # at most one image apart
    assert any("onnxruntime" in n for n in rec["notes"]) and any("NHWC" in n for n in rec["notes"])
    assert main(["quantize", "--model", str(onnx_path), "--data", spec, "--normalize", norm, "--calib-size", "300",
                 "--method", "w8a8:mse", "--store", str(tmp_path / "q.db"), "--no-progress", "--json"]) == 0
    q = _last_json(capsys)
    assert q["drop"]["top1_points"] <= 0.5, q["drop"]
    # the same file with images of another size is fed at the model's H x W (resized), not refused
    assert main(["eval", "--model", str(onnx_path), "--data", "digits", "--input-shape", "3x12x16", "--no-store",
                 "--no-progress", "--json"]) == 2
    assert "images have 1 channel(s); the model takes 3" in capsys.readouterr().err
