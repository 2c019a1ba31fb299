"""Every export format writes a file its own runtime loads and that reproduces the simulated model."""

from __future__ import annotations

import pytest
import torch

from quantbench.errors import QuantbenchError
from quantbench.exporting import EXPORT_FORMATS, available_formats, export_quantized, format_of


@pytest.fixture(scope="module")
def qmodel():
    import quantbench as qb

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    return qb.quantize(net, "w8a8:mse", torch.randn(64, 3, 12, 16))


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_each_format_matches_the_simulation(qmodel, fmt, tmp_path):
    if fmt not in available_formats():
        pytest.skip(f"{fmt}: its converter or runtime is not installed here")
    samples = torch.randn(16, 3, 12, 16, generator=torch.Generator().manual_seed(1))
    (f,) = export_quantized(qmodel, tmp_path, formats=(fmt,), input_shape=(3, 12, 16), name="m", samples=samples)
    assert f.format == fmt and f.images == 16 and f.bytes > 0
    with torch.no_grad():
        scale = float(qmodel(samples).abs().max())
    # integer engines round the int32 bias and requantize: a few quantization steps of the logits at most
    assert f.max_abs_diff <= 0.05 * scale, (fmt, f.max_abs_diff, scale)
    assert f.top1_agreement >= 0.9
    assert format_of(f.path) == fmt


def test_refusals():
    with pytest.raises(QuantbenchError, match="cannot tell the format"):
        format_of("m.bin")
    with pytest.raises(QuantbenchError, match="needs a quantized model"):
        export_quantized(torch.nn.Linear(2, 2), "/tmp", input_shape=(1, 1, 2))
