"""The split-computing study's report families: per-regime accuracy vs split with integer block ticks, the
training-regime figure (noise at block 1 vs block 2), and the edge/cloud compute table in MACs and FLOPs."""

from __future__ import annotations

from quantbench.experiments.kinds.split import regime_label
from quantbench.report.figures import make_figures, split_accuracy, split_regimes
from quantbench.report.split_compute import TITLE, compute_table, split_compute_table
from quantbench.store import Result, ResultStore

DEV = {"edge": "raspberry-pi-4b", "cloud": "nvidia-a100", "edge_source": "published", "cloud_source": "published",
       "edge_gflops": 9.69, "cloud_gflops": 19500.0}
MACS = {1: (5_000_000, 35_000_000), 2: (10_000_000, 30_000_000), 3: (15_000_000, 25_000_000)}


def _cell(split, noise, top1, model="net", q=4):
    e = {"split": split, "block": f"layer1.{split - 1}", "qbins": q, "companding": "none", "noise": noise,
         "n_images": 200, "codec": "range-perchannel", "range": "sample", "feature_shape": [16, 32, 32]}
    m = f"split{split}-q{q}-none" + ("" if noise == "none" else f"-{noise}")
    edge, cloud = MACS[split]
    return [Result(model, "d", m, "torch", "split.top1", top1, "%", extra=e),
            Result(model, "d", m, "torch", "split.edge_macs", edge, "MACs", extra=e),
            Result(model, "d", m, "torch", "split.cloud_macs", cloud, "MACs", extra=e),
            Result(model, "d", m, "torch", "split.latency_s", 0.01, "s", extra={**e, **DEV, "bandwidth_mbps": 10.0})]


def _rows(tmp_path, results):
    with ResultStore(tmp_path / "s.db") as store:
        run_id = store.start_run("split", config={}, environment={})
        store.add_results(run_id, results)
        return store.query(run_id=run_id)


def _regime_rows(tmp_path):
    out = []
    for s in (1, 2, 3):
        out += _cell(s, "none", 70.0 + s)
        out += _cell(s, regime_label(True, 1), 75.0 + s)
        out += _cell(s, regime_label(True, 2), 74.0 + s)
        out += _cell(s, regime_label(False, 1), 71.0 + s)
    return _rows(tmp_path, out)


def test_regime_figure_has_both_noise_blocks_evaluated_at_every_split(tmp_path):
    rows = _regime_rows(tmp_path)
    fig = split_regimes(rows)
    assert fig is not None and fig.png.startswith(b"\x89PNG")
    assert "evaluated at every split" in fig.caption and "U(-step/2, step/2)" in fig.caption


def test_accuracy_vs_split_is_one_figure_per_model_and_regime_with_integer_ticks(tmp_path, monkeypatch):
    rows = _regime_rows(tmp_path)
    ticks: list[list[float]] = []
    import quantbench.report.figures.split as mod

    real = mod._block_ticks

    def spy(ax, blocks):
        real(ax, blocks)
        ticks.append(list(ax.get_xticks()))

    monkeypatch.setattr(mod, "_block_ticks", spy)
    figs = split_accuracy(rows)
    assert {f.name for f in figs} == {"split_accuracy_net_no-noise_1", "split_accuracy_net_none",
                                      "split_accuracy_net_noise_1", "split_accuracy_net_noise_2"}
    assert all(t == [1, 2, 3] for t in ticks)  # one tick per evaluated split, none in between
    assert any("fine-tuned with noise at block 2" in f.caption for f in figs)
    names = {f.name for f in make_figures(rows)}
    assert {"split_regimes", "split_accuracy_net_noise_2"} <= names


def test_single_regime_keeps_the_plain_name(tmp_path):
    rows = _rows(tmp_path, [r for s in (1, 3) for r in _cell(s, "none", 60.0 + s)])
    assert [f.name for f in split_accuracy(rows)] == ["split_accuracy"]
    assert split_regimes(rows) is None  # nothing fine-tuned: no regime to compare


def test_compute_table_says_macs_and_flops_and_adds_up(tmp_path):
    header, body = split_compute_table(_regime_rows(tmp_path))
    assert "MACs" in TITLE and "FLOPs = 2 x MACs" in TITLE and "GMACs" in TITLE
    assert header[3:7] == ["edge MACs", "cloud MACs", "edge FLOPs (2 x MACs)", "cloud FLOPs (2 x MACs)"]
    assert [r[0] for r in body] == ["1", "2", "3"]  # one row per split, whatever the regimes
    assert body[0][3:8] == ["5 M", "35 M", "10 M", "70 M", "12.5"]
    assert "raspberry-pi-4b (published, 9.69 GFLOPS)" in header[-2]
    assert body[0][-2] == "1.03"  # 2 x 5 M MACs / 9.69 GFLOPS = 1.03 ms
    h2, b2 = compute_table([{"split": 0, "block": "conv1", "feature_shape": None, "edge_macs": 7.8e9,
                             "cloud_macs": 0}])
    assert b2[0][3] == "7.8 G" and b2[0][5] == "15.6 G" and len(h2) == 8  # no devices: no time columns
