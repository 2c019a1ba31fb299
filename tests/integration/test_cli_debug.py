"""``quantbench debug`` end to end on digits: the worst layer named first (words and table), ``--json``,
a saved ``.qbm`` debugged against the float model it came from, and its one-line refusals."""

from __future__ import annotations

import json

import pytest
import yaml

from quantbench.cli import main
from quantbench.store import ResultStore

BASE = ["--model", "lenet", "--data", "digits", "--pretrain-epochs", "3", "--calib-size", "128", "--no-progress"]


def _debug(tmp, *extra):
    return ["debug", *BASE, "--method", "w2a4:mse", "--debug-images", "128", *extra]


@pytest.fixture(scope="module")
def debugged(tmp_path_factory):
    """One stored ``debug --json`` run: its record and the store's path."""
    tmp = tmp_path_factory.mktemp("debug")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([*_debug(tmp), "--store", str(tmp / "q.db"), "--out", str(tmp / "run"), "--json"]) == 0
    return json.loads(buf.getvalue().strip().splitlines()[-1]), tmp


def test_json_record_ranks_layers_and_rows_are_stored(debugged):
    rec, tmp = debugged
    assert rec["n_images"] == 128 and rec["method"] == "w2a4:mse"
    assert rec["quant_top1"] < rec["fp32_top1"]
    assert [x["rank"] for x in rec["layers"]] == [1, 2, 3, 4] and rec["worst"] == rec["layers"][0]["layer"]
    recov = [x["recovery_points"] for x in rec["layers"]]
    assert recov[0] == max(recov) > 0
    with ResultStore(tmp / "q.db") as store:
        rows = store.query(run_id=rec["run_id"])
    rec_rows = {r["extra"]["layer"]: r["value"] for r in rows if r["metric"] == "layer_recovery_points"}
    assert rec_rows == {x["layer"]: x["recovery_points"] for x in rec["layers"]}
    modes = {r["extra"]["mode"] for r in rows if r["metric"] == "layer_sqnr_db"}
    assert modes == {"cumulative", "isolated"}
    assert (tmp / "run" / "report.html").is_file()


def test_printed_table_names_the_worst_layer_first_in_words(debugged, capsys):
    rec, tmp = debugged
    assert main([*_debug(tmp), "--no-store", "--out", str(tmp / "text")]) == 0
    lines = capsys.readouterr().out.splitlines()
    worst = rec["worst"]
    assert lines[1].startswith(f"Quantizing {worst} loses most: leaving it in float recovers +")
    assert "isolated SQNR" in lines[1]
    header = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    first_row = lines[header + 2].split()
    assert first_row[:2] == ["1", worst]


def test_a_saved_qbm_debugs_like_quantizing_here_and_a_foreign_one_is_refused(debugged, tmp_path, capsys):
    rec, tmp = debugged
    qdir = tmp_path / "q"
    assert main(["quantize", *BASE, "--method", "w2a4:mse", "--no-store", "--out", str(qdir)]) == 0
    capsys.readouterr()
    made = yaml.safe_load((qdir / "config.yaml").read_text())  # a kept folder says what made it, stored or not
    assert made["kind"] == "ptq" and made["method"] == "w2a4:mse" and made["no_store"] is True
    assert main([*_debug(tmp), "--quantized", str(qdir), "--no-store", "--out", str(tmp / "qbm"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["quantized_from"].endswith(".qbm") and got["method"] == "w2a4:mse"
    assert got["worst"] == rec["worst"] and got["quant_top1"] == pytest.approx(rec["quant_top1"])
    # the same file against float weights it was not made from (no pretraining) / another architecture
    other = ["debug", "--model", "lenet", "--data", "digits", "--no-progress", "--no-store", "--quantized", str(qdir)]
    for extra, needle in ((["--out", str(tmp_path / "o1")], "was not quantized from this float model"),
                          (["--num-classes", "12", "--out", str(tmp_path / "o2")], "does not match the rebuilt model")):
        assert main([*other, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("extra, needle", [
    (["--method", "w8a8:magic"], "unknown algorithm in 'magic'"),
    (["--debug-images", "0"], "debug_images"),
    (["--quantized", "/nonexistent/m.qbm"], "no such file"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, needle):
    assert main(["debug", "--model", "lenet", "--no-progress", "--no-store", "--out", str(tmp_path / "o"),
                 *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
