"""Edge/cloud latency model: edge compute + transfer + cloud compute, and the best split per bandwidth.

``latency = edge_MACs x 2 / edge_GFLOPS + bits / bandwidth + cloud_MACs x 2 / cloud_GFLOPS``.

Convention, stated once because papers mix them up: device rates are in GFLOPS with
FLOPs = 2 x MACs (one multiply + one add); model compute is counted in MACs. Every profile says where
its rate comes from (``source``):

* ``published``: :data:`PROFILES`, the figures a split-computing study used (Raspberry Pi 4B 9.69 GFLOPS,
  Pi Zero 2 W 5.10, NVIDIA A100 19,500);
* ``measured``: a device whose bundle results were imported (``quantbench import``): the FP32 GEMM
  ceiling ``run_bundle.py`` measured there with the runtime it has (:func:`measured_profiles`). A measured
  device of the same name as a published one replaces it: the device itself beats a study's figure;
* ``given``: ``NAME=GFLOPS`` typed by the user.

Example:
    >>> est = estimate_latency(edge_macs=358e6, cloud_macs=7.49e9, coded_bytes=12_000,
    ...                        bandwidth_mbps=10, edge=PROFILES["raspberry-pi-4b"], cloud=PROFILES["nvidia-a100"])
    >>> round(est["total_s"], 3)
    0.084
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError

__all__ = ["PROFILES", "DeviceProfile", "best_split", "estimate_latency", "measured_profiles", "parse_profile",
           "profile_from_ceilings"]

SOURCES = ("published", "measured", "given")


@dataclass(frozen=True)
class DeviceProfile:
    """A device's sustained FP32 compute rate in GFLOPS (FLOPs = 2 x MACs), and where that number comes from.

    Attributes:
        name: the device's name.
        gflops: FP32 rate, GFLOP/s.
        source: ``published`` (a study's figure), ``measured`` (imported GEMM ceiling) or ``given`` (NAME=GFLOPS).
        int8_gops: the measured INT8 ceiling in GOP/s (2 x GMAC/s), where one was measured.
        detail: how the rate was obtained (kernel, runtime, threads; or the study).
    """

    name: str
    gflops: float
    source: str = "published"
    int8_gops: float | None = None
    detail: str = ""

    @property
    def gmacs(self) -> float:
        return self.gflops / 2.0

    @property
    def label(self) -> str:
        """``raspberry-pi-4b (published, 9.69 GFLOPS)``."""
        return f"{self.name} ({self.source}, {self.gflops:.3g} GFLOPS)"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_STUDY = "published FP32 figure used by a split-computing study"
PROFILES = {
    "raspberry-pi-4b": DeviceProfile("raspberry-pi-4b", 9.69, detail=_STUDY),
    "raspberry-pi-zero-2w": DeviceProfile("raspberry-pi-zero-2w", 5.10, detail=_STUDY),
    "nvidia-a100": DeviceProfile("nvidia-a100", 19500.0, detail=_STUDY),
}


def profile_from_ceilings(name: str, ceilings: dict[str, Any]) -> DeviceProfile | None:
    """The measured profile of ``name`` from its ceilings (``run_bundle.py``'s ``ceilings``), None without fp32.

    Example:
        >>> profile_from_ceilings("pi", {"fp32": {"gmacs_per_s": 5.0, "kernel": "gemm", "op": "MatMul"},
        ...                                "int8": None, "threads": 4, "runtime": "onnxruntime 1.20"}).label
        'pi (measured, 10 GFLOPS)'
    """
    fp32, int8 = ceilings.get("fp32") or {}, ceilings.get("int8") or {}
    rate = fp32.get("gmacs_per_s")
    if not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        return None
    threads = ceilings.get("threads")
    detail = (f"FP32 GEMM ceiling measured by run_bundle.py: {fp32.get('op')} {fp32.get('kernel')}, "
              f"{ceilings.get('runtime')}, " + (f"{threads} threads" if threads else "default threads"))
    int8_rate = int8.get("gmacs_per_s")
    return DeviceProfile(name, 2.0 * rate, "measured", 2.0 * int8_rate if isinstance(int8_rate, (int, float)) else None,
                         detail)


def measured_profiles(store_path: str | Path | None) -> dict[str, DeviceProfile]:
    """Devices imported into the store with measured GEMM ceilings (the latest import of each name wins).

    A missing store is an empty one (nothing is created).
    """
    if store_path is None or not Path(store_path).is_file():
        return {}
    from quantbench.store import ResultStore

    out: dict[str, DeviceProfile] = {}
    with ResultStore(store_path) as store:
        runs = store.runs(kind="device")
    for run in runs:  # oldest first
        cfg = run["config"] if isinstance(run.get("config"), dict) else {}
        ceilings, name = cfg.get("ceilings"), cfg.get("device")
        if run.get("status") == "finished" and isinstance(ceilings, dict) and isinstance(name, str):
            prof = profile_from_ceilings(name, ceilings)
            if prof is not None:
                out[name] = prof
    return out


def parse_profile(text: str, store: str | Path | None = None) -> DeviceProfile:
    """A device imported into ``store`` with measured ceilings, a published profile name, or ``NAME=GFLOPS``.

    Example:
        >>> parse_profile("raspberry-pi-4b").source, parse_profile("jetson=236").source
        ('published', 'given')
    """
    measured = measured_profiles(store)
    if text in measured:
        return measured[text]
    if text in PROFILES:
        return PROFILES[text]
    name, sep, rate = text.partition("=")
    try:
        value = float(rate)
    except ValueError:
        value = -1.0
    if not sep or not name or not math.isfinite(value) or value <= 0:
        have = f"; measured in {store}: {', '.join(sorted(measured))}" if measured else ""
        raise QuantbenchError(f"device profile {text!r}: use a published one ({', '.join(PROFILES)}){have}, a device "
                              "imported with `quantbench import` (its measured ceiling), or NAME=GFLOPS "
                              "(e.g. jetson-nano=236)")
    return DeviceProfile(name, value, "given", detail="given as NAME=GFLOPS")


def estimate_latency(*, edge_macs: float, cloud_macs: float, coded_bytes: float, bandwidth_mbps: float,
                     edge: DeviceProfile, cloud: DeviceProfile) -> dict[str, float]:
    """Seconds for edge compute, transfer and cloud compute of ONE sample, and their sum."""
    if bandwidth_mbps <= 0:
        raise QuantbenchError(f"bandwidth must be > 0 Mbit/s, got {bandwidth_mbps}")
    edge_s = 2.0 * edge_macs / (edge.gflops * 1e9)
    transfer_s = coded_bytes * 8.0 / (bandwidth_mbps * 1e6)
    cloud_s = 2.0 * cloud_macs / (cloud.gflops * 1e9)
    return {"edge_s": edge_s, "transfer_s": transfer_s, "cloud_s": cloud_s, "total_s": edge_s + transfer_s + cloud_s}


def best_split(points: list[dict[str, Any]], bandwidths_mbps: list[float], edge: DeviceProfile,
               cloud: DeviceProfile) -> list[dict[str, Any]]:
    """For each bandwidth, the split point (from ``points``: split, edge_macs, cloud_macs, coded_bytes, label)
    with the lowest estimated latency, plus every point's estimate."""
    out = []
    for bw in bandwidths_mbps:
        ests = [{**p, **estimate_latency(edge_macs=p["edge_macs"], cloud_macs=p["cloud_macs"],
                                         coded_bytes=p["coded_bytes"], bandwidth_mbps=bw, edge=edge, cloud=cloud)}
                for p in points]
        best = min(ests, key=lambda e: e["total_s"])
        out.append({"bandwidth_mbps": bw, "best": best, "all": ests})
    return out
