"""The edge/cloud compute table of a split run: MACs and FLOPs on each side of every evaluated split.

Why a table of its own: split-computing studies quote the edge's and the cloud's share of the model's
compute, and several call multiply-accumulates "GFLOPs" (a ResNet-101 at 224x224 is about 7.8 G MACs,
published as "7.8 GFLOPs"). The table therefore names both units: MACs as counted
(:mod:`quantbench.measure.macs`) and FLOPs = 2 x MACs, and the title says which one a study's
"GFLOPs" usually is. With the run's device profiles it also gives each side's compute time under the
latency model (FLOPs / device GFLOPS; :mod:`quantbench.splitting.latency`). The CLI prints the same
table from the run record that the report builds from the store.

Example:
    >>> header, body = compute_table([{"split": 1, "block": "layer1.0", "feature_shape": [16, 32, 32],
    ...                                "edge_macs": 5_242_880, "cloud_macs": 35_308_160}])
    >>> body[0][3], body[0][5]
    ('5.243 M', '10.49 M')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TITLE = ("Edge / cloud compute per image (MACs; FLOPs = 2 x MACs - a study's 'GFLOPs' of a split are "
         "usually GMACs: compare MACs with MACs)")


def _count(v: float | None) -> str:
    """``5.243 M``, ``7.8 G``: four significant digits with an SI prefix (MACs and FLOPs alike)."""
    if v is None:
        return "–"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.4g} {unit}"
    return f"{v:.4g}"


def compute_table(cells: Sequence[Mapping[str, Any]], edge: Mapping[str, Any] | None = None,
                  cloud: Mapping[str, Any] | None = None) -> tuple[list[str], list[list[str]]]:
    """One row per split: feature shape, edge/cloud MACs and FLOPs, edge share, and modelled compute times.

    Args:
        cells: per split, ``split``, ``block``, ``feature_shape``, ``edge_macs``, ``cloud_macs`` (per image);
            duplicates of a split (one per qbins/companding record) are merged.
        edge / cloud: device profiles (``name``, ``gflops``, ``source``); without them no time columns.

    Returns:
        (header, body) for a report section or ``print_table``.

    Example:
        >>> pi, a100 = {"name": "pi", "gflops": 9.69, "source": "published"}, {"name": "a100", "gflops": 19500}
        >>> compute_table([], pi, a100)[0][-2]
        'edge ms on pi (published, 9.69 GFLOPS)'
    """
    header = ["split", "after block", "feature shape", "edge MACs", "cloud MACs", "edge FLOPs (2 x MACs)",
              "cloud FLOPs (2 x MACs)", "edge share of MACs %"]
    devices = [d for d in (edge, cloud) if d and d.get("gflops")]
    if len(devices) == 2:
        header += [f"{side} ms on {d['name']} ({d.get('source', '?')}, {float(d['gflops']):.3g} GFLOPS)"
                   for side, d in (("edge", edge), ("cloud", cloud)) if d]
    seen: dict[int, Mapping[str, Any]] = {}
    for c in cells:
        seen.setdefault(int(c["split"]), c)
    body = []
    for s, c in sorted(seen.items()):
        e, cl = c.get("edge_macs"), c.get("cloud_macs")
        total = (e or 0) + (cl or 0)
        shape = c.get("feature_shape")
        row = [str(s), str(c.get("block", "?")), "x".join(map(str, shape)) if shape else "–", _count(e), _count(cl),
               _count(None if e is None else 2 * e), _count(None if cl is None else 2 * cl),
               f"{100.0 * (e or 0) / total:.1f}" if total else "–"]
        if len(devices) == 2:
            row += [f"{2 * (m or 0) / (float(d['gflops']) * 1e9) * 1e3:.3g}" for m, d in ((e, edge), (cl, cloud))]
        body.append(row)
    return header, body


def split_compute_table(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """:func:`compute_table` from a run's store rows (``split.edge_macs`` / ``split.cloud_macs`` + devices).

    Example:
        >>> split_compute_table([])[1]
        []
    """
    cells: dict[int, dict[str, Any]] = {}
    edge = cloud = None
    for r in rows:
        e = r.get("extra") or {}
        if r["metric"] in ("split.edge_macs", "split.cloud_macs") and r["value"] is not None:
            c = cells.setdefault(int(e["split"]), {"split": e["split"], "block": e.get("block"),
                                                   "feature_shape": e.get("feature_shape")})
            c[r["metric"][6:]] = r["value"]
        elif r["metric"] == "split.latency_s" and edge is None and e.get("edge_gflops"):
            edge = {"name": e.get("edge"), "gflops": e.get("edge_gflops"), "source": e.get("edge_source")}
            cloud = {"name": e.get("cloud"), "gflops": e.get("cloud_gflops"), "source": e.get("cloud_source")}
    return compute_table(list(cells.values()), edge, cloud)
