"""Block reconstruction (BRECQ, QDrop) and the graph units it reconstructs.

Tiny models and smooth random images (CPU, a few seconds each).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.quant.adaround import adaround
from quantbench.quant.brecq import _ActQuant, reconstruct
from quantbench.quant.brecq_blocks import find_blocks, propagate, segment_module
from quantbench.quant.fake import broadcast_param, lsq_fake_quantize
from quantbench.quant.prepare import calibrate, prepare
from quantbench.quant.ptq import ALGOS, PTQConfig, parse_method, quantize_ptq
from quantbench.quant.spec import QuantSpec, parse_scheme


class TinyRes(nn.Module):
    """stem conv-ReLU -> one residual block (conv-ReLU-conv + skip, ReLU) -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)
        for m in (self.stem, self.c1, self.c2, self.fc):
            m.weight.data = torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5
            m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.c2(F.relu(self.c1(x))) + x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BlockFirst(nn.Module):
    """A residual block straight on the image (conv 3->8-ReLU-conv 8->3 + skip, ReLU), 1x1 conv, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 3, 3, padding=1)
        self.head = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4, 5)
        for m in (self.c1, self.c2, self.head, self.fc):
            m.weight.data = torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5
            m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c2(F.relu(self.c1(x))) + x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.head(x), 1), 1))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv(y)


def _images(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth 8x8 images (neighbouring pixels correlate, so rounding choices matter)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(n, 3, 3, 3, generator=g), size=(8, 8), mode="bilinear", align_corners=True)
    return x + 0.1 * torch.randn(n, 3, 8, 8, generator=g)


def _prepared(scheme: str = "w4a4", first_last: str = "same", model: nn.Module | None = None):
    model = (model or TinyRes()).eval()
    calib = _images()
    return model, calib, calibrate(prepare(model, parse_scheme(scheme, first_last=first_last)), calib)


# ----------------------------------------------------------------------------- units from the graph


def test_blocks_are_found_from_the_graph() -> None:
    _, _, qm = _prepared()
    blocks = find_blocks(qm)
    assert [b.layers for b in blocks] == [("stem",), ("c1", "c2"), ("fc",)]  # residual block kept whole
    assert all(name.startswith("aq_") for b in blocks for name in b.act_quantizers)
    chain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3)).eval()
    qc = calibrate(prepare(chain, parse_scheme("w4a8")), _images(8))
    assert [b.layers for b in find_blocks(qc)] == [("0",), ("2",), ("5",)]  # a chain: one unit per layer
    assert [b.layers for b in find_blocks(qc, "stage")] == [("0",), ("2",), ("5",)]


class _SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c // 2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class _InvRes(nn.Module):
    """Expand 1x1, depthwise 3x3 (optionally SE), project 1x1; a skip only when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int = 1, se: bool = False) -> None:
        super().__init__()
        h = 2 * cin
        self.body = nn.Sequential(nn.Conv2d(cin, h, 1), nn.ReLU6(), nn.Conv2d(h, h, 3, stride, 1, groups=h),
                                  nn.ReLU6(), *([_SE(h)] if se else []), nn.Conv2d(h, cout, 1))
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.skip else self.body(x)


class _Stage(nn.Module):
    """Two residual blocks (a repeated class that spans several units: must not become one)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = _InvRes(c, c), _InvRes(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


class TinyMobile(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU6(), _InvRes(4, 6), _InvRes(6, 6),
                                      _InvRes(6, 8, stride=2, se=True), _Stage(8), _Stage(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def test_the_module_tree_joins_chained_blocks_the_graph_splits() -> None:
    """An inverted residual without a skip is a chain (a cut between its layers); its module is
    repeated, so ``block`` joins its layers (SE included) into one unit; residual blocks and a
    repeated stage of them stay one unit per block; ``cut`` and no model keep the graph's units."""
    model, calib, qm = _prepared(model=TinyMobile())
    cut_units = find_blocks(qm, "cut", model=model)
    cut = [b.layers for b in cut_units]
    assert cut == [b.layers for b in find_blocks(qm)]  # no model: the graph's units
    assert ("features.2.body.0",) in cut and ("features.2.body.2",) in cut  # the chain, cut per layer
    joined = find_blocks(qm, model=model)
    assert [b.layers for b in joined] == [
        ("features.0",),
        ("features.2.body.0", "features.2.body.2", "features.2.body.4"),  # no skip: joined
        ("features.3.body.0", "features.3.body.2", "features.3.body.4"),  # residual: the graph's unit
        ("features.4.body.0", "features.4.body.2", "features.4.body.4.reduce", "features.4.body.4.expand",
         "features.4.body.5"),  # no skip, with SE: one unit
        *[(f"features.{s}.{k}.body.0", f"features.{s}.{k}.body.2", f"features.{s}.{k}.body.4")
          for s in (5, 6) for k in "ab"],  # a stage of residual blocks: one unit per block
        ("fc",),
    ]
    assert (joined[1].start, joined[1].end) == (cut_units[1].start, cut_units[3].end)  # the three chained units
    assert joined[1].input_quantizers == cut_units[1].input_quantizers != ()
    x = calib
    for block in joined:
        x = propagate(segment_module(qm.net, block), x)
    assert torch.allclose(x, qm(calib).detach(), atol=1e-6)  # joined units still compose to the network
    stats = reconstruct(qm, model, calib, iters=2, drop_prob=0.5)
    assert [s["block"] for s in stats] == [b.name for b in joined]
    stages = find_blocks(qm, "stage", model=model)  # joined blocks of one width and stride 1 join further
    assert [b.name for b in stages] == ["features.0", "features.2.body..features.3.body",
                                        "features.4.body..features.6.b.body", "fc"]


class _Branches(nn.Module):
    """Inception-style: four branches (one through max-pooling) concatenated, then a mean head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b3 = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.bp, self.fc = nn.Conv2d(8, 4, 1), nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        y = F.relu(torch.cat([self.b1(x), self.b3(x), self.bp(F.max_pool2d(x, 3, 1, 1))], dim=1))
        return self.fc(y.mean(dim=(2, 3)))


class _LayerScale(nn.Module):
    """A parameter used directly in forward (a get_attr node), GroupNorm, GELU, ``view(size(0), -1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.gn, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.Conv2d(8, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.full((1, 8, 1, 1), 0.5))
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.gn(self.c1(x)))
        x = F.avg_pool2d(x + self.gamma * F.gelu(self.c2(x)), 2)
        return self.fc(x.view(x.size(0), -1))


class _LongSkip(nn.Module):
    """Pre-activation blocks, a skip across both, and a sigmoid spatial-attention gate."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.c1, self.c2 = (nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                       nn.Conv2d(8, 8, 3, padding=1))
        self.att, self.fc = nn.Conv2d(2, 1, 3, padding=1), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        a = s + self.c1(F.relu(s))
        b = a + self.c2(F.relu(a)) + s
        b = b * torch.sigmoid(self.att(torch.cat([b.mean(1, keepdim=True), b.amax(1, keepdim=True)], 1)))
        return self.fc(F.adaptive_avg_pool2d(F.relu(b), 1).flatten(1))


@pytest.mark.parametrize("model, units", [
    (_Branches, [("stem",), ("b1", "b3.0", "b3.2", "bp"), ("fc",)]),
    (_LayerScale, [("c1",), ("c2",), ("fc",)]),
    (_LongSkip, [("stem",), ("c1", "c2"), ("att",), ("fc",)]),
])
def test_unusual_graphs_cut_compose_and_reconstruct(model: type[nn.Module], units: list[tuple[str, ...]]) -> None:
    """Branches joined by a concat, a parameter read in forward, a skip spanning two blocks, a gate:
    each cuts where one tensor carries everything, the units compose to the network, and QDrop runs
    on them, ending every weight on its grid."""
    net, calib, qm = _prepared(model=model())
    blocks = find_blocks(qm, model=net)
    assert [b.layers for b in blocks] == units
    x = calib
    for block in blocks:
        x = propagate(segment_module(qm.net, block), x)
    assert torch.allclose(x, qm(calib).detach(), atol=1e-6)
    stats = reconstruct(qm, net, calib, iters=5, batch_size=16, drop_prob=0.5)
    assert len(stats) == len(units) and all(s["loss_after"] >= 0 for s in stats)
    for name, fq in qm.weight_quantizers():
        w = qm.layer(name).weight.detach()
        assert torch.equal(fq(w), w)


def test_units_compose_to_the_network() -> None:
    _, calib, qm = _prepared()
    x = calib
    for block in find_blocks(qm):
        x = propagate(segment_module(qm.net, block), x)
    assert torch.allclose(x, qm(calib).detach(), atol=1e-6)


def test_units_refuse_models_they_cannot_cut() -> None:
    qm = prepare(TwoInputs().eval(), parse_scheme("w4"))
    with pytest.raises(QuantbenchError, match="one input"):
        find_blocks(qm)
    _, _, qm = _prepared()
    with pytest.raises(QuantbenchError, match="granularity"):
        find_blocks(qm, "layer")


# ----------------------------------------------------------------------------- reconstruction


def test_block_reconstruction_beats_layerwise_adaround_on_the_block_output() -> None:
    """Weights only (3 bits), the block straight on the image: both methods see the same block input,
    so the block's output error compares the rounding choices alone. AdaRound fits each conv's own
    output; block reconstruction fits the block output, where conv2 can make up for conv1's error."""
    model = BlockFirst().eval()
    (_, calib, ada), (_, _, blk), (_, _, nearest) = (_prepared("w3", model=model) for _ in range(3))
    adaround(ada, model, calib, iters=300, batch_size=16)
    reconstruct(blk, model, calib, iters=300, batch_size=16)
    block = find_blocks(blk)[0]
    assert block.layers == ("c1", "c2")
    with torch.no_grad():
        ref = F.relu(model.c2(F.relu(model.c1(calib))) + calib)
        e_nearest, e_ada, e_blk = (float((segment_module(qm.net, block)(calib) - ref).pow(2).mean())
                                   for qm in (nearest, ada, blk))
    assert e_ada < e_nearest
    assert e_blk < 0.8 * e_ada, (e_nearest, e_ada, e_blk)


def test_weights_end_on_the_grid_and_steps_are_learned() -> None:
    model, calib, qm = _prepared("w3a4")
    w0 = {n: qm.layer(n).weight.detach().clone() for n, _ in qm.weight_quantizers()}
    s0 = {n: fq.scale.clone() for n, fq in qm.act_quantizers()}
    stats = reconstruct(qm, model, calib, iters=60, batch_size=16, drop_prob=0.5)
    assert [s["block"] for s in stats] == ["stem", "c1..c2", "fc"]
    for name, fq in qm.weight_quantizers():
        w = qm.layer(name).weight.detach()
        assert torch.equal(fq(w), w)
        s = broadcast_param(fq.qparams()[0], w, fq.spec)
        codes, floor = torch.round(w / s), torch.floor(w0[name] / s)
        assert (((codes == floor) | (codes == floor + 1)) | (codes == fq.spec.qmin) | (codes == fq.spec.qmax)).all()
    assert any(not torch.equal(fq.scale, s0[n]) for n, fq in qm.act_quantizers())
    assert all(not isinstance(fq.scale, nn.Parameter) for _, fq in qm.act_quantizers())


def test_qdrop_unit_input_is_float_unquantized_or_quantized_never_a_mix() -> None:
    """QDrop's reference feeds a block the float network's value or the quantized network's value,
    quantized, per element. With ``share_input_mask`` the quantizer on the unit input drops exactly
    the elements that took the float value: it reuses the input mask instead of drawing its own;
    without it (the default) it draws its own."""
    from quantbench.quant.brecq import LearnedActQuant

    model, calib, qm = _prepared("w4a4")
    block = find_blocks(qm)[1]
    assert block.layers == ("c1", "c2")
    # two quantizers on the block input: c1 reads it at 4 bits, the residual add at 8 (QuantPlan.joins)
    assert len(block.input_quantizers) == 2 and set(block.input_quantizers) <= set(block.act_quantizers)
    assert sorted(qm.net.get_submodule(n).spec.bits for n in block.input_quantizers) == [4, 8]
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if isinstance(module, LearnedActQuant) and module.dropping and any(
                module.fq[0] is qm.net.get_submodule(n) for n in block.input_quantizers):
            assert module.input_keep is not None  # the unit's mask, not a fresh draw
            q = lsq_fake_quantize(args[0], module.scale.abs(), module.z, module.fq[0].spec, 1.0)
            seen.append((args[0].detach(), out.detach(), module.input_keep.clone(), q.detach()))

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        reconstruct(qm, model, calib, iters=3, batch_size=16, drop_prob=0.5, share_input_mask=True)
    finally:
        handle.remove()
    assert len(seen) == 3 * 2  # each step, each input quantizer
    for x, out, keep, q in seen:
        assert 0.3 < float(keep.mean()) < 0.7
        assert torch.equal(out[keep == 1], x[keep == 1])  # float elements pass unquantized
        assert torch.allclose(out[keep == 0], q[keep == 0], atol=1e-6)  # the others are quantized
        assert not torch.equal(out, x)
    _, _, qm = _prepared("w4a4")
    seen.clear()
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        with pytest.raises(AssertionError):  # the default: the input quantizer draws its own mask
            reconstruct(qm, model, calib, iters=3, batch_size=16, drop_prob=0.5)
    finally:
        handle.remove()


def test_qdrop_with_p0_is_brecq_and_the_algorithms_are_registered() -> None:
    model, calib = TinyRes().eval(), _images()
    cfgs = {name: PTQConfig("w4a4", name, calib_size=64, adaround_iters=30) for name in ("brecq", "qdrop")}
    manual = {}
    for p in (0.0, 0.5):
        qm = calibrate(prepare(model, cfgs["brecq"].plan()), calib, n_images=64, batch_size=64)
        reconstruct(qm, model, calib, n_images=64, iters=30, drop_prob=p)
        manual[p] = qm
    brecq, qdrop = (quantize_ptq(model, cfgs[name], calib) for name in ("brecq", "qdrop"))
    assert ALGOS.get("qdrop").drop_prob == 0.5 and ALGOS.get("brecq").drop_prob == 0.0

    def same(a: nn.Module, b: nn.Module) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))

    assert same(manual[0.0], brecq)  # QDrop's code path with p = 0 is BRECQ, bit for bit
    assert same(manual[0.5], qdrop)
    assert not same(brecq, qdrop)  # dropping changes what is learned
    assert parse_method("w4a4:qdrop-flint8").label() == "w4a4:qdrop-flint8"
    # reconstruction options reach reconstruct(): QDrop told p = 0 is BRECQ; a method without it refuses them
    assert same(quantize_ptq(model, cfgs["qdrop"], calib, reconstruct_options={"drop_prob": 0.0}), brecq)
    with pytest.raises(QuantbenchError, match="w4a4:mse: reconstruction options given to a method without"):
        quantize_ptq(model, PTQConfig("w4a4", "mse"), calib, reconstruct_options={"seed": 1})


def test_pdquant_is_qdrop_with_the_prediction_term() -> None:
    model, calib = TinyRes().eval(), _images()
    pd, qdrop = (PTQConfig("w3a4", name, calib_size=64, adaround_iters=30) for name in ("pdquant", "qdrop"))
    assert ALGOS.get("pdquant").pd_weight == 5.0 and ALGOS.get("qdrop").pd_weight == 0.0
    assert parse_method("w4a4:pdquant-flint8").label() == "w4a4:pdquant-flint8"
    a = quantize_ptq(model, pd, calib)
    b = quantize_ptq(model, qdrop, calib, reconstruct_options={"pd_weight": 5.0})
    c = quantize_ptq(model, qdrop, calib)
    sa, sb, sc = (list(m.state_dict().values()) for m in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(sa, sb, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(sa, sc, strict=True))
    assert PTQConfig("w4a4", "pdquant").iterations() == 3000 and PTQConfig("w4a4", "pdquant").plan().has_asymmetric_weights


def test_each_algorithm_has_its_own_step_default_and_results_store_the_count_used() -> None:
    assert PTQConfig("w4a4", "qdrop").iterations() == PTQConfig("w4a4", "brecq").iterations() == 3000
    assert PTQConfig("w4a8", "adaround").iterations() == 1000
    assert PTQConfig("w4a4", "qdrop", adaround_iters=40).iterations() == 40  # an explicit count wins
    assert PTQConfig("w4a4", "qdrop").resolved().adaround_iters == 3000
    assert PTQConfig("w8a8", "mse").resolved().adaround_iters is None  # no rounding optimiser, no count
    assert parse_method("w4a4:qdrop", adaround_iters=None).iterations() == 3000


def test_fisher_weighting_and_stage_units_run() -> None:
    model, calib, qm = _prepared("w4a8")
    stats = reconstruct(qm, model, calib, iters=20, fisher=True, granularity="stage")
    assert len(stats) == 3 and all(s["loss_after"] == s["loss_after"] for s in stats)  # finite, not NaN


def test_progress_lines_per_block(capsys: pytest.CaptureFixture[str]) -> None:
    model, calib, qm = _prepared("w4a8")
    reconstruct(qm, model, calib, iters=2, progress=True)
    err = capsys.readouterr().err
    assert "reconstruct 2/3 c1..c2 (2 layers): output loss" in err
    lines = [line for line in err.splitlines() if "output loss" in line]
    assert len(lines) == 3 and all(" left)" in line for line in lines[:2]) and lines[2].endswith(" s)")  # ETA
    reconstruct(qm, model, calib, iters=2)
    assert capsys.readouterr().err == ""


def test_fused_act_quantizer_matches_lsq() -> None:
    spec = QuantSpec(bits=4, signed=False, symmetric=False)
    x = (2 * torch.randn(4, 3, 5, 5)).requires_grad_()
    s = torch.tensor(0.3, requires_grad=True)
    g = torch.randn(4, 3, 5, 5)
    y1 = lsq_fake_quantize(x, s, torch.tensor(2), spec, 0.1)
    gx1, gs1 = torch.autograd.grad((y1 * g).sum(), [x, s])
    y2 = _ActQuant.apply(x, s, torch.tensor(2.0), spec.qmin, spec.qmax, 0.1, None)
    gx2, gs2 = torch.autograd.grad((y2 * g).sum(), [x, s])
    assert torch.equal(y1, y2) and torch.allclose(gx1, gx2) and torch.allclose(gs1, gs2)
    keep = (torch.rand(4, 3, 5, 5) < 0.5).float()
    y3 = _ActQuant.apply(x, s, torch.tensor(2.0), spec.qmin, spec.qmax, 0.1, keep)
    assert torch.equal(y3, torch.where(keep == 1, x, y1))  # kept elements are x exactly
    gx3, gs3 = torch.autograd.grad((y3 * g).sum(), [x, s])
    ref = keep * x + (1 - keep) * lsq_fake_quantize(x, s, torch.tensor(2), spec, 0.1)
    gx4, gs4 = torch.autograd.grad((ref * g).sum(), [x, s])
    assert torch.allclose(gx3, gx4) and torch.allclose(gs3, gs4)  # kept: gradient passes, step learns from none


def test_prediction_difference_term_steers_the_rounding_and_leaves_the_float_model_alone() -> None:
    """PD-Quant's term runs the unit's output through the float rest of the network: it changes what
    is learned, weight 0 is the plain path bit for bit, and the float model the user passed is untouched."""
    states = {}
    for pd_weight in (0.0, 50.0, None):
        model, calib, qm = _prepared("w3a4")
        before = {k: v.clone() for k, v in model.state_dict().items()}
        kwargs = {} if pd_weight is None else {"pd_weight": pd_weight}
        reconstruct(qm, model, calib, iters=40, batch_size=16, drop_prob=0.5, **kwargs)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        assert all(p.requires_grad for p in model.parameters())
        states[pd_weight] = [v.clone() for v in qm.state_dict().values()]
    assert all(torch.equal(a, b) for a, b in zip(states[0.0], states[None], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(states[0.0], states[50.0], strict=True))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"drop_prob": 1.0}, "drop probability"), ({"drop_prob": -0.1}, "drop probability"),
    ({"iters": 0}, "iters"), ({"granularity": "net"}, "granularity"), ({"lr": 0.0}, "lr"),
    ({"pd_weight": -1.0}, "pd_weight must be >= 0"), ({"pd_temperature": 0.0}, "pd_temperature > 0"),
    ({"pd_weight": 1.0, "share_input_mask": True}, "cannot be combined"),
])
def test_refusals_are_one_line(kwargs: dict, match: str) -> None:
    model, calib, qm = _prepared("w4a4")
    with pytest.raises(QuantbenchError, match=match) as info:
        reconstruct(qm, model, calib, **{"iters": 2, **kwargs})
    assert "\n" not in str(info.value)


def test_refuses_companded_weights_and_all_fp32_layers() -> None:
    model = TinyRes().eval()
    with pytest.raises(QuantbenchError, match="companded"):
        reconstruct(prepare(model, parse_scheme("w4", companding="mulaw")), model, _images(8), iters=2)
    chain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    qm = prepare(chain, parse_scheme("w4", first_last="fp32"))
    with pytest.raises(QuantbenchError, match="no layer has a weight quantizer"):
        reconstruct(qm, chain, _images(8), iters=2)
