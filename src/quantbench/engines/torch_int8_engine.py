"""PyTorch's native quantized CPU kernels (x86/fbgemm) running OUR scales: the ``torch-int8`` engine.

The prepared :class:`~quantbench.quant.prepare.QuantizedModel` graph is lowered, node by
node, to ``torch.ao.nn.quantized`` modules - no PyTorch observer or re-calibration is
involved, every scale and integer weight code is ours:

* an activation quantizer on a float value -> ``torch.quantize_per_tensor`` (quint8) with its
  scale and zero point (``clamp`` first for fewer than 8 bits);
* a conv/linear whose input is quantized and whose output reaches only quantizers with one
  common 8-bit unsigned spec (directly or through ReLU, max-pool, flatten, identity - ops that
  commute with quantization) -> ``quantized.Conv2d``/``ConvReLU2d``/``Linear``/``LinearReLU``
  producing exactly that quantized tensor (the quantizers become no-ops);
* a residual ``add`` of two quantized values under the same condition ->
  ``torch.ops.quantized.add``/``add_relu``;
* ReLU, max-pool, flatten, identity on a quantized value stay quantized (exact);
* everything else runs in float on dequantized inputs, exactly as the simulation computes it
  (e.g. average pooling, the zero-padded shortcut, the classifier producing float logits),
  and a conv/linear that cannot produce an int8 output runs as a float layer with our
  fake-quantized weights.

Integer weight codes are :func:`~quantbench.quant.fake.quantize` of the float weights with our
per-channel scales (symmetric, zero point 0), wrapped as ``qint8`` tensors. The kernels
requantize with their own rounding, so logits differ from the simulation by rounding noise
only (the engine parity test bounds it). PyTorch marks these quantized tensor APIs
deprecated (pytorch#184982); the engine reports itself unavailable when they are gone.
"""

from __future__ import annotations

import copy
import operator
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from quantbench.engines.base import ENGINES, Deployable, Engine, Session, file_info, torch_threads
from quantbench.errors import QuantbenchError

__all__ = ["TorchInt8Engine", "TorchInt8Session", "lower_to_torch_int8"]

_QENGINES = ("x86", "fbgemm", "onednn", "qnnpack")
_RELU_FUNCS = {F.relu, torch.relu}
_ADD_FUNCS = {operator.add, torch.add}
# Ops that commute with per-tensor quantization (given 0 is representable): exact on quantized tensors.
_PASS_MODULES = (nn.ReLU, nn.MaxPool2d, nn.Identity, nn.Flatten)
_PASS_FUNCS = {F.relu, torch.relu, F.max_pool2d, torch.flatten}
_PASS_METHODS = {"relu", "flatten", "view", "reshape"}


def _quiet() -> warnings.catch_warnings:
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings(
        "ignore", message=r".*quantized tensor creation functions.*deprecated", category=UserWarning
    )
    warnings.filterwarnings(
        "ignore", message=r".*torch\.ao\.quantization.*deprecated", category=DeprecationWarning
    )
    return ctx


def _pick_qengine() -> str | None:
    supported = torch.backends.quantized.supported_engines
    return next((e for e in _QENGINES if e in supported), None)


class _Lowering:
    """Builds the quantized fx graph from a QuantizedModel (see the module docstring)."""

    def __init__(self, qm: Any) -> None:
        from quantbench.quant.fake import FakeQuant

        self.qm = qm
        self.src = qm.net
        self.modules = dict(self.src.named_modules())
        self.aq = {name: fq for name, fq in qm.act_quantizers()}
        self.FakeQuant = FakeQuant
        self.root = copy.deepcopy(qm.net)
        self.graph = fx.Graph()
        self.env: dict[fx.Node, tuple[fx.Node, tuple[float, int] | None]] = {}
        self.deq_cache: dict[fx.Node, fx.Node] = {}
        self.n_new = 0
        self.counts = {"int8_layers": 0, "float_layers": 0, "int8_adds": 0}

    # ---- classification
    def _mod(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None

    def is_aq(self, node: fx.Node) -> bool:
        return node.op == "call_module" and node.target in self.aq

    def is_relu(self, node: fx.Node) -> bool:
        return (
            isinstance(self._mod(node), nn.ReLU)
            or (node.op == "call_function" and node.target in _RELU_FUNCS)
            or (node.op == "call_method" and node.target == "relu")
        )

    def is_pass(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self._mod(node), _PASS_MODULES)
        if node.op == "call_function":
            return node.target in _PASS_FUNCS
        return node.op == "call_method" and node.target in _PASS_METHODS

    def is_add(self, node: fx.Node) -> bool:
        return (
            node.op == "call_function" and node.target in _ADD_FUNCS and len(node.args) == 2
            and not node.kwargs and all(isinstance(a, fx.Node) for a in node.args)
        )  # fmt: skip

    def qparams(self, aq_node: fx.Node) -> tuple[float, int] | None:
        """(scale, zero point) when the quantizer is a plain 8-bit unsigned per-tensor one, else None."""
        fq = self.aq[aq_node.target]
        spec = fq.spec
        if spec.bits != 8 or spec.signed or spec.per_channel or spec.dynamic or spec.companding != "none":
            return None
        s, z = fq.qparams()
        return float(s), int(z)

    def target(self, node: fx.Node) -> tuple[float, int] | None:
        """The common quantizer every use of ``node`` ends in (through commuting ops), else None."""
        found: set[tuple[float, int] | None] = set()
        stack = list(node.users)
        if not stack:
            return None
        while stack:
            u = stack.pop()
            if self.is_aq(u):
                found.add(self.qparams(u))
            elif self.is_pass(u):
                if not u.users:
                    return None
                stack.extend(u.users)
            else:
                return None
        if len(found) != 1:
            return None
        return next(iter(found))

    # ---- graph building helpers
    def add_module(self, module: nn.Module, hint: str) -> str:
        self.n_new += 1
        name = f"_int8_{hint.replace('.', '_')}_{self.n_new}"
        self.root.add_module(name, module)
        return name

    def floatv(self, node: fx.Node) -> fx.Node:
        new, q = self.env[node]
        if q is None:
            return new
        if node not in self.deq_cache:
            self.deq_cache[node] = self.graph.call_method("dequantize", (new,))
        return self.deq_cache[node]

    def map_float(self, arg: Any) -> Any:
        return fx.node.map_arg(arg, self.floatv)

    def quantize(self, x: fx.Node, fq: Any) -> fx.Node:
        spec = fq.spec
        s, z = fq.qparams()
        s, z = float(s), int(z)
        if spec.signed or spec.bits > 8:
            raise QuantbenchError(
                f"torch-int8: activation spec {spec.short()} is not supported (8-bit or fewer, unsigned)"
            )
        if spec.qmin != 0 or spec.qmax != 255:
            x = self.graph.call_method("clamp", (x, (spec.qmin - z) * s, (spec.qmax - z) * s))
        return self.graph.call_function(torch.quantize_per_tensor, (x, s, z, torch.quint8))

    # ---- weights
    def qweight(self, layer: nn.Module) -> torch.Tensor | None:
        from quantbench.quant.fake import deployed_codes

        fq = getattr(layer, "weight_fq", None)
        if not isinstance(fq, self.FakeQuant):
            return None
        spec = fq.spec
        if not spec.signed or spec.bits > 8 or spec.companding != "none" or spec.dynamic:
            return None
        s, z = fq.qparams()
        codes, z = deployed_codes(layer.weight.detach().float(), s, z, spec)  # asymmetric low-bit: re-centred
        if bool((z != 0).any()):
            return None
        codes = codes.to(torch.int8)
        if s.dim() == 1:
            return torch._make_per_channel_quantized_tensor(
                codes, s.double(), z.long(), spec.axis % codes.dim()
            )
        return torch._make_per_tensor_quantized_tensor(codes, float(s), 0)

    def float_layer(self, layer: nn.Module) -> nn.Module:
        """A plain Conv2d/Linear with our fake-quantized weights (the simulation's float path)."""
        fq = getattr(layer, "weight_fq", None)
        plain = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
        new = plain.__new__(plain)
        new.__dict__ = {k: v for k, v in layer.__dict__.items()}
        new._modules = {}
        new._parameters = dict(layer._parameters)
        if fq is not None:
            with torch.no_grad():
                new._parameters["weight"] = nn.Parameter(
                    fq(layer.weight.detach()).clone(), requires_grad=False
                )
        return new

    def int_layer(self, layer: nn.Module, qw: torch.Tensor, relu: bool, out: tuple[float, int]) -> nn.Module:
        import torch.ao.nn.intrinsic.quantized as nniq
        import torch.ao.nn.quantized as nnq

        bias = layer.bias.detach().float() if layer.bias is not None else None
        if isinstance(layer, nn.Conv2d):
            cls = nniq.ConvReLU2d if relu else nnq.Conv2d
            m = cls(
                layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                bias=bias is not None, padding_mode=layer.padding_mode,
            )  # fmt: skip
        else:
            cls = nniq.LinearReLU if relu else nnq.Linear
            m = cls(layer.in_features, layer.out_features, bias is not None)
        m.set_weight_bias(qw, bias)
        m.scale, m.zero_point = out
        return m

    # ---- lowering
    def lower(self) -> fx.GraphModule:
        for node in self.src.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = (self.graph.placeholder(node.name), None)
            elif node.op == "output":
                self.graph.output(self.map_float(node.args[0]))
            elif node in self.env:
                continue  # produced by a fused group
            elif self.is_aq(node):
                self._aq(node)
            elif self._layer(node) or self._add(node) or self._pass(node):
                pass
            else:
                self.env[node] = (self.graph.node_copy(node, self.floatv), None)
        gm = fx.GraphModule(self.root, self.graph)
        gm.graph.eliminate_dead_code()
        gm.recompile()
        gm.delete_all_unused_submodules()
        return gm.eval()

    def _aq(self, node: fx.Node) -> None:
        (src,) = node.args
        new, q = self.env[src]
        own = self.qparams(node)
        if q is not None and own is not None and q == own:
            self.env[node] = (new, q)  # already quantized with these parameters by a fused op
            return
        fq = self.aq[node.target]
        s, z = fq.qparams()
        self.env[node] = (self.quantize(self.floatv(src), fq), (float(s), int(z)))

    def _fusable_out(self, node: fx.Node) -> tuple[bool, tuple[float, int] | None, fx.Node | None]:
        users = list(node.users)
        if len(users) == 1 and self.is_relu(users[0]):
            out = self.target(users[0])
            if out is not None:
                return True, out, users[0]
        return False, self.target(node), None

    def _layer(self, node: fx.Node) -> bool:
        layer = self._mod(node)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)) or not hasattr(layer, "weight_fq"):
            return False
        (src,) = node.args
        _, q_in = self.env[src]
        qw = self.qweight(layer)
        relu, out, relu_node = self._fusable_out(node)
        if q_in is not None and qw is not None and out is not None:
            name = self.add_module(self.int_layer(layer, qw, relu, out), node.target)
            new = self.graph.call_module(name, (self.env[src][0],))
            self.env[relu_node if relu_node is not None else node] = (new, out)
            self.counts["int8_layers"] += 1
            return True
        name = self.add_module(self.float_layer(layer), node.target)
        self.env[node] = (self.graph.call_module(name, (self.floatv(src),)), None)
        self.counts["float_layers"] += 1
        return True

    def _add(self, node: fx.Node) -> bool:
        if not self.is_add(node):
            return False
        a, b = node.args
        qa, qb = self.env[a][1], self.env[b][1]
        relu, out, relu_node = self._fusable_out(node)
        if qa is None or qb is None or out is None:
            return False
        op = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add
        new = self.graph.call_function(op, (self.env[a][0], self.env[b][0], out[0], out[1]))
        if relu_node is not None:
            self.env[relu_node] = (new, out)
        else:
            self.env[node] = (new, out)
        self.counts["int8_adds"] += 1
        return True

    def _pass(self, node: fx.Node) -> bool:
        if not self.is_pass(node):
            return False
        first = node.args[0] if node.args else None
        if not isinstance(first, fx.Node) or self.env[first][1] is None:
            return False
        others = [a for a in list(node.args[1:]) + list(node.kwargs.values()) if isinstance(a, fx.Node)]
        if others:
            return False
        new = self.graph.node_copy(node, lambda n: self.env[n][0])
        self.env[node] = (new, self.env[first][1])
        return True


def lower_to_torch_int8(qm: Any) -> tuple[fx.GraphModule, dict[str, int]]:
    """Lower a calibrated QuantizedModel to PyTorch quantized modules running its scales.

    Returns:
        ``(graph_module, counts)`` with ``counts`` = int8 layers, float layers, int8 adds.

    Example:
        >>> gm, counts = lower_to_torch_int8(qm)  # doctest: +SKIP
        >>> gm(torch.randn(1, 3, 32, 32)).shape  # doctest: +SKIP
        torch.Size([1, 10])
    """
    from quantbench.quant.prepare import QuantizedModel

    if not isinstance(qm, QuantizedModel):
        raise QuantbenchError(f"torch-int8 needs a QuantizedModel, got {type(qm).__name__}")
    for name, fq in qm.act_quantizers():
        if fq.spec.dynamic:
            raise QuantbenchError(
                f"torch-int8: {name} is a dynamic quantizer; the engine deploys static scales only"
            )
        if not fq.calibrated:
            raise QuantbenchError(
                f"torch-int8: activation quantizer {name} is not calibrated; run calibrate() first"
            )
    for name, fq in qm.weight_quantizers():
        if fq.spec.companding != "none":
            raise QuantbenchError(
                f"torch-int8: the weight of {name} is {fq.spec.companding}-companded; integer kernels need uniform levels"
            )
    ctx = _quiet()
    try:
        lowering = _Lowering(qm)
        gm = lowering.lower()
    finally:
        ctx.__exit__(None, None, None)
    return gm, lowering.counts


class TorchInt8Session(Session):
    """The lowered quantized graph, run eagerly."""

    def __init__(self, gm: fx.GraphModule, counts: dict[str, int], input_shape: tuple[int, int, int],
                 threads: int | None, path: Path, qengine: str) -> None:  # fmt: skip
        self.gm = gm
        self.threads = threads
        self.qengine = qengine
        info = {
            "engine": "torch-int8",
            "version": torch.__version__,
            "provider": f"cpu, torch.backends.quantized.engine={qengine}",
            "precision": "int8 static (quint8 activations, qint8 per-channel weights), quantbench scales",
            **counts,
            **file_info(path),
        }
        super().__init__(input_shape, info)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.backends.quantized.engine != self.qengine:
            torch.backends.quantized.engine = self.qengine
        with torch_threads(self.threads), torch.inference_mode():
            return self.gm(x)

    def run(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(self.check_input(x))
        ctx = _quiet()
        try:
            return self._forward(t).float().numpy()
        finally:
            ctx.__exit__(None, None, None)

    def runner(self, batch_size: int) -> Callable[[], object]:
        x = torch.from_numpy(self.example_batch(batch_size))
        ctx = _quiet()
        try:
            self._forward(x)  # first call outside the timed loop (one-time warnings, packing)
        finally:
            ctx.__exit__(None, None, None)
        return lambda: self._forward(x)


@ENGINES.register("torch-int8", description="PyTorch quantized CPU kernels (x86/fbgemm) with our scales")
class TorchInt8Engine(Engine):
    """PyTorch's quantized CPU backend running a lowered QuantizedModel."""

    name = "torch-int8"
    variants = ("int8",)
    package = "torch"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import torch.ao.nn.intrinsic.quantized  # noqa: F401
            import torch.ao.nn.quantized  # noqa: F401
        except ImportError as exc:
            return False, f"this PyTorch ({torch.__version__}) has no torch.ao.nn.quantized modules: {exc}"
        if not hasattr(torch.ops.quantized, "add_relu") or not hasattr(torch, "quantize_per_tensor"):
            return False, f"this PyTorch ({torch.__version__}) lacks quantized add/quantize_per_tensor"
        if _pick_qengine() is None:
            return False, (f"no quantized CPU backend in this PyTorch build (supported engines: "
                           f"{torch.backends.quantized.supported_engines})")  # fmt: skip
        return True, ""

    def load(self, model: Deployable, variant: str, *, threads: int | None, workdir: Path) -> Session:
        qengine = _pick_qengine()
        assert qengine is not None  # available() checked it
        torch.backends.quantized.engine = qengine
        gm, counts = lower_to_torch_int8(model.quantized)
        path = Path(workdir) / f"{model.name}_torch_int8.pt"
        ctx = _quiet()
        try:
            torch.save(gm.state_dict(), path)
        finally:
            ctx.__exit__(None, None, None)
        return TorchInt8Session(gm, counts, model.input_shape, threads, path, qengine)
