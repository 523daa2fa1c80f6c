"""The settings of a `vqgen pipeline` run folder that a benchmark reads, once its parts are checked."""

from __future__ import annotations

from pathlib import Path

from core.config import load_config
from core.errors import VqgenError
from vqgen.pipeline import PipelineConfig


def pipeline_run_config(run: Path, parts: tuple[str, ...], what: str, fix: str) -> PipelineConfig:
    """RUN/config.yaml's settings; a folder without every one of `parts` is refused in one line saying it
    is not `what` (which parts are missing) and the `fix`."""
    missing = [part for part in parts if not (run / part).exists()]
    if missing:
        raise VqgenError(f"{run}: not {what} (no {', '.join(missing)}); {fix}")
    return load_config(PipelineConfig, run / "config.yaml")
