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
