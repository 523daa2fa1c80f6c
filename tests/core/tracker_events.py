"""Reading a run's TensorBoard files back offline, as TensorBoard shows them: for the tracking and loop tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def events(run: Path) -> EventAccumulator:
    """Every event file of the run's TensorBoard folder, as TensorBoard reads them (purges applied)."""
    accumulator = EventAccumulator(str(run / "trackers" / "vqgen"), size_guidance={"scalars": 0, "images": 0})
    return accumulator.Reload()


def jsonl_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_scalars_match_metrics_jsonl(run: Path) -> None:
    """Each number of metrics.jsonl at its step, and each step of a tag once: TensorBoard stores float32."""
    accumulator = events(run)
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in jsonl_rows(run):
        for name, value in row.items():
            if name != "step":
                expected.setdefault(name, []).append((row["step"], value))
    assert set(accumulator.Tags()["scalars"]) == set(expected)
    for name, points in expected.items():
        logged = [(event.step, event.value) for event in accumulator.Scalars(name)]
        assert [step for step, _ in logged] == [step for step, _ in points], name
        assert [value for _, value in logged] == pytest.approx([value for _, value in points], rel=1e-6), name
