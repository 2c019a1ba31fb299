"""Parameter counts (quantbench.measure.params) and bytes on disk (quantbench.measure.size)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.measure import count_parameters, file_size, format_bytes, save_fp32

# ----------------------------------------------------------------------------- params


def test_counts_plain_model() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 2))
    # conv 8*3*3*3 + 8, BN 8 + 8 (running stats are buffers), linear 16 + 2
    assert count_parameters(model) == 224 + 16 + 18


def test_shared_weights_count_once() -> None:
    lin = nn.Linear(4, 3)
    assert count_parameters(nn.Sequential(lin, nn.ReLU(), lin)) == 15

    a, b = nn.Linear(5, 5, bias=False), nn.Linear(5, 5, bias=False)
    b.weight = nn.Parameter(a.weight.data)  # distinct Parameter objects, same memory
    assert count_parameters(nn.ModuleList([a, b])) == 25


def test_trainable_only() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model[0].requires_grad_(False)
    assert count_parameters(model) == 15 + 8
    assert count_parameters(model, trainable_only=True) == 8


def _vgg16_features(batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    cin = 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers.append(nn.Conv2d(cin, int(v), 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU())
        cin = int(v)
    return layers


def test_vgg16_facts_from_design_on_meta_device() -> None:
    # DESIGN.md 4: ImageNet VGG16 (no BN, 25088->4096->4096) with a 10-class head has 134,301,514
    # parameters; a CIFAR VGG16-BN with a 512->4096->4096->10 head has 33,646,666.
    with torch.device("meta"):
        imagenet = nn.Sequential(*_vgg16_features(False), nn.Flatten(), nn.Linear(25088, 4096),
                                 nn.Linear(4096, 4096), nn.Linear(4096, 10))
        cifar = nn.Sequential(*_vgg16_features(True), nn.Flatten(), nn.Linear(512, 4096),
                              nn.Linear(4096, 4096), nn.Linear(4096, 10))
    assert count_parameters(imagenet) == 134_301_514
    assert count_parameters(cifar) == 33_646_666


def test_lazy_parameters_are_a_user_error() -> None:
    with pytest.raises(QuantbenchError, match="forward pass"):
        count_parameters(nn.LazyLinear(3))


# ----------------------------------------------------------------------------- size


def test_file_size_of_file_and_directory(tmp_path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.bin").write_bytes(b"y" * 23)
    (sub / "link").symlink_to(tmp_path / "a.bin")  # not followed: counted once via a.bin
    assert file_size(tmp_path / "a.bin") == 100
    assert file_size(tmp_path) == 123
    with pytest.raises(QuantbenchError, match="does not exist"):
        file_size(tmp_path / "missing.pt")


def test_save_fp32_returns_real_file_size(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(100, 50), nn.BatchNorm1d(50))
    path = tmp_path / "deep" / "model_fp32.pt"
    n = save_fp32(model, path)
    assert n == path.stat().st_size
    raw = 4 * (100 * 50 + 50 + 4 * 50) + 8  # weights, biases, BN affine + stats (fp32), counter (int64)
    assert raw < n < raw + 4000  # plus torch's zip container
    loaded = torch.load(path, weights_only=True)
    assert set(loaded) == set(model.state_dict())


def test_save_fp32_stores_float32(tmp_path) -> None:
    model = nn.Linear(64, 64).half()
    n = save_fp32(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=True)
    assert loaded["weight"].dtype == torch.float32
    assert n > 4 * 64 * 64
    assert model.weight.dtype == torch.float16  # the model itself is untouched


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.00 kB"),
        (1_070_000, "1.07 MB"),
        (999_600, "1.00 MB"),
        (12_345_678, "12.3 MB"),
        (537_206_056, "537 MB"),
        (2_500_000_000, "2.50 GB"),
        (-2500, "-2.50 kB"),
    ],
)
def test_format_bytes_decimal_units(n: int, text: str) -> None:
    assert format_bytes(n) == text
