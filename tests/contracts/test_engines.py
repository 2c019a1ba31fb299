"""Every engine x variant honours the deployment contract (parametrized over ``ENGINES.names()``).

The Brevitas habit: the deployed model is held to the simulation. On a tiny trained CNN
(conv-BN-ReLU stem, a residual block, average pooling, a linear head) and 3,000 synthetic
images:

* fp32 engines reproduce torch's logits (1e-4 relative);
* int8 engines (which deploy OUR scales) reproduce the simulated QuantizedModel: logits cosine
  >= 0.99, top-1 predictions agree on >= 99% of the images, and top-1 accuracy is within
  0.2 points of the simulated model's on the same images;
* bf16 stays close to fp32, ``dynamic`` (the engine's own scheme) runs and stays close to fp32.

An engine or variant this machine cannot run is skipped with the engine's own reason.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from quantbench.data import open_dataset
from quantbench.engines import ENGINES, Deployable, Session, evaluate_session, load_session
from quantbench.errors import QuantbenchError
from quantbench.measure.accuracy import evaluate
from quantbench.measure.latency import measure_latency
from quantbench.quant.ptq import PTQConfig, quantize_ptq

SHAPE = (3, 16, 16)
N_EVAL = 3000
CASES = [(e, v) for e in ENGINES.names() for v in ENGINES.get(e).variants]


class TinyResNet(nn.Module):
    """conv-BN-ReLU, one residual block (identity shortcut), global average pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        y = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(x)))))
        x = self.relu3(y + x)
        return self.fc(torch.flatten(self.pool(x), 1))


@dataclass
class Setup:
    dep: Deployable
    x: np.ndarray
    y: np.ndarray
    fp32: np.ndarray
    sim: np.ndarray
    sim_top1: float


@pytest.fixture(scope="module")
def setup() -> Setup:
    return _setup("full")


@pytest.fixture(scope="module")
def setup_reduced() -> Setup:
    """The same network with ``--weight-range reduced``: 8-bit weights on the 7-bit grid (-64..63)."""
    return _setup("reduced")


@pytest.fixture(scope="module")
def setup_asym() -> Setup:
    """The same network with 4-bit weights on an asymmetric grid (``w4a8:mse-asym``)."""
    return _setup("full", scheme="w4a8", asymmetric_weights=True)


@pytest.fixture(scope="module")
def setup_low_act() -> Setup:
    """The same network at ``w4a4-jint8``: 4-bit layer inputs, 8-bit inputs of the residual add and the pool."""
    return _setup("full", scheme="w4a4", joins="int8")


@functools.cache
def _trained() -> tuple[TinyResNet, torch.Tensor, torch.Tensor]:
    """The tiny network after a few training steps, and the images: trained once for every setup below."""
    torch.manual_seed(0)
    x, y = open_dataset(f"synthetic:n={N_EVAL + 300},shape=3x16x16,classes=10,seed=0").tensors()
    model = TinyResNet()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(60):  # a few steps: decisive logits, as a trained model has
        idx = torch.randint(0, 300, (64,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x, y


def _setup(weight_range: str, scheme: str = "w8a8", asymmetric_weights: bool = False, joins: str = "auto") -> Setup:
    trained, x, y = _trained()
    model = copy.deepcopy(trained)
    cfg = PTQConfig(scheme, "mse", calib_size=128, weight_range=weight_range, asymmetric_weights=asymmetric_weights,
                    joins=joins)
    qm = quantize_ptq(model, cfg, x[:128])
    xe, ye = x[300:], y[300:]
    with torch.no_grad():
        fp32, sim = model(xe).numpy(), qm(xe).numpy()
    sim_top1 = evaluate(qm, (xe, ye)).top1
    return Setup(Deployable(model, qm, SHAPE, name="tiny"), xe.numpy(), ye.numpy(), fp32, sim, sim_top1)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _session(setup: Setup, engine: str, variant: str, tmp_path) -> Session:
    cls = ENGINES.get(engine)
    ok, reason = cls.available()
    if not ok:
        pytest.skip(f"{engine}: {reason}")
    ok, reason = cls.supports(variant)
    if not ok:
        pytest.skip(f"{engine}/{variant}: {reason}")
    return load_session(engine, setup.dep, variant, threads=1, workdir=tmp_path)


@pytest.mark.parametrize(("engine", "variant"), CASES)
def test_engine_parity(setup: Setup, engine: str, variant: str, tmp_path) -> None:
    sess = _session(setup, engine, variant, tmp_path)
    out = sess.run(setup.x)
    assert out.shape == setup.fp32.shape and out.dtype == np.float32
    pred = out.argmax(1)
    if variant == "fp32":
        scale = float(np.abs(setup.fp32).max())
        np.testing.assert_allclose(out, setup.fp32, rtol=1e-4, atol=1e-5 * scale)
    elif variant == "int8":  # our scales deployed: the simulated model is the reference
        assert _cosine(out, setup.sim) >= 0.99
        assert (pred == setup.sim.argmax(1)).mean() >= 0.99
        top1 = evaluate_session(sess, (setup.x, setup.y), batch_size=256).top1
        assert abs(top1 - setup.sim_top1) <= 0.2 + 1e-9, (top1, setup.sim_top1)
    elif variant in ("bf16", "fp16", "tf32"):  # reduced-precision float: close to fp32
        assert _cosine(out, setup.fp32) >= 0.99
        assert (pred == setup.fp32.argmax(1)).mean() >= 0.97
    elif variant == "dynamic":  # the engine's own scheme: close to fp32, not to our simulation
        assert _cosine(out, setup.fp32) >= 0.98
    else:
        pytest.fail(f"no parity rule for variant {variant!r}")


INT8_CASES = [(e, v) for e, v in CASES if v == "int8"]


def _deploys_as_simulated(setup: Setup, engine: str, variant: str, tmp_path) -> Session:
    """The int8 parity rule (logits, predictions, top-1 against the simulated model); the session, for more checks."""
    sess = _session(setup, engine, variant, tmp_path)
    out = sess.run(setup.x)
    assert _cosine(out, setup.sim) >= 0.99
    assert (out.argmax(1) == setup.sim.argmax(1)).mean() >= 0.99
    top1 = evaluate_session(sess, (setup.x, setup.y), batch_size=256).top1
    assert abs(top1 - setup.sim_top1) <= 0.2 + 1e-9, (top1, setup.sim_top1)
    return sess


@pytest.mark.parametrize(("engine", "variant"), INT8_CASES)
def test_engine_parity_reduced_weight_range(setup_reduced: Setup, engine: str, variant: str, tmp_path) -> None:
    """7-bit weight codes deploy exactly as simulated on every engine (the grid x86 CPUs without VNNI get)."""
    setup = setup_reduced
    codes = [fq.spec for _, fq in setup.dep.quantized.weight_quantizers()]
    assert codes and all(s.bits == 7 and s.qmin == -64 and s.qmax == 63 for s in codes)
    sess = _deploys_as_simulated(setup, engine, variant, tmp_path)
    if engine == "onnxruntime":  # codes that cannot saturate are stored as s8, the fast kernels' format
        assert sess.info["weight_type"] == "int8"


@pytest.mark.parametrize(("engine", "variant"), INT8_CASES)
def test_engine_parity_asymmetric_low_bit_weights(setup_asym: Setup, engine: str, variant: str, tmp_path) -> None:
    """4-bit weights with a zero point per channel deploy exactly as simulated, on integer kernels: the
    engines take the codes re-centred (code - zero point, int8, zero point 0), the same values."""
    setup = setup_asym
    fqs = [fq for _, fq in setup.dep.quantized.weight_quantizers()]
    assert fqs and all(not fq.spec.symmetric and fq.spec.bits == 4 for fq in fqs)
    assert any(bool((fq.qparams()[1] != 0).any()) for fq in fqs)  # real zero points, not a symmetric grid
    sess = _deploys_as_simulated(setup, engine, variant, tmp_path)
    if engine == "onnxruntime":  # codes within +-15: s8, the fast kernels' format, on every CPU
        assert sess.info["weight_type"] == "int8"
    if engine == "torch-int8":  # the convolutions on the integer kernels, not left in float for the zero points
        assert sess.info["int8_layers"] == 3  # as with symmetric 8-bit weights (the head stays float there too)


@pytest.mark.parametrize(("engine", "variant"), INT8_CASES)
def test_engine_parity_low_bit_activations_with_eight_bit_joins(setup_low_act: Setup, engine: str, variant: str,
                                                                tmp_path) -> None:
    """W4A4 deploys as simulated: one value quantized twice (4 bits for the convolution that reads it, 8 for the
    residual add), both as QuantizeLinear/DequantizeLinear pairs (or the engine's own kernels) of the same scales."""
    setup = setup_low_act
    qm = setup.dep.quantized
    by_value: dict[str, list[int]] = {}
    for name, fq in qm.act_quantizers():
        by_value.setdefault(qm.act_sites[name]["value"], []).append(fq.spec.bits)
    assert sorted(by_value["relu"]) == [4, 8]  # the block input: conv2 reads 4 bits, the add 8
    _deploys_as_simulated(setup, engine, variant, tmp_path)


@pytest.mark.parametrize(("engine", "variant"), CASES)
def test_engine_session_contract(setup: Setup, engine: str, variant: str, tmp_path) -> None:
    sess = _session(setup, engine, variant, tmp_path)
    # Any batch size runs, and a batch of one gives that image's logits.
    full = sess.run(setup.x[:5])
    one = sess.run(setup.x[2:3])
    tol = 1e-4 if variant == "fp32" else 0.05
    np.testing.assert_allclose(one[0], full[2], rtol=tol, atol=tol * float(np.abs(full).max()))
    info = sess.info
    assert info["engine"] == engine and info["variant"] == variant
    assert info["model_bytes"] > 0 and info["model_path"]
    # The runner is a zero-argument closure for THE timing function.
    result = measure_latency(sess.runner(2), batch_size=2, warmup=1, min_iters=2, min_time_s=0.0)
    assert result.iterations >= 2 and len(result.samples_ms) == result.iterations
    # Bad inputs are one-line user errors.
    with pytest.raises(QuantbenchError, match="batch_size"):
        sess.runner(0)
    with pytest.raises(QuantbenchError, match="shape"):
        sess.run(np.zeros((2, 3, 8, 8), dtype=np.float32))
    with pytest.raises(QuantbenchError, match="shape"):
        sess.run(np.zeros((3, 16, 16), dtype=np.float32))
