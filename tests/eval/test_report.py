import json

from eval.report import report_paths, write_report


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
