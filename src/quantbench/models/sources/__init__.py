"""Model sources: the ONE resolver behind ``--model`` on every verb, sweep cells and the Python API.

A source string says where a model comes from:

=============================  ==============================================================
``resnet20``                   a zoo name (``quantbench models``)
``path/to/net.py:build``       a factory (function or class) in the user's own Python file
``package.module:build``       a factory in an importable module
``model.onnx``                 an ONNX file, converted to a torch graph (checked against onnxruntime)
``model.pt2``                  a ``torch.export`` program, loaded without unpickling
``torchvision:resnet18``       torchvision's model builders (random weights; lazily imported)
``timm:resnet18``              timm's models (random weights; lazily imported)
=============================  ==============================================================

Factories get ``num_classes`` / ``in_channels`` (when their signature takes them) from the data,
plus the ``hyper`` keyword arguments (``--hyper k=v,...``). A ``.py`` factory is the user's own
code and runs as such: load only files you trust. Checkpoints are always read with
``torch.load(weights_only=True)``.

Example:
    >>> loaded = resolve_model("lenet", num_classes=10, in_channels=1)
    >>> loaded.kind, loaded.label
    ('zoo', 'lenet')
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from quantbench.errors import QuantbenchError

__all__ = ["SOURCE_FORMS", "LoadedModel", "default_input_shape", "resolve_model", "source_kind"]

SOURCE_FORMS = ("zoo name, FILE.py:FACTORY, package.module:FACTORY, FILE.onnx, FILE.pt2, torchvision:NAME, "
                "timm:NAME")
"""What ``--model`` accepts, for help texts and error messages."""


@dataclass
class LoadedModel:
    """A resolved model and what its source fixes.

    Attributes:
        module: The float ``nn.Module`` in eval mode, checkpoint loaded.
        source: The source string as given (what results and ``.qbm`` files record).
        kind: ``zoo``, ``python``, ``onnx``, ``pt2``, ``torchvision`` or ``timm``.
        input_shape: (C, H, W) the source fixes (an ONNX/pt2 file, ``--input-shape``, a module's
            ``input_shape`` attribute, a zoo default), or None when any size works and none is known.
        num_classes: Outputs of a model whose classes the source fixes (ONNX/pt2); None when built
            for the data.
        fixed_shape: True when the model cannot take another input size (ONNX/pt2 graphs).
        hyper: The keyword arguments the factory got (besides classes/channels).
        notes: What the import checked or changed, one sentence each.
    """

    module: nn.Module
    source: str
    kind: str
    input_shape: tuple[int, int, int] | None = None
    num_classes: int | None = None
    fixed_shape: bool = False
    hyper: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """How results name the model: the source as given."""
        return self.source


def source_kind(source: str) -> str:
    """Which form ``source`` has (see the module docstring); no file is opened.

    Example:
        >>> source_kind("nets/my.py:build"), source_kind("m.onnx"), source_kind("resnet20")
        ('python', 'onnx', 'zoo')
    """
    if not isinstance(source, str) or not source.strip():
        raise QuantbenchError(f"--model: empty model source; expected one of: {SOURCE_FORMS}")
    s = source.strip()
    low = s.lower()
    for prefix in ("torchvision:", "timm:"):
        if low.startswith(prefix):
            return prefix[:-1]
    if low.endswith(".onnx"):
        return "onnx"
    if low.endswith(".pt2"):
        return "pt2"
    if ":" in s:
        return "python"
    return "zoo"


def resolve_model(source: str, *, hyper: dict[str, Any] | None = None, checkpoint: str | None = None,
                  num_classes: int | None = None, in_channels: int | None = None,
                  input_shape: tuple[int, int, int] | None = None, check: bool = True) -> LoadedModel:
    """Build or load the model ``source`` names (see the module docstring).

    Args:
        hyper: Keyword arguments for a zoo/Python/torchvision/timm factory.
        checkpoint: Weights to load afterwards (``weights_only``).
        num_classes / in_channels: What the data needs (ignored by sources that fix them; a
            mismatch is reported by the caller, which knows the data).
        input_shape: (C, H, W) the user asked for (required for ONNX/pt2 files of variable size).
        check: For ONNX files, compare with onnxruntime on the original file.

    Raises:
        QuantbenchError: one line naming the source and what was expected - unknown zoo name, a
            missing file or factory, a factory that raised, an unsupported ONNX operator, ...
    """
    kind = source_kind(source)
    hyper = dict(hyper or {})
    loader = _LOADERS[kind]
    loaded = loader(source.strip(), hyper, num_classes, in_channels, input_shape, check)
    if checkpoint:
        from quantbench.models.checkpoint import load_checkpoint

        load_checkpoint(loaded.module, checkpoint)
    loaded.module.eval()
    if input_shape is not None:
        loaded.input_shape = tuple(input_shape)  # type: ignore[assignment]
    return loaded


def default_input_shape(loaded: LoadedModel, what: str = "this verb") -> tuple[int, int, int]:
    """The input shape to use without data: the source's own, or a one-line error asking for ``--input-shape``."""
    if loaded.input_shape is None:
        raise QuantbenchError(f"model {loaded.source}: its input size is not known; pass --input-shape CxHxW "
                              f"(needed by {what})")
    return loaded.input_shape


# ----------------------------------------------------------------------------- loaders


def _zoo(source: str, hyper: dict[str, Any], num_classes: int | None, in_channels: int | None,
         input_shape: tuple[int, int, int] | None, check: bool) -> LoadedModel:
    from quantbench.models import MODELS, build_model, model_info

    if source not in MODELS:
        known = ", ".join(MODELS.names())
        raise QuantbenchError(f"--model {source!r}: not a zoo model ({known}) nor another model source "
                              f"({SOURCE_FORMS})")
    module = build_model(source, num_classes=num_classes, in_channels=in_channels, **hyper)
    c, h, w = model_info(source)["input_shape"]
    return LoadedModel(module, source, "zoo", (in_channels or c, h, w), None, False, hyper)


def _module_from_file(path: Path) -> Any:
    """Import a user's ``.py`` file under a private name (its folder importable while it loads)."""
    if not path.is_file():
        raise QuantbenchError(f"{path}: model file not found")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"quantbench_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise QuantbenchError(f"{path}: cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: any error becomes one line naming the file
        sys.modules.pop(name, None)
        raise QuantbenchError(f"{path}: importing it raised {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _factory_kwargs(fn: Any, where: str, hyper: dict[str, Any], num_classes: int | None,
                    in_channels: int | None) -> dict[str, Any]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {**hyper}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = [n for n, p in params.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                         inspect.Parameter.KEYWORD_ONLY)]
    unknown = [k for k in hyper if k not in names and not var_kw]
    if unknown:
        raise QuantbenchError(f"{where}: unknown hyper-parameter {unknown[0]!r}; the factory takes: "
                              f"{', '.join(names) or 'no arguments'}")
    kwargs = dict(hyper)
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value is not None and key not in kwargs and (key in names or var_kw):
            kwargs[key] = value
    return kwargs


def _python(source: str, hyper: dict[str, Any], num_classes: int | None, in_channels: int | None,
            input_shape: tuple[int, int, int] | None, check: bool) -> LoadedModel:
    target, _, factory = source.rpartition(":")
    if not factory or not target:
        raise QuantbenchError(f"--model {source!r}: expected FILE.py:FACTORY or package.module:FACTORY")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _module_from_file(Path(target).expanduser())
        where = f"{target}:{factory}"
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:  # ImportError or the module's own error
            raise QuantbenchError(f"--model {source!r}: cannot import {target!r} ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
        where = source
    fn = getattr(module, factory, None)
    if fn is None or not callable(fn):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        raise QuantbenchError(f"{where}: no factory {factory!r} in {target}; it defines: "
                              f"{', '.join(defined) or 'no public callables'}")
    kwargs = _factory_kwargs(fn, where, hyper, num_classes, in_channels)
    try:
        model = fn(**kwargs)
    except Exception as exc:  # the user's factory: its error, on one line
        raise QuantbenchError(f"{where}: the factory raised {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    if not isinstance(model, nn.Module):
        raise QuantbenchError(f"{where}: the factory returned {type(model).__name__}, not a torch nn.Module")
    shape = getattr(model, "input_shape", None)
    shape = tuple(shape) if isinstance(shape, (tuple, list)) and len(shape) == 3 else None
    return LoadedModel(model, source, "python", shape, None, False, hyper,
                       [f"built by {where} (the user's own code)"])


def _graph_file(kind: str) -> Any:
    def load(source: str, hyper: dict[str, Any], num_classes: int | None, in_channels: int | None,
             input_shape: tuple[int, int, int] | None, check: bool) -> LoadedModel:
        if hyper:
            raise QuantbenchError(f"{source}: a {kind} file takes no hyper-parameters (got {', '.join(hyper)})")
        path = Path(source).expanduser()
        if kind == "onnx":
            from quantbench.models.sources.onnx_import import check_with_onnxruntime, import_onnx

            imported = import_onnx(path, input_shape=input_shape)
            if check:
                diff = check_with_onnxruntime(path, imported)
                imported.notes.insert(0, "checked against onnxruntime on the original file: "
                                      + ("onnxruntime not installed, not compared" if diff is None else
                                         f"max |logit difference| {diff:.2g} on random images"))
        else:
            from quantbench.models.sources.pt2_import import import_pt2

            imported = import_pt2(path, input_shape=input_shape)
        return LoadedModel(imported.module, source, kind, imported.input_shape, imported.num_classes, True, {},
                           imported.notes)

    return load


def _hub(kind: str) -> Any:
    def load(source: str, hyper: dict[str, Any], num_classes: int | None, in_channels: int | None,
             input_shape: tuple[int, int, int] | None, check: bool) -> LoadedModel:
        name = source.split(":", 1)[1].strip()
        try:
            lib = importlib.import_module(kind)
        except Exception as exc:  # ImportError, or a binary mismatch with the installed torch
            raise QuantbenchError(f"--model {source}: needs the {kind} package, which does not import here "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
                                  ) from None
        kwargs = dict(hyper)
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        try:
            if kind == "torchvision":
                model = lib.models.get_model(name, weights=None, **kwargs)
            else:
                if in_channels is not None:
                    kwargs.setdefault("in_chans", in_channels)
                model = lib.create_model(name, pretrained=False, **kwargs)
        except Exception as exc:  # unknown name or bad argument, in the library's words
            raise QuantbenchError(f"--model {source}: {kind} cannot build it ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
        return LoadedModel(model, source, kind, (in_channels or 3, 224, 224), None, False, hyper,
                           [f"{kind} {name} with random weights (load trained ones with --checkpoint)"])

    return load


_LOADERS = {"zoo": _zoo, "python": _python, "onnx": _graph_file("onnx"), "pt2": _graph_file("pt2"),
            "torchvision": _hub("torchvision"), "timm": _hub("timm")}
