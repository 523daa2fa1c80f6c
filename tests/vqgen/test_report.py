from pathlib import Path

from vqgen.report import markdown, summarize

CLASSIFIER = {"classifier FID (fashion-mnist CNN)": 3.25, "classifier IS (fashion-mnist CNN)": 7.5,
              "classifier_sha256": "0123456789abcdef" * 4, "classifier_n_samples": 1000,
              "classifier_n_reference": 10000, "classifier_reference_split": "test", "val/accuracy": 0.9}


def test_report_states_the_classifier_protocol():
    records = {"fid": {"fid": 12.0, "is": "IS: unavailable (no Inception logits in fid-helper)"},
               "classifier": CLASSIFIER}
    text = markdown(Path("runs/demo"), summarize(records), records)
    section = text.split("## Samples, small-data classifier")[1].split("## Tokenizer")[0]
    for row in ("| classifier FID (fashion-mnist CNN) | 3.25 |", "| classifier samples scored (N) | 1000 |",
                "| classifier reference images (N) | 10000 |", "| classifier reference split | test |",
                "| classifier sha256 | `0123456789ab` |", "| classifier test accuracy | 0.9 |"):
        assert row in section


def test_report_without_a_classifier_has_no_classifier_section():
    records = {"fid": {"fid": 12.0}}
    assert "small-data classifier" not in markdown(Path("runs/demo"), summarize(records), records)
