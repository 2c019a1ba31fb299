"""Progress on the long steps: on stderr when asked, silent when not, never in ``--json`` stdout.

Each long step (calibration, per-layer sensitivity, AdaRound, bias correction, export, the
``models`` listing) runs for real on a tiny model; the tests read what reached stderr/stdout.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from quantbench.quant.adaround import adaround
from quantbench.quant.bias_correction import bias_correction
from quantbench.quant.prepare import calibrate, count_images, prepare
from quantbench.quant.sensitivity import layer_sensitivity
from quantbench.quant.spec import parse_scheme


class Small(nn.Module):
    """conv-ReLU -> conv-ReLU -> linear on 1x6x6 images: three layers, a fraction of a second per step."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(x, 1))


def _images(n: int = 24) -> torch.Tensor:
    return torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(7))


def _rescued(progress: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Calibrate, AdaRound, bias-correct and rank the layers of a fresh W3A8 model; its weights and steps run."""
    torch.manual_seed(0)
    model = Small().eval()
    x = _images()
    qm = calibrate(prepare(model, parse_scheme("w3a8")), x, progress=progress)
    adaround(qm, model, x, n_images=24, iters=12, batch_size=8, seed=3, progress=progress)
    bias_correction(qm, model, x, n_images=24, progress=progress)
    sens = layer_sensitivity(qm, (x, torch.zeros(len(x), dtype=torch.long)), progress=progress)
    return {k: v.clone() for k, v in qm.state_dict().items()}, [s.layer for s in sens]


def test_long_steps_are_silent_without_progress_and_visible_with_it(capsys):
    quiet, layers = _rescued(progress=False)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    loud, layers_again = _rescued(progress=True)
    out, err = capsys.readouterr()
    assert out == ""  # progress never reaches stdout
    for needle in ("calibrate", "adaround layer 1/3 conv1", "adaround layer 3/3 fc", "iter", "bias correction",
                   "sensitivity"):
        assert needle in err, needle
    # same seed, same numbers: drawing a bar changes no result
    assert layers == layers_again and quiet.keys() == loud.keys()
    assert all(torch.equal(quiet[k], loud[k]) for k in quiet)


def test_count_images_knows_the_total_only_where_it_can():
    x = _images(10)
    assert count_images(x, None) == 10 and count_images(x, 4) == 4
    assert count_images((x, torch.zeros(10)), None) == 10
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=3)
    assert count_images(loader, None) == 10 and count_images(loader, 20) == 10
    assert count_images([(x[:5],), (x[5:],)], None) is None  # a plain list of batches: unknown until read


def test_export_progress_is_on_stderr_only(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from quantbench.exporting import export_quantized

    torch.manual_seed(0)
    qm = calibrate(prepare(Small().eval(), parse_scheme("w8a8")), _images())
    export_quantized(qm, tmp_path / "a", formats=("onnx",), input_shape=(1, 6, 6), progress=False)
    assert capsys.readouterr() == ("", "")
    (f,) = export_quantized(qm, tmp_path / "b", formats=("onnx",), input_shape=(1, 6, 6), progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "export" in err and f.top1_agreement == 1.0


@pytest.mark.parametrize("extra", [[], ["--no-progress"]])
def test_json_stdout_is_one_clean_line_whatever_the_progress(capsys, extra):
    from quantbench.cli import main

    assert main(["models", "lenet*", "--json", *extra]) == 0
    out, err = capsys.readouterr()
    (line,) = out.strip().splitlines()
    assert [r["name"] for r in json.loads(line)] == ["lenet"]
    assert ("counting parameters and MACs" in err) == (not extra)


def test_quantize_json_with_progress_on(tmp_path, capsys):
    from quantbench.cli import main

    syn = "synthetic:n=80,shape=1x8x8,classes=10,seed=0"
    assert main(["quantize", "--model", "lenet", "--data", syn, "--calib-size", "32", "--method", "w4a8:adaround",
                 "--adaround-iters", "5", "--sensitivity-images", "16", "--no-store", "--out",
                 str(tmp_path / "q"), "--json"]) == 0
    out, err = capsys.readouterr()
    (line,) = out.strip().splitlines()
    assert json.loads(line)["method"].startswith("w4a8")
    for needle in ("calibrate", "adaround layer 1/", "sensitivity"):
        assert needle in err, needle


def test_bundle_progress_is_on_stderr_only(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from quantbench.bundle import build_bundle

    kw = {"variants": ("fp32", "int8"), "calib": "random", "calib_size": 8, "n_samples": 2, "make_zip": False,
          "formats": ("onnx",)}
    build_bundle("lenet", out_dir=tmp_path / "a", progress=False, **kw)
    assert capsys.readouterr() == ("", "")
    build_bundle("lenet", out_dir=tmp_path / "b", progress=True, **kw)
    out, err = capsys.readouterr()
    assert out == "" and "bundle" in err and "calibrate" in err
