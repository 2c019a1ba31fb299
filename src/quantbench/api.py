"""The Python API: the same capabilities as the command line, on objects you already hold.

``import quantbench as qb`` is cheap: it imports nothing heavy until a function is called, and
engines (ONNX Runtime, OpenVINO, LiteRT) are imported only when used. Models are any source the
CLI takes (``qb.load_model("resnet20")``, ``"net.py:build"``, ``"model.onnx"``, ``"model.pt2"``) or
an ``nn.Module`` you built; data is a spec string (``"digits"``, ``"imagefolder:DIR"``), a tensor
of images, an ``(images, labels)`` pair or a ``DataLoader``.

Quantize an inline model and deploy it with ONNX Runtime, in a few lines:

    >>> import torch, quantbench as qb
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
    ...                           torch.nn.Linear(8 * 6 * 6, 10))
    >>> images = torch.randn(64, 1, 8, 8)
    >>> qm = qb.quantize(net, "w8a8", images)
    >>> import tempfile; folder = tempfile.mkdtemp()
    >>> [f.format for f in qb.export(qm, folder + "/net.onnx")]
    ['onnx']

Running a whole stored experiment (the verbs' layer) is ``qb.run(kind, **config)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantbench.errors import QuantbenchError

if TYPE_CHECKING:
    from torch import nn

    from quantbench.experiments.bench import BenchResult
    from quantbench.experiments.layer import RunOutcome
    from quantbench.exporting import ExportedFile
    from quantbench.measure.accuracy import EvalResult
    from quantbench.quant.lint import Finding
    from quantbench.quant.prepare import QuantizedModel

__all__ = ["MixedPrecision", "bench", "compare", "debug", "evaluate", "export", "lint", "load_model", "quantize",
           "recommend", "run", "split"]


@dataclasses.dataclass(frozen=True)
class MixedPrecision:
    """A mixed-precision method for :func:`quantize`: per-layer weight bits under a budget.

    Attributes:
        budget_kb: Size of the saved ``.qbm`` file (1 KB = 1000 bytes), or
        avg_bits: the parameter-weighted average weight bits.
        bits: Candidate weight bit-widths.
        act_bits: Activation bits.
        algo: The PTQ algorithm (``mse``, ``adaround`` ...).
        metric: Layer sensitivity: ``mse`` (logits) or ``hessian`` (HAWQ trace estimate).

    Example:
        >>> MixedPrecision(avg_bits=4).bits
        (2, 3, 4, 5, 6, 8)
    """

    budget_kb: float | None = None
    avg_bits: float | None = None
    bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    act_bits: int = 8
    algo: str = "mse"
    metric: str = "mse"


def load_model(source: str, *, checkpoint: str | None = None, input_shape: tuple[int, int, int] | None = None,
               num_classes: int | None = None, in_channels: int | None = None, **hyper: Any) -> nn.Module:
    """Build or load a model from any source ``--model`` takes, in eval mode.

    Args:
        source: A zoo name, ``FILE.py:FACTORY``, ``package.module:FACTORY``, ``FILE.onnx``, ``FILE.pt2``,
            ``torchvision:NAME`` or ``timm:NAME``.
        checkpoint: Weights to load (``torch.load(weights_only=True)``).
        input_shape: (C, H, W), needed by ONNX/pt2 files of variable size.
        **hyper: The factory's keyword arguments.

    Example:
        >>> import quantbench as qb
        >>> model = qb.load_model("resnet20", num_classes=10)
        >>> sum(p.numel() for p in model.parameters())
        269722
    """
    from quantbench.models.sources import resolve_model

    return resolve_model(source, hyper=hyper, checkpoint=checkpoint, input_shape=input_shape,
                         num_classes=num_classes, in_channels=in_channels).module


def _images(data: Any, n: int | None = None, seed: int = 0) -> Any:
    from quantbench.data import subset
    from quantbench.data.memory import as_dataset

    ds = as_dataset(data)
    return subset(ds, n, seed=seed) if n is not None and n < len(ds) else ds


def quantize(model: nn.Module, method: Any = "w8a8", calib_data: Any = None, *, calib_size: int = 512,
             train_data: Any = None, **options: Any) -> QuantizedModel:
    """Quantize ``model``; returns the simulated quantized model (it runs like any ``nn.Module``).

    Its ``notes`` say what quantizing chose on this model and why: below 8-bit activations, e.g. ``"joins"``,
    whether the inputs of residual adds, concatenations and pooling took 8 bits or the activations' bits.

    Args:
        model: A float ``nn.Module`` (not modified).
        method: ``"SCHEME[:ALGO]"`` (``"w8a8"``, ``"w4a8:adaround"``, ``"dynamic"``), or a config object:
            :class:`~quantbench.quant.ptq.PTQConfig`, :class:`~quantbench.quant.qat.QATConfig` (then
            ``train_data`` - default ``calib_data`` - is fine-tuned on), or :class:`MixedPrecision`.
        calib_data: Calibration images (spec, tensor, pair or DataLoader); ``calib_size`` of them are used.
        **options: PTQConfig fields for a string method (``per_channel=False``, ``first_last="int8"``...);
            ``weight_range`` is ``"auto"`` by default, as on the command line (7-bit codes for 8-bit
            weights where this CPU's int8 kernels saturate), or ``"full"``/``"reduced"``.

    Example:
        >>> import torch, quantbench as qb
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
        >>> qm = qb.quantize(net, "w4a8:minmax", torch.randn(32, 1, 8, 8))
        >>> qm.plan.scheme, tuple(qm(torch.zeros(2, 1, 8, 8)).shape)
        ('w4a8', (2, 3))
    """
    from quantbench.quant.ptq import PTQConfig, parse_method, quantize_ptq, resolve_weight_range
    from quantbench.quant.qat import QATConfig

    calib = _images(calib_data, calib_size) if calib_data is not None else None
    if isinstance(method, str):
        choice = options.pop("weight_range", "auto")
        method = resolve_weight_range(parse_method(method, calib_size=calib_size, **options), choice)[0]
    elif options:
        raise QuantbenchError(f"quantize: options {', '.join(options)} apply to a method string only")
    if isinstance(method, PTQConfig):
        qm = quantize_ptq(model, method, calib)
    elif isinstance(method, QATConfig):
        from quantbench.quant.qat import quantize_qat

        train = _images(train_data) if train_data is not None else calib
        if calib is None or train is None:
            raise QuantbenchError("quantize: QAT needs calib_data (and train_data to fine-tune on)")
        qm, _history, _start = quantize_qat(model, method, calib, train, None)
    elif isinstance(method, MixedPrecision):
        from quantbench.experiments.qat import search_mixed

        if calib is None:
            raise QuantbenchError("quantize: mixed precision needs calib_data")
        cfg = PTQConfig(scheme=f"w8a{method.act_bits}", algo=method.algo, calib_size=len(calib))
        budget = ({"budget_bytes": int(method.budget_kb * 1000)} if method.budget_kb is not None
                  else {"average_bits": method.avg_bits})
        if (method.budget_kb is None) == (method.avg_bits is None):
            raise QuantbenchError("quantize: MixedPrecision needs exactly one of budget_kb and avg_bits")
        search = search_mixed(model, calib, bits=method.bits, act_bits=method.act_bits, metric=method.metric,
                              observer=cfg.algorithm().weight_observer, n_images=min(len(calib), 512),
                              input_shape=tuple(calib.input_shape), **budget)
        from quantbench.quant.save import round_for_file

        qm = round_for_file(quantize_ptq(model, cfg, calib, plan=search.plan))  # the lean file's values
    else:
        raise QuantbenchError(f"quantize: method must be a string, PTQConfig, QATConfig or MixedPrecision, got "
                              f"{type(method).__name__}")
    if calib is not None:
        qm.input_shape = tuple(calib.input_shape)
    return qm


def evaluate(model: nn.Module, data: Any, *, topk: int = 5, batch_size: int = 256) -> EvalResult:
    """Top-1/top-k accuracy (with 95% Wilson intervals) and loss of ``model`` on ``data``.

    Example:
        >>> import torch, quantbench as qb
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> qb.evaluate(net, "digits").n_images
        1797
    """
    from quantbench.measure.accuracy import evaluate as _evaluate

    return _evaluate(model, _images(data), topk=(1, topk), batch_size=batch_size)


def bench(model: nn.Module, *, engines: Sequence[str] = ("all",), variants: Sequence[str] = (),
          batch_sizes: Sequence[int] = (1, 8, 32), input_shape: tuple[int, int, int] | None = None,
          float_model: nn.Module | None = None, threads: int | None = None, min_time_s: float = 1.0,
          peaks: bool = True) -> BenchResult:
    """Latency and throughput of ``model`` on real engines (every engine x variant x batch size).

    A :class:`~quantbench.quant.prepare.QuantizedModel` is deployed as it is (``int8`` with its own
    scales, never re-quantized); its float reference is ``float_model`` or, without one, the same
    graph with its quantizers switched off.

    Example:
        >>> import torch, quantbench as qb
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> r = qb.bench(net, engines=["torch"], batch_sizes=[1], input_shape=(1, 8, 8), min_time_s=0.01,
        ...              peaks=False)
        >>> [(x["engine"], x["variant"], x["batch"]) for x in r.records][:1]
        [('torch', 'fp32', 1)]
    """
    import copy

    from quantbench.experiments.bench import BenchSpec, run_bench
    from quantbench.quant.prepare import QuantizedModel

    quantized = None
    if isinstance(model, QuantizedModel):
        quantized = model
        if float_model is None:
            float_model = copy.deepcopy(model)
            float_model.set_mode("off")
        input_shape = input_shape or getattr(model, "input_shape", None)
        model = float_model
    spec = BenchSpec(model=type(model).__name__, engines=tuple(engines), variants=tuple(variants),
                     batch_sizes=tuple(batch_sizes), input_shape=tuple(input_shape) if input_shape else None,
                     threads=threads, min_time_s=min_time_s, isolate=False)
    return run_bench(spec, model=model, quantized=quantized, log=lambda m: None, peaks=peaks)


def split(model: nn.Module, data: Any, *, list_only: bool = False, **config: Any) -> dict[str, Any]:
    """Split computing on ``model`` (any traceable model): points, accuracy, coded bytes, latency estimate.

    ``config`` takes the ``split`` verb's keys (``splits=(1, 3)``, ``qbins=(4, 8)``, ``companding=("none",)``,
    ``calib_size=``...). Returns the experiment's record (``records``, ``points``).

    Example:
        >>> import torch, quantbench as qb
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        ...                           torch.nn.Linear(4 * 8 * 8, 10))
        >>> [p["label"] for p in qb.split(net, "digits", list_only=True)["points"]]
        ['0', '1', '2']
    """
    from quantbench.experiments.layer import config_for, run_experiment

    cfg = config_for("split", {"model": type(model).__name__, "no_store": True, "list_splits": list_only, **config})
    return run_experiment(cfg, progress=False, log=lambda m: None, model=model, data=data).record


def lint(model: nn.Module, input_shape: tuple[int, int, int] | None = None) -> list[Finding]:
    """The layers of ``model`` that keep integer kernels slow or in float, each with its fix.

    Example:
        >>> import torch, quantbench as qb
        >>> qb.lint(torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU()), (3, 8, 8))
        []
    """
    from quantbench.quant.lint import lint_model

    return lint_model(model, input_shape)


def debug(model: nn.Module, data: Any, method: str = "w8a8:mse", *, quantized: QuantizedModel | str | None = None,
          calib_size: int = 512, debug_images: int = 256, **config: Any) -> dict[str, Any]:
    """Which layer loses the accuracy: float vs quantized layer by layer on the same images, ranked.

    Runs the ``debug`` verb's experiment (nothing stored): ``model`` is quantized with ``method`` on
    calibration images split from ``data`` (or ``quantized`` - an in-memory model or a ``.qbm`` path - is
    checked against ``model`` and debugged), then compared on ``debug_images`` other images of ``data``.
    ``config`` takes the verb's other keys (``pretrain_epochs=``, ``first_last=``...).

    Returns:
        The record: ``fp32_top1``/``quant_top1`` on the debug images, ``worst`` and ``layers`` (worst first),
        each with ``recovery_points`` (top-1 gained by leaving that layer in float), ``isolated`` and
        ``cumulative`` errors (``sqnr_db`` - None when identical -, ``cosine``, ``max_abs_err``), clipping
        fractions and the lint findings about the layer.

    Example:
        >>> import torch, quantbench as qb
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        ...                           torch.nn.Linear(8 * 8 * 8, 10))
        >>> rec = qb.debug(net, "digits", "w4a4:minmax", calib_size=64, debug_images=32)
        >>> rec["n_images"], sorted(x["layer"] for x in rec["layers"]), rec["worst"] == rec["layers"][0]["layer"]
        (32, ['0', '3'], True)
    """
    from quantbench.experiments.layer import config_for, run_experiment

    values = {"model": type(model).__name__, "no_store": True, "method": method, "calib_size": calib_size,
              "debug_images": debug_images, **config}
    if isinstance(quantized, (str, Path)):
        values["quantized"], quantized = str(quantized), None
    if isinstance(data, str):
        values["data"], data = data, None
    cfg = config_for("debug", values)
    return run_experiment(cfg, progress=False, log=lambda m: None, model=model, quantized=quantized,
                          data=data).record


def compare(run_a: str, run_b: str, *, store: str | Path = "runs/quantbench.db",
            out: str | Path | None = None) -> dict[str, Any]:
    """Differences of stored run B against run A: accuracy (paired on the same images when both runs
    stored per-image hits of them, else unpaired with the reason), size and latency, plus a report.

    Args:
        run_a: id (or unique prefix) of the reference run.
        run_b: id (or unique prefix) of the run compared with it.
        store: the results store both runs are in.
        out: report folder (default: ``compare-A-B`` beside the store).

    Returns:
        ``{"accuracy": [...], "size": [...], "latency": [...], "notes": [...], "html": ..., "markdown": ...}``;
        accuracy differences are B - A in points with a 95% CI.

    Raises:
        QuantbenchError: an unknown run, or a run with no accuracy, size or latency rows.

    Example:
        >>> import quantbench as qb
        >>> from quantbench.api import compare
        >>> a = qb.run("eval", model="lenet", data="digits", store="q.db")  # doctest: +SKIP
        >>> b = qb.run("ptq", model="lenet", data="digits", store="q.db")  # doctest: +SKIP
        >>> compare(a.record["run_id"], b.record["run_id"], store="q.db")["accuracy"][0]["paired"]  # doctest: +SKIP
        False
    """
    from quantbench.report.compare import write_compare_report

    c, html, md = write_compare_report(store, run_a, run_b, out)
    return {**c.as_dict(), "html": str(html), "markdown": str(md)}


def export(qmodel: QuantizedModel, path: str | Path, *, formats: Sequence[str] | None = None,
           input_shape: tuple[int, int, int] | None = None, samples: Any = None) -> list[ExportedFile]:
    """Write ``qmodel`` for deployment and check each file against the simulation.

    ``path`` is a file (``.onnx``, ``.xml`` OpenVINO IR, ``.tflite``: its format) or a folder (then
    ``formats`` lists what to write). Each :class:`~quantbench.exporting.ExportedFile` says how closely its
    runtime reproduces the simulated logits.

    Example:
        >>> import torch, tempfile, quantbench as qb
        >>> qm = qb.quantize(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten()), "w8a8",
        ...                  torch.randn(16, 1, 8, 8))
        >>> f = qb.export(qm, tempfile.mkdtemp() + "/m.onnx")[0]
        >>> f.format, f.top1_agreement
        ('onnx', 1.0)
    """
    import shutil

    from quantbench.exporting import export_quantized, format_of

    shape = input_shape or getattr(qmodel, "input_shape", None)
    if shape is None:
        raise QuantbenchError("export: the model's input shape is unknown; pass input_shape=(C, H, W)")
    target = Path(path)
    if target.suffix:
        fmt = format_of(target)
        files = export_quantized(qmodel, target.parent, formats=(fmt,), input_shape=tuple(shape),
                                 name=target.stem, samples=samples)
        written = Path(files[0].path)
        if written != target:  # the exporter names files <name>_int8.<ext>; the caller asked for this name
            for src in written.parent.glob(written.stem + ".*"):
                shutil.move(str(src), str(target.with_suffix(src.suffix)))
            files[0].path = str(target)
        return files
    return export_quantized(qmodel, target, formats=tuple(formats or ("onnx",)), input_shape=tuple(shape),
                            samples=samples)


def recommend(model: nn.Module | str, data: Any, *, max_drop: float = 1.0, engines: Sequence[str] = ("all",),
              batch_sizes: Sequence[int] = (1, 8), budget_kb: float | None = None, progress: bool = False,
              **config: Any) -> dict[str, Any]:
    """Which quantized deployment to use on this machine: PTQ methods x engines, measured, answered in words.

    Runs (and stores) the ``recommend`` experiment: W8A8, W8A8 with bias correction and W4A8 AdaRound
    (``methods=...`` to change), W8A8 under accuracy control when full W8A8 misses ``max_drop`` on the
    validation split, mixed precision under ``budget_kb`` when given; each deployed with its own scales on
    every engine here and timed at ``batch_sizes``. Choices use validation images only; the answer quotes the
    drop on evaluation images no choice saw.

    Returns:
        The run's record: ``answer`` and ``avoid`` (sentences), ``choice``, ``table`` (the Pareto table),
        ``candidates``, ``deployments``, plus ``run_id`` and ``report`` (the report's path) when stored.

    Example:
        >>> import quantbench as qb, tempfile
        >>> rec = qb.recommend("lenet", "digits", max_drop=3.0, methods="w8a8:mse", control_method="none",
        ...                    engines="onnxruntime", batch_sizes=[8], pretrain_epochs=2, min_time_s=0.05, rounds=1,
        ...                    store=tempfile.mkdtemp() + "/q.db")
        >>> rec["answer"][0].startswith("On ")
        True
    """
    out = run("recommend", model=model, data=data, progress=progress, max_drop=max_drop, engines=tuple(engines)
              if not isinstance(engines, str) else engines, batch_sizes=tuple(batch_sizes), budget_kb=budget_kb,
              **config)
    extra = {"run_id": out.run_id, "report": str(out.report_html)} if out.run_id else {}
    return {**out.record, **extra}


def run(kind: str, *, model: nn.Module | str | None = None, data: Any = None, progress: bool = False,
        **config: Any) -> RunOutcome:
    """Run and store one experiment of ``kind`` - exactly what the matching verb does.

    ``config`` takes the kind's keys (the verb's flags with ``_``); ``model``/``data`` are a source / spec
    string, or in-memory objects (an ``nn.Module``; images as :func:`evaluate` takes them).

    Example:
        >>> import quantbench as qb, tempfile
        >>> out = qb.run("eval", model="lenet", data="digits", store=tempfile.mkdtemp() + "/q.db")
        >>> out.record["n_images"], out.report_html.name
        (1797, 'report.html')
    """
    from quantbench.experiments.layer import config_for, run_experiment

    if isinstance(model, str):
        config["model"], model = model, None
    elif model is not None and "model" not in config:
        config["model"] = type(model).__name__
    if isinstance(data, str):
        config["data"], data = data, None
    cfg = config_for(kind, config)
    return run_experiment(cfg, progress=progress, log=(lambda m: None) if not progress else None, model=model,
                          data=data)
