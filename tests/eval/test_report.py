import json

import numpy as np
import pytest

import eval.report
from core.errors import VqgenError
from eval.report import check_report_out, protocol_lines, report_paths, score_line, write_report
from vqgen.cli import main
from vqgen.report import markdown, summarize


def test_report_states_the_protocol(tmp_path):
    metrics = {"fid": 12.5, "kid_mean": 0.01, "is": "IS: unavailable (no Inception logits in fid-helper)",
               "network": "TF Inception 2015-12-05 pool3 (2048-d)", "weights_source": "fid-helper",
               "weights_path": "/x/default_1.pt", "weights_sha": "a16e", "resize": "TF1 bilinear",
               "n_samples": 100, "samples": "s", "reference": "ref.npz",
               "reference_meta": {"n": 1000, "split": "test", "class_counts": [100] * 10}}
    report = write_report(tmp_path, metrics).read_text()
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    for needle in ("| fid | 12.5000 |", "IS: unavailable (no Inception logits in fid-helper)", "N = 100",
                   "N = 1000", "split = test", "10 classes, 100-100 images per class", "TF1 bilinear", "a16e"):
        assert needle in report


FLOOR = {"fid": 41.25, "sfid": 30.5, "kid_mean": 0.02, "precision": 0.61, "recall": 0.45, "n_samples": 1000,
         "reference_meta": {"n": 1000, "split": "test"}, "pr_n": 1000, "pr_k": 3,
         "real_data": {"split": "train", "n": 1000, "fid": 19.5, "sfid": 12.25, "kid_mean": 0.001, "precision": 0.7,
                       "recall": 0.72}}


def test_each_score_is_written_with_the_real_data_floor_beside_it(tmp_path):
    report = write_report(tmp_path, FLOOR).read_text()
    line = score_line(FLOOR)
    for key, value, floor in (("fid", "41.2500", "19.5000"), ("sfid", "30.5000", "12.2500"),
                              ("precision", "0.6100", "0.7000"), ("recall", "0.4500", "0.7200")):
        assert f"| {key} | {value} (real data at N = 1,000: {floor}) |" in report
        assert f"{key}: {value} (real data at N = 1,000: {floor})" in line
    assert "- real data: the first N = 1,000 train images of the reference's data" in report
    assert "- precision/recall, density/coverage: k = 3 nearest neighbours, N = 1,000 images a side" in report
    assert "| real_data |" not in report and "pr_n" not in report  # protocol, not scores
    pipeline = markdown(tmp_path, summarize({"fid": FLOOR}), {"fid": FLOOR})
    assert "| FID | 41.25 (real data at N = 1,000: 19.5) |" in pipeline
    assert "| precision | 0.61 (real data at N = 1,000: 0.7) |" in pipeline and "| density | — |" in pipeline
    assert summarize({"fid": FLOOR})["inception_real_data"]["fid"] == 19.5


def test_a_missing_floor_says_why_once():
    result = {"fid": 3.0, "real_data": "real data: unavailable (pf.npz records no data settings)", "n_samples": 4}
    assert score_line(result) == "fid: 3.0000  n_samples: 4  real data: unavailable (pf.npz records no data settings)"
    assert "- real data: unavailable (pf.npz records no data settings)" in protocol_lines(result)


def test_third_party_reference_is_flagged(tmp_path):
    report = write_report(tmp_path, {"fid": 1.0, "reference_meta": {}}).read_text()
    assert "unknown (third-party statistics" in report


def test_report_paths_beside_a_json_file_or_in_a_folder(tmp_path):
    assert report_paths(tmp_path / "fid.json") == (tmp_path / "fid.json", tmp_path / "fid.md")
    assert report_paths(tmp_path / "eval") == (tmp_path / "eval" / "metrics.json", tmp_path / "eval" / "report.md")
    report = write_report(tmp_path / "fid.json", {"fid": 2.0, "reference_meta": {
        "n": 10, "data": {"spec": "cifar10", "image_size": 64, "channels": 3, "resize": "auto"}}})
    assert report == tmp_path / "fid.md" and json.loads((tmp_path / "fid.json").read_text())["fid"] == 2.0
    assert "reference data: cifar10 at 64 px, channels = 3, resize = auto" in report.read_text()


FID_RESULT = {"fid": 3.0, "network": "TF Inception 2015-12-05 pool3 (2048-d)", "weights_sha": "ab", "reference": "r.npz",
              "reference_meta": {}}


@pytest.mark.parametrize("setup, message", [
    ("foreign json", r"fid.json: exists and is not a `vqgen fid` report; vqgen replaces only its own outputs"),
    ("pipeline run", r"metrics.json: exists and is not a `vqgen fid` report"),
    ("markdown alone", r"fid.md: exists and is not the Markdown of a `vqgen fid` report"),
    ("folder", r"fid.json: is a folder, and a `vqgen fid` report is a file"),
    ("parent is a file", r"file: is a file, not a folder; pass another --out"),
    ("read-only", r"fid.json: is read-only"),
    ("markdown name", r"fid.md: pass --out NAME.json \(NAME.md is written beside it\) or a folder"),
    ("a file not .json", r"ref.npz: pass --out NAME.json \(NAME.md is written beside it\) or a folder"),
])
def test_report_destination_is_checked(tmp_path, setup, message):
    out = tmp_path / "fid.json"
    if setup == "foreign json":
        out.write_text('{"mine": 1}')
    elif setup == "pipeline run":
        out = tmp_path / "run"
        out.mkdir()
        (out / "metrics.json").write_text('{"summary": {}, "stages": {}}')
    elif setup == "markdown alone":
        out.with_suffix(".md").write_text("# my notes")
    elif setup == "folder":
        out.mkdir()
    elif setup == "parent is a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "fid.json"
    elif setup == "read-only":
        write_report(out, FID_RESULT)
        out.chmod(0o444)
    elif setup == "markdown name":
        out = out.with_suffix(".md")
    elif setup == "a file not .json":
        out = tmp_path / "ref.npz"
        out.write_bytes(b"x")
    with pytest.raises(VqgenError, match=message):
        check_report_out(out)


def test_an_earlier_report_may_be_replaced(tmp_path):
    for out in (tmp_path / "fid.json", tmp_path / "eval"):
        check_report_out(out)  # nothing there yet
        write_report(out, FID_RESULT)
        check_report_out(out)
        write_report(out, {**FID_RESULT, "fid": 4.0})
        assert json.loads(report_paths(out)[0].read_text())["fid"] == 4.0


def test_a_report_write_failing_late_is_one_line(tmp_path):
    (tmp_path / "fid.md").mkdir()  # taken by a folder after the check (another process)
    with pytest.raises(VqgenError, match=r"fid.md: the report could not be written \(Is a directory\)"):
        write_report(tmp_path / "fid.json", FID_RESULT)


@pytest.fixture
def scorable(tmp_path, pngs):
    np.savez(tmp_path / "pf.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    return pngs(tmp_path / "samples", 2, 16), tmp_path / "pf.npz"


def test_cli_fid_refuses_a_foreign_out_before_any_work(tmp_path, scorable, capsys):
    samples, ref = scorable
    out = tmp_path / "notes.json"
    out.write_text('{"mine": 1}')
    absent = tmp_path / "absent" / "pt_inception-2015-12-05-00000000.pth"  # never looked for
    rc = main(["fid", "--samples", str(samples), "--ref", str(ref), "--inception-weights", str(absent),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "notes.json: exists and is not a `vqgen fid` report" in err
    assert out.read_text() == '{"mine": 1}'


def test_cli_fid_prints_the_score_when_the_report_cannot_be_written(tmp_path, scorable, random_pth, capsys,
                                                                    monkeypatch):
    samples, ref = scorable
    out = tmp_path / "fid.json"
    real_write = eval.report.write_report

    def taken_meanwhile(path, *args, **kwargs):  # another process takes X.md during the Inception work
        out.with_suffix(".md").mkdir()
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(eval.report, "write_report", taken_meanwhile)
    rc = main(["fid", "--samples", str(samples), "--ref", str(ref), "--inception-weights", str(random_pth),
               "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 2 and "fid: 2048.0000" in captured.out and "n_samples: 2" in captured.out
    assert captured.err.count("\n") == 1 and "the report could not be written" in captured.err


def test_a_second_writer_of_the_same_report_is_refused_before_any_work(tmp_path, scorable, held_elsewhere, capsys):
    samples, ref = scorable
    pid = held_elsewhere(tmp_path / "fid.json")
    absent = tmp_path / "absent" / "pt_inception-2015-12-05-00000000.pth"  # never looked for
    rc = main(["fid", "--samples", str(samples), "--ref", str(ref), "--inception-weights", str(absent),
               "--out", str(tmp_path / "fid.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"another vqgen process (pid {pid}) is writing it" in err


def test_score_table_lists_scores_in_order_with_four_decimals(tmp_path):
    metrics = {**FID_RESULT, "kid_mean": 0.000123456, "is": "IS: unavailable", "n_samples": 10,
               "classifier FID (fashion-mnist CNN)": 3.25, "classifier_n_samples": 10}
    lines = write_report(tmp_path, metrics, title="t").read_text().splitlines()
    assert lines[:9] == ["# t", "", "| metric | value |", "|---|---|", "| fid | 3.0000 |", "| kid_mean | 0.0001 |",
                         "| is | IS: unavailable |", "| classifier FID (fashion-mnist CNN) | 3.2500 |",
                         "| classifier_n_samples | 10 |"]
    assert lines[9:12] == ["", "## Protocol", ""]
