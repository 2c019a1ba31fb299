"""Edge/cloud latency model: edge compute + transfer + cloud compute, and the best split per bandwidth.

``latency = edge_MACs x 2 / edge_GFLOPS + bits / bandwidth + cloud_MACs x 2 / cloud_GFLOPS``.

Convention, stated once because papers mix them up: device rates are in GFLOPS with
FLOPs = 2 x MACs (one multiply + one add); model compute is counted in MACs. The profiles are the
published figures a split-computing study used (Raspberry Pi 4B 9.69 GFLOPS, Pi Zero 2 W 5.10,
NVIDIA A100 19,500); users add their own (:class:`DeviceProfile`).

Example:
    >>> est = estimate_latency(edge_macs=358e6, cloud_macs=7.49e9, coded_bytes=12_000,
    ...                        bandwidth_mbps=10, edge=PROFILES["raspberry-pi-4b"], cloud=PROFILES["nvidia-a100"])
    >>> round(est["total_s"], 3)
    0.084
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from quantbench.errors import QuantbenchError

__all__ = ["PROFILES", "DeviceProfile", "best_split", "estimate_latency", "parse_profile"]


@dataclass(frozen=True)
class DeviceProfile:
    """A device's sustained compute rate in GFLOPS (FLOPs = 2 x MACs)."""

    name: str
    gflops: float

    @property
    def gmacs(self) -> float:
        return self.gflops / 2.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES = {
    "raspberry-pi-4b": DeviceProfile("raspberry-pi-4b", 9.69),
    "raspberry-pi-zero-2w": DeviceProfile("raspberry-pi-zero-2w", 5.10),
    "nvidia-a100": DeviceProfile("nvidia-a100", 19500.0),
}


def parse_profile(text: str) -> DeviceProfile:
    """A known profile name, or ``NAME=GFLOPS`` for your own device."""
    if text in PROFILES:
        return PROFILES[text]
    name, sep, rate = text.partition("=")
    try:
        value = float(rate)
    except ValueError:
        value = -1.0
    if not sep or not name or value <= 0:
        raise QuantbenchError(f"device profile {text!r}: use one of {', '.join(PROFILES)} or NAME=GFLOPS "
                              "(e.g. jetson-nano=236)")
    return DeviceProfile(name, value)


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
