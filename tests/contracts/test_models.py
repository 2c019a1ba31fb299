"""Every registered model honours the zoo contract (parametrized over ``MODELS.names()``).

A new model is tested automatically: it builds, runs on a capped input, traces with
torch.fx to the same output, round-trips through ``load_checkpoint`` and has MACs.
Each model is built once per module (a module-scoped parametrized fixture; pytest groups
the tests by model so only one big VGG is alive at a time).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantbench.models import MODELS, build_model, load_checkpoint, model_info

CAP = 32  # ImageNet-layout models run at 32x32 here; all of them accept it.


@dataclass
class Case:
    name: str
    model: nn.Module
    shape: tuple[int, int, int]
    x: torch.Tensor
    y: torch.Tensor


def capped_shape(name: str) -> tuple[int, int, int]:
    c, h, w = model_info(name)["input_shape"]
    return (c, min(h, CAP), min(w, CAP))


@pytest.fixture(scope="module", params=MODELS.names())
def case(request: pytest.FixtureRequest) -> Case:
    name = request.param
    torch.manual_seed(0)
    model = build_model(name).eval()
    shape = capped_shape(name)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        y = model(x)
    return Case(name, model, shape, x, y)


def test_metadata_is_complete_and_matches_factory(case: Case) -> None:
    info = model_info(case.name)
    assert len(info["input_shape"]) == 3 and all(isinstance(d, int) and d > 0 for d in info["input_shape"])
    assert info["family"] and info["description"]
    params = inspect.signature(MODELS.get(case.name)).parameters
    # Hyper-parameters must be keyword-only: that is how build_model/model_info discover them.
    assert list(params)[:2] == ["num_classes", "in_channels"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(params.values())[2:])
    assert params["num_classes"].default == info["num_classes"]
    assert params["in_channels"].default == info["input_shape"][0]
    assert isinstance(info["hyper"], dict)


def test_forward_gives_finite_logits(case: Case) -> None:
    assert case.y.shape == (2, model_info(case.name)["num_classes"])
    assert torch.isfinite(case.y).all()


def test_num_classes_and_in_channels_are_honoured(case: Case) -> None:
    # Built on the meta device: shapes only, no memory or init cost (VGG is 0.5 GB).
    c, h, w = case.shape
    with torch.device("meta"):
        model = build_model(case.name, num_classes=7, in_channels=c % 3 + 1).eval()
        y = model(torch.empty(2, c % 3 + 1, h, w))
    assert tuple(y.shape) == (2, 7)


def test_fx_symbolic_trace_gives_same_output(case: Case) -> None:
    traced = torch.fx.symbolic_trace(case.model)
    with torch.no_grad():
        torch.testing.assert_close(traced(case.x), case.y, rtol=1e-5, atol=1e-6)


def test_activations_are_modules(case: Case) -> None:
    """Quantizers fuse conv+BN+ReLU by module; a functional ReLU would be invisible to them."""
    graph = torch.fx.symbolic_trace(case.model).graph
    functional = {F.relu, F.relu6, F.hardswish, torch.relu, torch.relu_, torch.sigmoid}
    calls = [n for n in graph.nodes if n.op == "call_function" and n.target in functional]
    calls += [n for n in graph.nodes if n.op == "call_method" and n.target in {"relu", "relu_", "sigmoid"}]
    assert not calls, f"functional activations: {[str(n) for n in calls]}"


def test_state_dict_round_trip(case: Case, tmp_path) -> None:
    path = tmp_path / f"{case.name}.pt"
    torch.save(case.model.state_dict(), path)
    # A fresh model with *uninitialised* storage (meta build + to_empty, no init cost):
    # any tensor the checkpoint fails to fill shows up as a different output.
    with torch.device("meta"):
        fresh = build_model(case.name)
    fresh = load_checkpoint(fresh.to_empty(device="cpu"), path).eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(case.x), case.y, rtol=0, atol=0)


def test_macs_are_counted(case: Case) -> None:
    macs_module = pytest.importorskip("quantbench.measure.macs")
    count_macs = getattr(macs_module, "count_macs", None)
    if count_macs is None:
        pytest.skip("quantbench.measure.macs.count_macs not written yet")
    result = count_macs(case.model, case.shape, batch_size=1)
    assert result.macs > 0
    assert result.flops == 2 * result.macs
