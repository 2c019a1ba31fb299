"""The recommendation's words follow its numbers: eligibility, measurable speed, busy machines, what to avoid."""

from __future__ import annotations

import pytest

from quantbench.errors import QuantbenchError
from quantbench.experiments.recommend import (
    Candidate,
    Deployment,
    compose_answer,
    cpu_summary,
    non_dominated,
    pareto_rows,
)


def _dep(label: str, engine: str, ms: float, spread: float = 0.02, variant: str | None = None, batch: int = 1,
         share: float | None = 0.01) -> Deployment:
    variant = variant or ("fp32" if label == "fp32" else "int8")
    return Deployment(label, engine, variant, batch, ms, ms - spread, ms + spread, ms * 1.1, share)


def _cands(w4_eligible: bool = True) -> list[Candidate]:
    return [Candidate("fp32", 1_070_000, test_n=2693),
            Candidate("w8a8:mse", 272_000, val_drop=0.1, val_upper=0.4, test_drop=0.1, test_ci=(-0.2, 0.4), test_n=2693),
            Candidate("w4a8:adaround", 150_000, val_drop=2.5 if not w4_eligible else 0.3,
                      val_upper=3.2 if not w4_eligible else 0.8, test_drop=2.4, test_ci=(1.5, 3.3), test_n=2693,
                      eligible=w4_eligible)]


def test_the_fastest_eligible_deployment_is_named_with_its_measured_ratio() -> None:
    deps = [_dep("fp32", "torch", 1.0), _dep("fp32", "openvino", 0.8), _dep("fp32", "onnxruntime", 0.9),
            _dep("w8a8:mse", "openvino", 0.4), _dep("w8a8:mse", "onnxruntime", 1.2)]
    said = compose_answer(_cands(False), deps, machine="CPU X (AVX2, no VNNI)", batch=1, max_drop=1.0)
    first = said["answer"][0]
    assert first.startswith("On CPU X (AVX2, no VNNI): OpenVINO INT8 w8a8:mse")
    assert "2.00x the fastest FP32 deployment (OpenVINO FP32)" in first
    assert "3.9x smaller" in first and "top-1 -0.1 [-0.4, +0.2] points vs FP32" in first
    assert said["choice"] == {"label": "w8a8:mse", "engine": "openvino", "variant": "int8", "batch": 1,
                              "speedup_vs_best_fp32": pytest.approx(2.0), "speedup_range": None}
    avoid = " ".join(said["avoid"])
    assert "w4a8:adaround: drops 2.5 points" in avoid  # not eligible: over the limit on validation
    assert "ONNX Runtime INT8 (w8a8:mse) is slower than its own FP32 here: 1.2 vs 0.9 ms" in avoid


def test_overlapping_intervals_mean_no_speed_claim_and_the_smallest_model_wins() -> None:
    deps = [_dep("fp32", "torch", 1.0, spread=0.1), _dep("w8a8:mse", "torch-int8", 0.95, spread=0.1),
            _dep("w4a8:adaround", "torch-int8", 0.97, spread=0.1)]
    said = compose_answer(_cands(True), deps, machine="M", batch=1, max_drop=1.0)
    assert "no quantized deployment is measurably faster" in said["answer"][0]
    assert "within the timing noise" in said["answer"][0]
    assert said["choice"]["label"] == "w4a8:adaround"  # eligible and smallest
    assert said["choice"]["engine"] is None


def test_a_busy_machine_gets_no_speed_verdict() -> None:
    deps = [_dep("fp32", "torch", 1.0), _dep("w8a8:mse", "torch-int8", 0.3)]
    said = compose_answer(_cands(False), deps, machine="M", batch=1, max_drop=1.0, busy=[0.65])
    text = " ".join(said["answer"] + said["avoid"])
    assert "No speed verdict" in text and "65%" in text
    assert "faster" not in text and "slower" not in text
    assert said["choice"]["busy"] is True


def test_nothing_within_the_limit_recommends_fp32_and_says_so() -> None:
    cands = [Candidate("fp32", 1000, test_n=100),
             Candidate("w4a4:minmax", 200, val_drop=9.0, val_upper=12.0, test_drop=8.0, test_ci=(5, 11), test_n=100,
                       eligible=False)]
    said = compose_answer(cands, [_dep("fp32", "torch", 1.0), _dep("w4a4:minmax", "torch-int8", 0.5)], machine="M",
                          batch=1, max_drop=0.5)
    assert "no quantized model stayed within 0.5 points" in said["answer"][0]
    assert said["choice"]["label"] == "fp32"


def test_refusals_name_what_is_missing() -> None:
    with pytest.raises(QuantbenchError, match="no engine timed FP32 at batch 8"):
        compose_answer(_cands(), [_dep("fp32", "torch", 1.0)], machine="M", batch=8, max_drop=1.0)
    with pytest.raises(QuantbenchError, match="no FP32 reference"):
        compose_answer(_cands()[1:], [], machine="M", batch=1, max_drop=1.0)


def test_pareto_table_marks_only_undominated_deployments() -> None:
    deps = [_dep("fp32", "torch", 1.0), _dep("w8a8:mse", "torch-int8", 0.5), _dep("w8a8:mse", "onnxruntime", 0.7),
            _dep("w4a8:adaround", "torch-int8", 0.45)]
    header, body = pareto_rows(_cands(), deps, (1,))
    marks = {(r[1], r[2]): r[0] for r in body}
    assert marks[("fp32", "PyTorch eager FP32")] == "*"  # no drop: nothing beats it on every cost
    assert marks[("w8a8:mse", "ONNX Runtime INT8")] == ""  # same model slower than on torch-int8
    assert marks[("w4a8:adaround", "PyTorch INT8")] == "*"
    assert header[-1] == "ms @ batch 1 [95% CI]"
    assert non_dominated([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # ties are both on the front


def test_cpu_summary_names_the_int8_facts() -> None:
    assert cpu_summary({"cpu_model": "EPYC", "cpu_flags": {"avx2": True, "avx512f": True,
                                                           "avx512_vnni": True}}) == "EPYC (AVX-512 VNNI)"
    assert cpu_summary({"cpu_model": "Xeon", "cpu_flags": {"amx_int8": True, "avx512_vnni": True}}) == \
        "Xeon (AMX, AVX-512 VNNI)"
    assert cpu_summary({"cpu_model": None, "machine": "aarch64", "cpu_flags": {}}) == "aarch64"


def test_deployments_within_the_noise_of_the_fastest_tie_and_the_smaller_drop_wins() -> None:
    cands = _cands(True)
    deps = [_dep("fp32", "openvino", 3.0), _dep("w4a8:adaround", "openvino", 1.15, spread=0.05),
            _dep("w8a8:mse", "openvino", 1.17, spread=0.05)]
    said = compose_answer(cands, deps, machine="M", batch=1, max_drop=1.0)
    assert said["choice"]["label"] == "w8a8:mse"  # bound 0.4 beats 0.8; 1.15 vs 1.17 ms is noise
    apart = [_dep("fp32", "openvino", 3.0), _dep("w4a8:adaround", "openvino", 0.8, spread=0.05),
             _dep("w8a8:mse", "openvino", 1.17, spread=0.05)]
    assert compose_answer(cands, apart, machine="M", batch=1, max_drop=1.0)["choice"]["label"] == "w4a8:adaround"


def test_a_speed_up_below_the_run_to_run_variation_is_not_called_one() -> None:
    deps = [_dep("fp32", "onnxruntime", 0.280, spread=0.002), _dep("w8a8:mse", "openvino", 0.268, spread=0.002)]
    said = compose_answer(_cands(False), deps, machine="M", batch=1, max_drop=1.0)
    assert "no quantized deployment is measurably faster" in said["answer"][0]
    assert "1.04x is below the 1.05x" in said["answer"][0]


def test_rounds_give_the_answer_its_speed_range() -> None:
    def dep(label: str, engine: str, rounds: tuple[float, ...]) -> Deployment:
        mid = sorted(rounds)[(len(rounds) - 1) // 2]
        return Deployment(label, engine, "fp32" if label == "fp32" else "int8", 1, mid, min(rounds) - 0.01,
                          max(rounds) + 0.01, mid, 0.0, rounds)
    deps = [dep("fp32", "openvino", (3.0, 3.6, 3.3)), dep("w8a8:mse", "openvino", (1.2, 1.8, 1.4))]
    said = compose_answer(_cands(False), deps, machine="M", batch=1, max_drop=1.0)
    assert "(1.67-3.00x across 3 rounds)" in said["answer"][0]
    assert said["choice"]["speedup_range"] == [pytest.approx(3.0 / 1.8), pytest.approx(3.6 / 1.2)]
