"""Parameter and MAC counts of zoo models at their default input, without allocating weights.

Models are built on PyTorch's ``meta`` device so listing the zoo (VGG16 has 138 M parameters)
costs no memory and little time.
"""

from __future__ import annotations

import torch

from quantbench.measure.macs import count_macs
from quantbench.measure.params import count_parameters


def model_summary(name: str, num_classes: int | None = None) -> dict[str, int]:
    """``{"params": ..., "macs": ..., "flops": ...}`` of zoo model ``name`` at batch 1 (``num_classes`` outputs)."""
    from quantbench.models import build_model, model_info

    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes)
    model.eval()
    macs = count_macs(model, tuple(model_info(name)["input_shape"]), batch_size=1)
    return {"params": count_parameters(model), "macs": macs.per_image_macs, "flops": macs.flops}
