"""``compare``: per-image hits stored by evaluation rows pair two runs on the same images; otherwise the
comparison says why and falls back to the unpaired interval; refusals are one line."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
import torch

from quantbench.errors import QuantbenchError
from quantbench.experiments.records import RowKey, accuracy_rows, correct_from_extra
from quantbench.measure.accuracy import evaluate, paired_difference
from quantbench.report.compare import compare_runs, unpaired_difference, write_compare_report
from quantbench.store import Result, ResultStore


def _data(seed=0, n=200):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))


def _run(db, kind, rows, cpu="TestCPU"):
    with ResultStore(db) as store:
        run_id = store.start_run(kind, config={"model": "net", "data": "d"}, environment={"cpu_model": cpu})
        store.add_results(run_id, rows)
        store.finish_run(run_id)
    return run_id


def _eval_rows(model_seed, data="syn", data_seed=0, size=4000, ms=2.0):
    ev = evaluate(_model(model_seed), _data(data_seed), topk=(1,))
    key = RowKey("net", data)
    rows = accuracy_rows(key, ev, "test") + [key.row("size_bytes", size, "bytes"),
                                             key.row("latency_median_ms", ms, "ms", 1, threads=1)]
    return ev, rows


def test_evaluation_rows_store_per_image_hits_that_round_trip():
    ev, rows = _eval_rows(0)
    top1 = next(r for r in rows if r.metric == "top1")
    assert np.array_equal(correct_from_extra(top1.extra), ev.correct)
    assert len(base64.b64decode(top1.extra["correct_bits"])) == (ev.n_images + 7) // 8
    assert correct_from_extra({**top1.extra, "n_images": ev.n_images + 9}) is None  # wrong length: not trusted


def test_same_images_pair_up_and_other_images_fall_back_with_the_reason(tmp_path):
    db = tmp_path / "c.db"
    ev_a, rows_a = _eval_rows(0)
    ev_b, rows_b = _eval_rows(1, size=1000, ms=1.0)
    a, b = _run(db, "eval", rows_a), _run(db, "eval", rows_b)
    c = compare_runs(db, a, b)
    (acc,) = c.accuracy
    want = paired_difference(ev_a.correct, ev_b.correct)
    assert acc["paired"] and acc["diff_points"] == want.diff_points and acc["p_value"] == want.p_value
    assert c.size[0]["ratio"] == 4.0 and c.latency[0]["ratio"] == 0.5 and c.notes == []
    # the same model on other images (another data seed): no pairing, and the reason is given
    _, rows_c = _eval_rows(1, data_seed=5)
    c2 = compare_runs(db, a, _run(db, "eval", rows_c))
    (acc2,) = c2.accuracy
    assert not acc2["paired"] and "scored different images" in acc2["reason"] and "unpaired" in c2.notes[0]
    d, lo, hi = unpaired_difference(next(r for r in map(vars, rows_a) if r["metric"] == "top1"),
                                    next(r for r in map(vars, rows_c) if r["metric"] == "top1"))
    assert (acc2["diff_points"], acc2["ci_low"], acc2["ci_high"]) == pytest.approx((d, lo, hi))


def test_compare_report_opens_with_its_answer_and_embeds_one_figure(tmp_path):
    db = tmp_path / "c.db"
    a, b = _run(db, "eval", _eval_rows(0)[1]), _run(db, "eval", _eval_rows(1, size=1000)[1], cpu="OtherCPU")
    c, html_path, md_path = write_compare_report(db, a, b, tmp_path / "cmp")
    html = html_path.read_text()
    answer = re.search(r"<section class='answer' id='answer'>(.*?)</section>", html).group(1)
    assert "paired on the same 200 images" in answer and "4.00x smaller" in answer
    assert len(re.findall(r"<img ", html)) == 1 and "different machines (TestCPU vs OtherCPU)" in html
    assert (tmp_path / "cmp" / "figures" / "compare.png").is_file() and md_path.read_text().startswith("# ")


def test_refusals_are_one_line(tmp_path):
    db = tmp_path / "c.db"
    a = _run(db, "eval", _eval_rows(0)[1])
    lint = _run(db, "lint", [])
    split = _run(db, "split", [Result("net", "d", "split1", "torch", "split.top1", 50.0, "%", extra={})])
    with pytest.raises(QuantbenchError, match="no run matching"):
        compare_runs(db, a, "no-such-run")
    for other, kind in ((lint, "lint"), (split, "split")):
        with pytest.raises(QuantbenchError, match=rf"\({kind}\): stored no top-1, size or latency rows"):
            write_compare_report(db, a, other, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(QuantbenchError, match="no results store"):
        compare_runs(tmp_path / "missing.db", a, a)
