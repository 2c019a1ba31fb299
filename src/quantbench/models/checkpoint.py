"""Load a weights checkpoint into a model — safely, and with errors a user can act on.

Checkpoints are opened with ``torch.load(..., weights_only=True)`` only: a file that needs
arbitrary unpickling (it stores Python objects besides tensors) is refused rather than
executed, because a checkpoint downloaded from the internet is untrusted code otherwise.
Common wrappers (``{'state_dict': ...}``, ``{'model': ...}``, ``{'model_state_dict': ...}``)
and prefixes (``module.`` from DataParallel, ``_orig_mod.`` from ``torch.compile``) are
unwrapped so published checkpoints load as they are.

Example:
    >>> model = load_checkpoint(build_model("resnet20"), "resnet20-12fca82f.th")
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbench.errors import QuantbenchError

__all__ = ["extract_state_dict", "load_checkpoint", "read_checkpoint"]

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
STRIP_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5  # keys listed per kind in a mismatch message


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load`` a file with ``weights_only=True``, mapping every failure to one clear line.

    Args:
        path: The checkpoint file.

    Returns:
        Whatever the file holds (tensors, dicts, lists and primitive values only).

    Raises:
        QuantbenchError: The file is missing, is not a weights-only checkpoint (it holds
            pickled Python objects) or is corrupt/truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise QuantbenchError(f"checkpoint {path}: file not found")
    try:
        # Zip-format files (torch >= 1.6) are memory-mapped: a 500 MB VGG checkpoint then
        # costs no second copy in RAM. Legacy-format files (like akamaster's) cannot be.
        with warnings.catch_warnings():
            # Plain pickle files trigger a protocol warning just before being refused below.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        found = re.search(r"GLOBAL (\S+)", msg)
        if found or "global" in msg.lower() or _looks_like_pickle(path):
            what = f" (it pickles {found.group(1)})" if found else ""
            raise QuantbenchError(
                f"checkpoint {path}: not a weights-only checkpoint{what}; refusing to unpickle "
                "arbitrary Python objects - re-save it with torch.save(model.state_dict(), path)"
            ) from None
        raise QuantbenchError(f"checkpoint {path}: corrupt or not a PyTorch checkpoint") from None
    except (RuntimeError, EOFError, ValueError, KeyError, OSError, IndexError, TypeError) as exc:
        reason = str(exc).split("\n", 1)[0][:120] or type(exc).__name__
        raise QuantbenchError(
            f"checkpoint {path}: corrupt, truncated or not a PyTorch checkpoint ({reason})"
        ) from None


def _looks_like_pickle(path: Path) -> bool:
    """A plain ``pickle.dump`` file starts with the PROTO opcode; random bytes rarely do."""
    with path.open("rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap a loaded checkpoint to a plain ``{key: tensor}`` dict with prefixes stripped.

    Args:
        obj: What :func:`read_checkpoint` returned.
        source: Name used in error messages (usually the file path).

    Returns:
        The state dict, keys without ``module.``/``_orig_mod.`` prefixes.

    Raises:
        QuantbenchError: No state dict found in ``obj``.
    """
    if not _is_state_dict(obj) and isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        if isinstance(obj, Mapping):
            found = f"a dict with keys {sorted(map(str, obj))[:8]}"
        else:
            found = type(obj).__name__
        raise QuantbenchError(
            f"{source}: expected a state dict of tensors (or one under {', '.join(WRAPPER_KEYS)}); found {found}"
        )
    sd = {str(k): v for k, v in obj.items()}
    stripped = True
    while stripped:
        stripped = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                stripped = True
    return sd


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    more = f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{len(keys)} [{shown}{more}]"


def load_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (in place) and return it.

    Missing ``num_batches_tracked`` buffers are tolerated (old checkpoints lack them; they
    do not affect inference).

    Args:
        model: The freshly built model to fill (e.g. from ``build_model``).
        path: A ``torch.save`` file holding a state dict, possibly wrapped/prefixed.
        strict: If true, missing or unexpected keys are an error; shape mismatches
            are always an error.

    Returns:
        ``model``, with the checkpoint's weights.

    Raises:
        QuantbenchError: Missing, unsafe or corrupt file; no state dict inside; key or
            shape mismatch (the message names the keys and shapes); NaN/Inf weights.

    Example:
        >>> net = load_checkpoint(build_model("resnet20"), "weights/resnet20-12fca82f.th")
    """
    path = Path(path)
    sd = extract_state_dict(read_checkpoint(path), source=f"checkpoint {path}")
    own = model.state_dict()

    missing = [k for k in own if k not in sd]
    for k in missing:
        if k.endswith("num_batches_tracked"):
            sd[k] = own[k]
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if strict and (missing or unexpected):
        raise QuantbenchError(
            f"checkpoint {path}: keys do not match the model ({type(model).__name__}); "
            f"missing {_listing(missing)}; unexpected {_listing(unexpected)}"
        )

    bad = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        more = f" (and {len(bad) - 1} more keys)" if len(bad) > 1 else ""
        raise QuantbenchError(
            f"checkpoint {path}: shape mismatch for {k!r}: checkpoint {tuple(sd[k].shape)} "
            f"vs model {tuple(own[k].shape)}{more}"
        )

    nonfinite = [k for k, v in sd.items() if k in own and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise QuantbenchError(f"checkpoint {path}: tensor {nonfinite[0]!r} holds NaN or Inf values"
                              + (f" (and {len(nonfinite) - 1} more)" if len(nonfinite) > 1 else "")
                              + "; a model with them computes nothing meaningful")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=strict)
    return model
