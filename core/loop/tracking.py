"""Experiment trackers (`train.log_with`): Accelerate's TensorBoard, W&B, MLflow... beside metrics.jsonl.

`fit` opens them once the run folder is claimed and any checkpoint restored, logs the run's config on
every start, every metrics.jsonl row at its step, and the pictures a task's `after_evaluate` wrote, and
closes them at the end. metrics.jsonl stays the record the report reads; trackers are for watching.

A tracker that writes files here (TensorBoard) writes them under OUT/trackers/vqgen/. A resumed run
goes on in the same folder: TensorBoard hides the earlier events past the step it resumes from
(`purge_step`), so every step shows once. W&B and MLflow start a new run of the same name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, get_available_trackers
from accelerate.utils import LoggerType
from PIL import Image

from core.errors import VqgenError

# Accelerate's trackers, less "all": a run logs only where it was told to.
TRACKERS = tuple(t.value for t in LoggerType if t is not LoggerType.ALL)
PROJECT = "vqgen"  # the W&B project and MLflow experiment; TensorBoard's folder under OUT/trackers
FOLDER = "trackers"


def check_installed(names: Iterable[str], key: str = "train.log_with") -> None:
    """One line for trackers whose package is missing (an unknown name is the setting's rule's to refuse)."""
    installed = {t.value for t in get_available_trackers()}
    missing = [name for name in names if name in TRACKERS and name not in installed]
    if missing:
        is_, it = ("is", "it") if len(missing) == 1 else ("are", "them")
        raise VqgenError(f"{key}: {', '.join(missing)} {is_} not installed; pip install {' '.join(missing)}, "
                         f"or remove {it} from {key}")


def project_dir(out_dir: Path) -> Path:
    """The Accelerator's project_dir: where trackers that write files write them."""
    return out_dir / FOLDER


@contextmanager
def tracking(accelerator: Accelerator, config: dict | None, out_dir: Path, step: int | None) -> Iterator[None]:
    """The trackers of `accelerator` open for the run in `out_dir`, which goes on after `step` (None: adds
    to it, hiding nothing); `config` (the run config, nested) logged flat, unless None. With no tracker,
    nothing happens."""
    init_kwargs = {
        # Events of an earlier start past `step` (a killed run's, not in any checkpoint) are hidden.
        "tensorboard": {} if step is None else {"purge_step": step + 1},
        "wandb": {"name": out_dir.name},
        "mlflow": {"run_name": out_dir.name},
    }
    flat = None if config is None else flat_config(config)
    accelerator.init_trackers(PROJECT, config=flat, init_kwargs=init_kwargs)
    try:
        yield
    finally:
        # Not accelerator.end_training(): it also destroys the process group, which a pipeline's later
        # stages still use.
        for tracker in accelerator.trackers:
            tracker.finish()


def flat_config(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """{"train": {"lr": 0.001}} -> {"train.lr": 0.001}: trackers take scalars and text only, so a list
    or None becomes its JSON text ("[0.9, 0.95]", "null"), as does an empty section ("{}")."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat |= flat_config(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value if isinstance(value, bool | int | float | str) else json.dumps(value)
    return flat


def log_row(accelerator: Accelerator, row: dict[str, Any]) -> None:
    """A metrics.jsonl row ({"step": s, name: value...}) to every tracker, at its step."""
    accelerator.log({name: value for name, value in row.items() if name != "step"}, step=row["step"])


def log_pictures(accelerator: Accelerator, pictures: dict[str, Path], step: int) -> None:
    """PNGs a task wrote, by name, to the trackers that take pictures (TensorBoard, W&B, MLflow);
    the others get scalars and the config only. Main process only."""
    for tracker in accelerator.trackers:
        write = _PICTURE_WRITERS.get(tracker.name)
        if write is None:
            continue
        for name, path in pictures.items():
            write(tracker, name, path, step)


def log_pictures_after(out_dir: Path, log_with: list[str], pictures: dict[str, Path], step: int) -> None:
    """Pictures made from a finished run's model (the pipeline's sample grid, drawn from the prior) into
    that run's trackers at its last step `step`, beside what `fit` logged: stage 2 cannot decode its
    own codes (that needs the tokenizer), so its samples are pictured only once they are drawn."""
    if not log_with:
        return
    accelerator = Accelerator(log_with=log_with, project_dir=project_dir(out_dir))
    with tracking(accelerator, None, out_dir, None):
        log_pictures(accelerator, pictures, step)


def _pixels(path: Path) -> np.ndarray:
    """(H, W, 3) uint8."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _tensorboard_picture(tracker: GeneralTracker, name: str, path: Path, step: int) -> None:
    tracker.tracker.add_image(name, _pixels(path), global_step=step, dataformats="HWC")
    tracker.tracker.flush()  # a writer flushes every 2 minutes otherwise: a killed run would lose it


def _wandb_picture(tracker: GeneralTracker, name: str, path: Path, step: int) -> None:
    tracker.log_images({name: [_pixels(path)]}, step=step)


def _mlflow_picture(tracker: GeneralTracker, name: str, path: Path, step: int) -> None:
    tracker.log_artifact(str(path), artifact_path="pictures")  # its file name carries the step


_PICTURE_WRITERS: dict[str, Callable[[GeneralTracker, str, Path, int], None]] = {
    "tensorboard": _tensorboard_picture, "wandb": _wandb_picture, "mlflow": _mlflow_picture,
}
