"""Real-data group: the pretrained CIFAR-10 ResNet20 on the JPEG CIFAR-10 dev images in ../shared."""

from __future__ import annotations

import json

import pytest

from quantbench.cli import main

pytestmark = pytest.mark.realdata


def test_eval_pretrained_resnet20_on_cifar_jpeg(shared_dir, capsys):
    argv = ["eval", "--model", "resnet20", "--checkpoint", str(shared_dir / "weights/resnet20-12fca82f.th"),
            "--data", f"imagefolder:{shared_dir / 'datasets/cifar10-jpeg/dev'}", "--normalize", "imagenet",
            "--json", "--no-store", "--no-progress"]
    assert main(argv) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["n_images"] == 5000
    # JPEG copies of the CIFAR-10 test images: about 81% (91.7% on the lossless originals).
    assert 79.5 <= rec["top1"] <= 82.5, rec["top1"]
    assert rec["top5"] > 97.0
    lo, hi = rec["ci"]["1"]
    assert lo < rec["top1"] < hi and hi - lo < 3.0


def test_w8a8_ptq_resnet20_drop_within_0_3_points(shared_dir, tmp_path, capsys):
    """Calibrate on 500 dev images, evaluate on the other 4,500: INT8 costs (almost) nothing."""
    argv = ["quantize", "--model", "resnet20", "--checkpoint", str(shared_dir / "weights/resnet20-12fca82f.th"),
            "--data", f"imagefolder:{shared_dir / 'datasets/cifar10-jpeg/dev'}", "--normalize", "imagenet",
            "--calib-size", "500", "--method", "w8a8:mse",
            "--store", str(tmp_path / "q.db"), "--out", str(tmp_path / "out"), "--no-progress", "--json"]
    assert main(argv) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["n_images"] == 4500 and rec["calib_images"] == 500
    assert rec["drop"]["top1_points"] <= 0.3, rec["drop"]
    assert rec["fp32"]["size_bytes"] / rec["quant"]["size_bytes"] > 3.5
