"""Import an ONNX image classifier as a torch.fx graph that quantbench quantizes like its own models.

Which converter, and why our own (docs/decisions.md has the long form): the maintained
converters either need torchvision (onnx2torch, onnx2pytorch: torchvision does not install beside
the pinned CPU torch here) or produce their own wrapper modules for Add, Concat, pooling and
reshapes, which hide the very ops whose inputs an integer engine quantizes. This importer emits
standard modules and functions (:mod:`~quantbench.models.sources.graph`), covers the operator set
of CNN classifiers (:mod:`~quantbench.models.sources.onnx_ops`), constant-folds shape arithmetic
with ONNX's reference evaluator, and is checked against onnxruntime on the original file every
time a model is loaded (:func:`check_with_onnxruntime`).

Layouts: an NCHW input is taken as is. An NHWC input (TensorFlow/Keras exports) whose first
operation transposes it to NCHW is imported without that transpose, so the model takes NCHW
images like every other quantbench model; the import notes say so.

Example:
    >>> imported = import_onnx("model.onnx")  # doctest: +SKIP
    >>> imported.input_shape, imported.num_classes  # doctest: +SKIP
    ((3, 64, 48), 10)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from quantbench.errors import QuantbenchError
from quantbench.models.sources import onnx_shapes  # noqa: F401 - registers the shape operators
from quantbench.models.sources.graph import GraphBuilder
from quantbench.models.sources.onnx_ops import CONVERTERS, Ctx, V, fold

__all__ = ["ImportedGraph", "check_with_onnxruntime", "import_onnx"]

_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                  "MatMulInteger", "DynamicQuantizeLinear", "QLinearAdd", "QGemm"}
"""Operators of an already quantized graph: quantbench quantizes float models itself."""


@dataclass
class ImportedGraph:
    """A converted model and what the import learned about it."""

    module: fx.GraphModule
    input_shape: tuple[int, int, int]
    num_classes: int
    nhwc: bool = False
    traced_batch: int = 1
    fixed_batch: bool = False
    notes: list[str] = field(default_factory=list)


def _load(path: Path) -> Any:
    try:
        import onnx
    except ImportError:
        raise QuantbenchError(f"{path}: reading ONNX files needs the onnx package (pip install 'quantbench[onnx]')"
                              ) from None
    if not path.is_file():
        raise QuantbenchError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError...
        raise QuantbenchError(f"{path}: not a readable ONNX model ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if not model.graph.node:
        raise QuantbenchError(f"{path}: the ONNX graph has no nodes")
    return model


def _dims(value_info: Any) -> list[int | None]:
    shape = value_info.type.tensor_type.shape
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape.dim]


def import_onnx(path: str | Path, *, input_shape: tuple[int, int, int] | None = None) -> ImportedGraph:
    """Convert the ONNX file at ``path``; ``input_shape`` (C, H, W) is needed when its H/W are not fixed.

    Raises:
        QuantbenchError: unreadable file, not one 4-D float image input, a shape that disagrees with
            ``input_shape``, an already quantized graph, or an operator outside the supported set
            (named, with its node).
    """
    path = Path(path)
    model = _load(path)
    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13)
    foreign = sorted({n.domain for n in graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise QuantbenchError(f"{path}: uses operators of the custom domain {foreign[0]!r}; only standard ONNX "
                              "operators can be imported")
    quantized = sorted({n.op_type for n in graph.node} & _QUANTIZED_OPS)
    if quantized:
        raise QuantbenchError(f"{path}: is already quantized ({quantized[0]} nodes); give quantbench the float model")
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise QuantbenchError(f"{path}: has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                              "an image classifier has one")
    inp = inputs[0]
    if inp.type.tensor_type.elem_type != 1:
        raise QuantbenchError(f"{path}: input {inp.name!r} is not float32")
    dims = _dims(inp)
    if len(dims) != 4:
        raise QuantbenchError(f"{path}: input {inp.name!r} has rank {len(dims)}; expected a 4-D image batch")
    consumers = Counter(name for n in graph.node for name in n.input if name)
    first = [n for n in graph.node if inp.name in n.input]
    nhwc = (len(first) == 1 and first[0].op_type == "Transpose"
            and [a.ints for a in first[0].attribute if a.name == "perm"] == [[0, 3, 1, 2]])
    file_chw = (dims[3], dims[1], dims[2]) if nhwc else (dims[1], dims[2], dims[3])
    shape = _resolve_shape(path, inp.name, file_chw, input_shape)
    traced_batch = dims[0] or 1
    notes = []
    if nhwc:
        notes.append(f"input {inp.name!r} is NHWC; imported without its first Transpose, so the model takes NCHW")
    if dims[0] is not None:
        notes.append(f"the file fixes batch size {dims[0]}; the imported model takes any batch")

    builder = GraphBuilder()
    ctx = Ctx(builder, str(path), traced_batch, dict(consumers), opset)
    x_node = builder.input("x")
    sample = torch.randn((traced_batch, *shape), generator=torch.Generator().manual_seed(0))
    values: dict[str, V] = {}
    for init in graph.initializer:
        values[init.name] = V(_tensor(init))
    x_val = V(sample, x_node)
    skip: set[int] = set()
    if nhwc:
        values[first[0].output[0]] = x_val
        skip.add(id(first[0]))
    else:
        values[inp.name] = x_val
    for node in graph.node:
        if id(node) in skip:
            continue
        ctx.node = node
        ins: list[V | None] = []
        for name in node.input:
            if not name:
                ins.append(None)
                continue
            if name not in values:
                raise QuantbenchError(f"{path}: node {node.name!r} reads {name!r}, which nothing before it "
                                      "produces (the graph is not topologically sorted or uses subgraphs)")
            ins.append(values[name])
        if node.op_type == "Constant":
            outs = fold(node, [])
        elif node.op_type not in ("Shape", "Size") and all(v is None or v.const for v in ins):
            outs = fold(node, ins)
        else:
            convert = CONVERTERS.get(node.op_type)
            if convert is None:
                raise ctx.fail(f"operator not supported by quantbench's ONNX importer (supported: "
                               f"{', '.join(sorted(CONVERTERS))})")
            try:
                outs = convert(ctx, ins)
            except QuantbenchError:
                raise
            except Exception as exc:  # a malformed node: name it instead of a traceback
                raise ctx.fail(f"cannot convert ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
        for name, v in zip(node.output, outs, strict=False):
            if name:
                values[name] = v
    outputs = [o.name for o in graph.output]
    if len(outputs) > 1:
        notes.append(f"the model has {len(outputs)} outputs; quantbench uses the first, {outputs[0]!r}")
    out = values.get(outputs[0])
    if out is None or out.const:
        raise QuantbenchError(f"{path}: output {outputs[0]!r} does not depend on the input image")
    if out.t.dim() != 2:
        raise QuantbenchError(f"{path}: output {outputs[0]!r} has shape {tuple(out.t.shape)}; a classifier "
                              "outputs (batch, classes)")
    gm = builder.build(out.node, class_name=_class_name(path))
    gm.eval()
    if graph.node[-1].op_type == "Softmax" or any(n.op_type == "Softmax" and outputs[0] in n.output
                                                    for n in graph.node):
        notes.append("the model ends in Softmax: its outputs are probabilities, so stored losses are not "
                     "cross-entropies of logits")
    imported = ImportedGraph(gm, shape, int(out.t.shape[1]), nhwc, traced_batch, dims[0] is not None, notes)
    _check_batch_independence(path, imported)
    return imported


def _class_name(path: Path) -> str:
    stem = "".join(ch if ch.isalnum() else "_" for ch in path.stem) or "Imported"
    return f"Onnx_{stem}"


def _tensor(init: Any) -> torch.Tensor:
    from onnx import numpy_helper

    arr = numpy_helper.to_array(init)
    if arr.dtype == np.float64 or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return torch.from_numpy(np.array(arr))


def _resolve_shape(path: Path, name: str, file_chw: tuple[int | None, ...],
                   given: tuple[int, int, int] | None) -> tuple[int, int, int]:
    if given is not None:
        for have, want, what in zip(file_chw, given, ("channels", "height", "width"), strict=True):
            if have is not None and have != want:
                raise QuantbenchError(f"{path}: input {name!r} has {what} {have}, but --input-shape asks for "
                                      f"{'x'.join(map(str, given))}")
        return tuple(given)  # type: ignore[return-value]
    if any(d is None for d in file_chw):
        shown = "x".join("?" if d is None else str(d) for d in file_chw)
        raise QuantbenchError(f"{path}: input {name!r} has a variable shape ({shown}); pass --input-shape CxHxW")
    return tuple(int(d) for d in file_chw)  # type: ignore[return-value]


def _check_batch_independence(path: Path, imported: ImportedGraph) -> None:
    """The imported graph must give each image the same logits alone or in a batch of three."""
    x = torch.randn((3, *imported.input_shape), generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            together = imported.module(x)
            alone = torch.cat([imported.module(x[i:i + 1]) for i in range(3)])
    except Exception as exc:  # noqa: BLE001 - the model's own error, whatever its type
        raise QuantbenchError(f"{path}: the imported model does not run on a batch of 3 images "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    if not torch.allclose(together, alone, rtol=1e-4, atol=1e-4 * max(1.0, float(alone.abs().max()))):
        raise QuantbenchError(f"{path}: the imported model mixes images of a batch (its graph computes across the "
                              "batch dimension); quantbench needs a per-image classifier")


def check_with_onnxruntime(path: str | Path, imported: ImportedGraph, n_images: int = 2) -> float | None:
    """Max |logit difference| between the imported graph and onnxruntime on the original file (None: no onnxruntime).

    Raises:
        QuantbenchError: the difference is larger than float32 round-off allows (a conversion error).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = Path(path)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    batch = imported.traced_batch if imported.fixed_batch else n_images
    x = torch.randn((batch, *imported.input_shape), generator=torch.Generator().manual_seed(2))
    feed = x.permute(0, 2, 3, 1).contiguous() if imported.nhwc else x
    ref = np.asarray(sess.run(None, {name: feed.numpy()})[0], dtype=np.float32).reshape(batch, -1)
    with torch.no_grad():
        got = imported.module(x).numpy()
    diff = float(np.abs(ref - got).max())
    scale = max(1.0, float(np.abs(ref).max()))
    if not np.isfinite(diff) or diff > 1e-3 * scale:
        raise QuantbenchError(f"{path}: the imported model differs from onnxruntime by {diff:.3g} (max |logit "
                              "difference|); the conversion is wrong for this model - please report it")
    return diff
