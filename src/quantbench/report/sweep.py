"""A sweep's report: one FP32 reference, a pivot of the grid (top-1 and drop per cell), scheme x algorithm,
and (through the rows' ``sweep_cell`` tag) figures against each swept numeric hyper-parameter.

Why a view of its own: a sweep's rows, read as one run, repeat the FP32 model once per cell and
scatter the grid over a long table. A person asks "which cell of my grid is best, and by how
much": rows x columns taken from the grid's own parameters answer that at a glance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError
from quantbench.report.answer import fastest_per_model
from quantbench.report.tables import human_bytes
from quantbench.store import ResultStore

Row = dict[str, Any]
Section = tuple[str, tuple[list[str], list[list[str]]]]

# Cell parameters every row already shows: the model name, the method label (scheme, algorithm), the
# engine and the batch size.
_SHOWN_BY_ROWS = frozenset({"model", "method", "scheme", "algo", "engines", "variants", "batch_sizes"})


def write_sweep_report(store_path: str | Path, sweep_id: str, out_dir: str | Path) -> tuple[Path, Path]:
    """One report over every finished cell of a sweep: the pivot first, then all cells' rows together.

    Raises:
        QuantbenchError: no finished cell of a sweep of that name.

    Example:
        >>> write_sweep_report("runs/quantbench.db", "digits-ptq", "runs/sweeps/digits-ptq")  # doctest: +SKIP
        (PosixPath('runs/sweeps/digits-ptq/report.html'), PosixPath('runs/sweeps/digits-ptq/report.md'))
    """
    from quantbench.report.render import combined_run, render_rows

    with ResultStore(store_path) as store:
        cells = store.sweep_cells(sweep_id)
        if not cells:
            raise QuantbenchError(f"{store_path}: no finished cell of a sweep named {sweep_id!r}")
        runs = [store.run(c["run_id"]) for c in cells.values()]
        per_cell = [store.query(run_id=c["run_id"]) for c in cells.values()]
    params = [c["params"] for c in cells.values()]
    lead, answer = sweep_view(params, per_cell)
    rows = sweep_rows(params, per_cell)
    return render_rows(combined_run(runs, sweep_id, f"sweep {sweep_id} ({len(runs)} cells)", "sweep"), rows,
                       out_dir, lead=lead, answer=answer)


def cell_labels(params: list[dict[str, Any]]) -> list[str]:
    """Per cell, ``[key=value, ...]`` of the parameters that differ between cells and no row shows.

    Without it, two cells of the same model and method (PhiNet with ``hyper.divisor`` 1 and 8, a
    model at two learning rates) would share every row key and the report would keep one of them.

    Example:
        >>> cell_labels([{"model": "phinet", "hyper": {"divisor": 1}}, {"model": "phinet", "hyper": {"divisor": 8}}])
        ['[hyper.divisor=1]', '[hyper.divisor=8]']
        >>> cell_labels([{"scheme": "w8a8"}, {"scheme": "w4a8", "plan": "mixed:170"}])
        ['', '[plan=mixed:170]']
    """
    flat = [_flatten(p) for p in params]
    keys = sorted({k for p in flat for k in p} - _SHOWN_BY_ROWS)
    varying = [k for k in keys if len({repr(p.get(k)) for p in flat}) > 1]
    labels = []
    for p in flat:
        shown = [f"{k}={p[k]}" for k in varying if p.get(k) is not None]  # unset: the default, not named
        labels.append("[" + ", ".join(shown) + "]" if shown else "")
    return labels


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"hyper": {"divisor": 8}}`` -> ``{"hyper.divisor": 8}`` (the dotted form sweep files use)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fp32_size(rows: Sequence[Row]) -> Any:
    """The FP32 model's file size in a cell's rows (None when not stored): tells apart models that tie on top-1."""
    return next((r["value"] for r in rows if r["method"] == "fp32" and r["metric"] == "size_bytes"), None)


def _fp32_shared(per_cell: Sequence[Sequence[Row]]) -> bool:
    """True when every cell measured the same FP32 model: equal top-1 on as many images and an equal file
    size, per model (two architectures can tie on accuracy; their files differ)."""
    seen: dict[str, set[tuple[Any, ...]]] = {}
    for rows in per_cell:
        size = _fp32_size(rows)
        for r in rows:
            if r["method"] == "fp32" and r["metric"] == "top1" and r["value"] is not None:
                seen.setdefault(r["model"], set()).add((round(r["value"], 9), r["extra"].get("n_images"), size))
    return bool(seen) and all(len(v) == 1 for v in seen.values())


def sweep_rows(params: list[dict[str, Any]], per_cell: Sequence[Sequence[Row]]) -> list[Row]:
    """All cells' rows for the tables and figures: the model named with its cell label, and a shared FP32
    model's rows kept once (from the first cell) instead of once per cell.

    Example:
        >>> r = {"model": "m", "method": "fp32", "engine": "torch", "metric": "top1", "batch": None,
        ...      "value": 90.0, "extra": {"n_images": 10}}
        >>> len(sweep_rows([{"method": "a"}, {"method": "b"}], [[r], [r]]))
        1
    """
    shared = _fp32_shared(per_cell)
    labels = cell_labels(params)
    cells = _varying(params)
    seen: set[tuple[Any, ...]] = set()
    out = []
    for rows, label, cell in zip(per_cell, labels, cells, strict=True):
        for r in rows:
            if shared and r["method"] == "fp32":
                key = (r["model"], r["engine"], r["metric"], r["batch"], repr(r["extra"].get("epoch")))
                if key in seen:
                    continue
                seen.add(key)
                out.append(r)
            else:  # the cell's parameters travel with its rows: figures against a swept hyper-parameter read them
                out.append({**r, "model": f"{r['model']} {label}".rstrip(),
                            "extra": {**(r.get("extra") or {}), "sweep_cell": cell}})
    return out


def _varying(params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell, the flattened parameters that differ between cells and no row shows (as :func:`cell_labels`)."""
    flat = [_flatten(p) for p in params]
    keys = sorted({k for p in flat for k in p} - _SHOWN_BY_ROWS)
    varying = [k for k in keys if len({repr(p.get(k)) for p in flat}) > 1]
    return [{k: p.get(k) for k in varying} for p in flat]


def _grid_keys(flat: list[dict[str, Any]]) -> list[str]:
    """The parameters that vary between cells; a ``SCHEME:ALGO`` method grid splits into scheme and algo."""
    keys = [k for k in sorted({k for p in flat for k in p}) if len({repr(p.get(k)) for p in flat}) > 1]
    if "method" in keys and all(":" in str(p.get("method", "")) for p in flat):
        for p in flat:
            p["scheme"], p["algo"] = str(p["method"]).split(":", 1)
        split = [k for k in ("scheme", "algo") if len({p[k] for p in flat}) > 1]
        keys = [k for k in keys if k != "method"] + split if len(split) == 2 else keys
    return sorted(keys, key=lambda k: (k not in ("scheme", "model"), k))


def _order(values: set[str], raw: dict[str, Any]) -> list[str]:
    def key(v: str) -> tuple[int, float, str]:
        x = raw.get(v)
        return (0, float(x), v) if isinstance(x, (int, float)) and not isinstance(x, bool) else (1, 0.0, v)

    return sorted(values, key=key)


def sweep_view(params: list[dict[str, Any]], per_cell: Sequence[Sequence[Row]]) -> tuple[list[Section], list[str]]:
    """(sections, answer): the FP32 reference, the grid pivot (top-1 and drop), scheme x algorithm.

    Example:
        >>> secs, answer = sweep_view([{"method": "w8a8:mse"}], [[]])
        >>> answer[0][:38]
        'No cell of this sweep stored a top-1 a'
    """
    flat = [_flatten(p) for p in params]
    keys = _grid_keys(flat)
    points = []  # (grid values, variant, top1 row, drop row or None)
    most_variants = 0
    for p, rows in zip(flat, per_cell, strict=True):
        tops = {(r["method"], r["engine"]): r for r in rows if r["metric"] == "top1" and r["value"] is not None}
        drops = {(r["method"], r["engine"]): r for r in rows if r["metric"] == "top1_drop" and r["value"] is not None}
        quant = [k for k in tops if k[0] != "fp32"] or list(tops)
        grid = {key: str(p.get(key)) for key in keys}
        most_variants = max(most_variants, len(quant))
        for k in quant:
            points.append((grid, f"{k[0]} / {k[1]}", tops[k], drops.get(k)))
    if not points:
        speed = fastest_per_model([r for rows in per_cell for r in rows])
        return [], speed or ["No cell of this sweep stored a top-1 accuracy or a latency; the tables below list "
                             "what the cells measured."]
    if most_variants > 1 or not keys:  # several variants per cell: the variant is a key too
        keys = [*keys, "variant"]
        points = [({**g, "variant": v}, v, t, d) for g, v, t, d in points]
    raw = {str(p.get(k)): p.get(k) for p in flat for k in keys}

    sections: list[Section] = []
    fp32 = _fp32_reference(per_cell, cell_labels(params))
    if fp32:
        sections.append(("Sweep: FP32 reference", fp32))
    sections.append(_pivot(points, keys, raw) if _is_grid(points, keys) else _per_cell(points, keys, raw))
    if {"scheme", "algo"} <= set(keys) and keys[:2] != ["scheme", "algo"] and len(keys) > 2:
        sections.append(_scheme_by_algo(points))
    return sections, _sweep_answer(points, fp32, len(per_cell), keys)


def _cell(t: Row, d: Row | None) -> str:
    return f"{t['value']:.2f}" + (f" (drop {d['value']:.2f})" if d else "")


def _is_grid(points: list[tuple[dict[str, str], str, Row, Row | None]], keys: list[str]) -> bool:
    """True when the cells fill at least half of a rows x columns pivot of at most three keys; a list of
    one-parameter-at-a-time cells (a study's sweep over layers, then alpha, then beta) is not a grid."""
    if len(keys) > 3:
        return False
    rows = {g[keys[0]] for g, *_ in points}
    cols = {tuple(g[k] for k in keys[1:]) for g, *_ in points}
    filled = {(g[keys[0]], tuple(g[k] for k in keys[1:])) for g, *_ in points}
    return 2 * len(filled) >= len(rows) * len(cols)


def _pivot(points: list[tuple[dict[str, str], str, Row, Row | None]], keys: list[str],
           raw: dict[str, Any]) -> Section:
    """The first key down, the others across: the grid at a glance."""
    row_key, col_keys = keys[0], keys[1:]
    cols = _order({", ".join(f"{k}={g[k]}" for k in col_keys) for g, *_ in points}, raw) if col_keys else [""]
    body = []
    for rv in _order({g[row_key] for g, *_ in points}, raw):
        line = [rv]
        for c in cols:
            hit = [(t, d) for g, _, t, d in points
                   if g[row_key] == rv and ", ".join(f"{k}={g[k]}" for k in col_keys) == c]
            line.append(_cell(*hit[0]) if hit else "–")
        body.append(line)
    header = [row_key] + ([c for c in cols] if col_keys else ["top-1 % (drop vs FP32, points)"])
    return (f"Sweep: top-1 % (drop vs FP32, points) by {' x '.join(keys)}", (header, body))


def _per_cell(points: list[tuple[dict[str, str], str, Row, Row | None]], keys: list[str],
              raw: dict[str, Any]) -> Section:
    """One line per cell (and variant), naming only the parameters the cell sets."""
    cell_keys = [k for k in keys if k != "variant"]

    def sort_key(point: tuple[dict[str, str], str, Row, Row | None]) -> tuple[Any, ...]:
        g = point[0]
        out: list[Any] = []
        for k in cell_keys:
            x = raw.get(g[k])
            out += [g[k] == "None", float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else 0.0,
                    g[k]]
        return (*out, point[1])

    body = []
    for g, variant, t, d in sorted(points, key=sort_key):
        line = [_cell_name(g)] + ([variant] if "variant" in keys else []) + [_cell(t, d)]
        body.append(line)
    header = ["cell (parameters it sets)"] + (["variant"] if "variant" in keys else []) + [
        "top-1 % (drop vs FP32, points)"]
    return ("Sweep: top-1 % (drop vs FP32, points) per cell", (header, body))


def _cell_name(g: dict[str, str]) -> str:
    """``k=v`` of the parameters a cell sets (an unset one is the default, not named); no variant."""
    return ", ".join(f"{k}={v}" for k, v in g.items() if k != "variant" and v != "None") or "the defaults"


def _scheme_by_algo(points: list[tuple[dict[str, str], str, Row, Row | None]]) -> Section:
    """Scheme rows x algorithm columns, the best top-1 over the other grid keys in each cell."""
    schemes = sorted({g["scheme"] for g, *_ in points})
    algos = sorted({g["algo"] for g, *_ in points})
    body = []
    for s in schemes:
        line = [s]
        for a in algos:
            vals = [t["value"] for g, _, t, _ in points if g["scheme"] == s and g["algo"] == a]
            line.append(f"{max(vals):.2f}" if vals else "–")
        body.append(line)
    return ("Sweep: scheme x algorithm (best top-1 % over the other grid keys)", (["scheme", *algos], body))


def _fp32_reference(per_cell: Sequence[Sequence[Row]], labels: Sequence[str] | None = None,
                    ) -> tuple[list[str], list[list[str]]] | None:
    """One line per distinct FP32 model of the sweep (one line in all when every cell shares it), named
    with the cells it came from (``labels``: :func:`cell_labels`), so nine lines never all read "phinet"."""
    seen: dict[tuple[Any, ...], list[str]] = {}
    cells_of: dict[tuple[Any, ...], list[str]] = {}
    for i, rows in enumerate(per_cell):
        top = next((r for r in rows if r["method"] == "fp32" and r["metric"] == "top1" and r["value"] is not None),
                   None)
        if top is None:
            continue
        size = _fp32_size(rows)
        e = top["extra"]
        ci = f" [{e['ci_low']:.2f}, {e['ci_high']:.2f}]" if "ci_low" in e and "ci_high" in e else ""
        key = (top["model"], round(top["value"], 9), e.get("n_images"), size)  # equal accuracy, other model: 2 lines
        seen.setdefault(key, [top["model"], f"{top['value']:.2f}{ci}", str(e.get("n_images", "–")), human_bytes(size)])
        if labels and labels[i]:
            cells_of.setdefault(key, []).append(labels[i])
    if not seen:
        return None
    if len(seen) > 1:
        for key, line in seen.items():
            named = cells_of.get(key, [])
            more = f" and {len(named) - 2} more cells" if len(named) > 3 else ""
            line[0] = " ".join([line[0], *(named if len(named) <= 3 else named[:2])]) + more
    return ["model", "FP32 top-1 % [95% CI]", "images", "size on disk"], list(seen.values())


def _sweep_answer(points: list[tuple[dict[str, str], str, Row, Row | None]],
                  fp32: tuple[list[str], list[list[str]]] | None, n_cells: int, keys: list[str]) -> list[str]:
    def name(g: dict[str, str]) -> str:
        return _cell_name(g) + (f" ({g['variant']})" if "variant" in g else "")

    def drop(d: Row | None) -> str:
        return f", {d['value']:.2f} points below FP32" if d and d["value"] >= 0 else (
            f", {-d['value']:.2f} points above FP32" if d else "")

    best = max(points, key=lambda p: p[2]["value"])
    worst = min(points, key=lambda p: p[2]["value"])
    n = best[2]["extra"].get("n_images")
    over = [k for k in keys if k != "variant"]
    out = [f"Across {n_cells} cells" + (f" over {', '.join(over)}" if over else "") + f", the most accurate is {name(best[0])} with "
           f"{best[2]['value']:.2f}% top-1{drop(best[3])}" + (f" on {n:,} images." if n else ".")]
    if worst is not best:
        out.append(f"The least accurate is {name(worst[0])} with {worst[2]['value']:.2f}%{drop(worst[3])}.")
    if fp32 and len(fp32[1]) == 1:
        out.append(f"One FP32 reference for every cell: {fp32[1][0][0]} at {fp32[1][0][1]}% top-1.")
    return out
