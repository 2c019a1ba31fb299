"""The model zoo: factories registered by name (the timm habit), torchvision/akamaster keys.

Importing this package registers every model. Build by name, describe without building,
and load published checkpoints safely:

Example:
    >>> from quantbench.models import MODELS, build_model, load_checkpoint, model_info
    >>> "resnet20" in MODELS
    True
    >>> model = build_model("resnet20")
    >>> model_info("resnet20")["family"]
    'cifar-resnet'
"""

from __future__ import annotations

# Family modules register their factories on import.
from quantbench.models import cifar_resnet, lenet, mobilenet, phinet, resnet, vgg  # noqa: F401
from quantbench.models.checkpoint import load_checkpoint
from quantbench.models.zoo import MODELS, build_model, model_info

__all__ = ["MODELS", "build_model", "load_checkpoint", "model_info"]
