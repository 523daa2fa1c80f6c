"""`fit`: the loop itself. The Accelerator, the optimizer steps with accumulation and clipping, the
metrics (metrics.jsonl and the trackers of `train.log_with`) and evaluations, the stops on non-finite
numbers or a full disk, and the final `save_pretrained`.

Every network a task trains (its model, then its `networks`) goes through the same steps: one network
is a list of one. Each has its AdamW, its schedule (a function of the global step) and, under fp16, a
GradScaler of its own: Accelerate keeps one scaler for all optimizers and updates it after each
optimizer's step, so a second optimizer would be unscaled by a scale the first one's step had changed
(and `Accelerator.clip_grad_norm_` unscales every optimizer at once, so it cannot be called per network).
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import GradientAccumulationPlugin, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from core import checkpoint
from core.config import check
from core.cpu_threads import LoadFollower
from core.errors import VqgenError
from core.loop import batches
from core.loop.optim import WeightEMA, adamw, scaled_backward, scaled_step, unscale_and_clip, warmup_cosine
from core.loop.task import Network, StepInfo, TrainConfig, TrainTask
from core.loop.tracking import log_pictures, log_row, project_dir, tracking
from core.runs import (
    MetricsLog,
    atomic_path,
    claim_output,
    disk_full_errno,
    disk_full_is_user_error,
    read_json,
    write_json,
)

logger = get_logger(__name__)


@dataclass
class TrainState:
    """Counters saved with every checkpoint."""

    step: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


def fit(task: TrainTask, cfg: TrainConfig, out_dir: str | Path, resume: bool = False) -> Path:
    """Train `task.model` for `cfg.steps` optimizer steps; return the folder of the saved model."""
    check(cfg, "train.")  # a TrainConfig built in Python has not been through the config loader
    out_dir = Path(out_dir)
    accelerator = _accelerator(cfg, out_dir)
    set_seed(cfg.seed)
    with _one_line_if_disk_full(out_dir, lambda: (checkpoint.folders(out_dir) or [None])[-1]):
        _check_run_folder(task, out_dir, resume, accelerator)
    train_loader = batches.train_loader(task, cfg, accelerator.num_processes)
    nets, train_loader = _prepare(_declared(task, cfg), cfg, accelerator, train_loader)
    state = TrainState()
    ema = WeightEMA(nets[0].state.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    parts = checkpoint.Parts([net.state for net in nets], state, ema=ema.model if ema else None)
    resumed_from = checkpoint.resume(accelerator, out_dir, parts) if resume else None
    _save_run_config(task, out_dir, accelerator)  # only now: a refusal above leaves the folder as it was
    if state.step >= cfg.steps and (out_dir / "model").is_dir():
        return out_dir / "model"
    val_loader = batches.val_loader(task, cfg, accelerator)
    run = _Run(task, _training_step(task), cfg, accelerator, nets, ema, out_dir, val_loader, parts, resumed_from)
    micro_batches = batches.endless(train_loader, accelerator, start=state.step * cfg.grad_accum)
    with (_one_line_if_disk_full(out_dir, lambda: run.checkpoint),
          tracking(accelerator, task.run_config, out_dir, state.step)):
        _train(run, state, micro_batches)
        return _save_final(run)


def _declared(task: TrainTask, cfg: TrainConfig) -> list[Network]:
    """The task's model, trained on "loss" by the `train:` optimizer, then the networks it trains beside it."""
    declared = [Network(checkpoint.MAIN, task.model, cfg.optimizer(), "loss"), *getattr(task, "networks", [])]
    checkpoint.check_names([network.name for network in declared])
    return declared


def _training_step(task: TrainTask) -> Callable[[torch.nn.Module, dict, StepInfo], dict[str, torch.Tensor]]:
    """The task's training_step as (model, batch, StepInfo): a task without `networks` takes (model, batch)."""
    if hasattr(task, "networks"):
        return task.training_step
    return lambda model, batch, info: task.training_step(model, batch)


@dataclass
class _Net:
    """A network as the loop trains it."""

    prepared: torch.nn.Module  # what Accelerate made of it (DDP-wrapped on several processes)
    loss: str  # its key in training_step's result
    state: checkpoint.Trained  # the unwrapped network, its optimizer, schedule and loss scaler

    @property
    def name(self) -> str:
        return self.state.name


def _prepare(declared: list[Network], cfg: TrainConfig, accelerator: Accelerator,
             train_loader: DataLoader) -> tuple[list[_Net], DataLoader]:
    """Every network and its optimizer through one `accelerator.prepare`, with its schedule and loss scaler."""
    optimizers = [adamw(network.module, network.optimizer) for network in declared]
    pairs = [item for network, optimizer in zip(declared, optimizers) for item in (network.module, optimizer)]
    *prepared, train_loader = accelerator.prepare(*pairs, train_loader)
    nets = []
    for i, network in enumerate(declared):
        model, optimizer = prepared[2 * i], prepared[2 * i + 1]
        # Stepped by us once per optimizer step: Accelerate's prepared scheduler steps once per process.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, warmup_cosine(network.optimizer, cfg.steps))
        # Accelerate's scaler, unused so far, for the model; a fresh copy of it (same settings) for each other.
        scaler = accelerator.scaler if i == 0 else copy.deepcopy(accelerator.scaler)
        trained = checkpoint.Trained(network.name, accelerator.unwrap_model(model), optimizer, scheduler, scaler)
        nets.append(_Net(model, network.loss, trained))
    return nets, train_loader


def _accelerator(cfg: TrainConfig, out_dir: Path) -> Accelerator:
    # Our micro-batches run on across epochs (`batches.endless`), so an epoch end must not force an update:
    # Accelerate's default sync_with_dataloader=True steps there on fewer micro-batches and restarts
    # its count, which puts every later update at the wrong micro-batch.
    accumulation = GradientAccumulationPlugin(num_steps=cfg.grad_accum, sync_with_dataloader=False)
    return Accelerator(gradient_accumulation_plugin=accumulation, mixed_precision=cfg.mixed_precision,
                       log_with=cfg.log_with or None, project_dir=project_dir(out_dir))


@dataclass
class _Run:
    task: TrainTask
    training_step: Callable[[torch.nn.Module, dict, StepInfo], dict[str, torch.Tensor]]
    cfg: TrainConfig
    accelerator: Accelerator
    nets: list[_Net]  # the task's model first
    ema: WeightEMA | None
    out_dir: Path
    val_loader: DataLoader | None
    parts: checkpoint.Parts
    checkpoint: Path | None  # the newest good checkpoint: the one resumed from, then each one saved


def _train(run: _Run, state: TrainState, micro_batches: Iterator[dict]) -> None:
    cfg, accelerator = run.cfg, run.accelerator
    log = MetricsLog(run.out_dir / "metrics.jsonl")
    if accelerator.is_main_process:
        log.truncate_after(state.step)
    # A context: an error closes the bar before the CLI prints it, on a line of its own.
    with tqdm(total=cfg.steps, initial=state.step, disable=not accelerator.is_main_process, dynamic_ncols=True) as bar:
        started = time.time()
        _set_train_mode(run)
        threads = LoadFollower(accelerator.device.type)
        while state.step < cfg.steps:
            threads.follow()
            metrics = _optimizer_step(run, state.step, micro_batches)
            _step_schedules(run, metrics)
            state.step += 1
            if run.ema is not None:
                run.ema.update(run.nets[0].state.model)
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                record = _reduce(metrics, accelerator) | _learning_rates(run)
                bar.set_postfix({k.removeprefix("train/"): f"{v:.4g}" for k, v in record.items() if k.startswith("train/")})
                if accelerator.is_main_process:
                    _write_row(run, log, {"step": state.step, "elapsed_s": round(time.time() - started, 2), **record})
            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                _evaluate(run, state.step, log)
            if state.step % cfg.save_every == 0 or state.step == cfg.steps:
                _save_checkpoint(run, state.step)


def _set_train_mode(run: _Run) -> None:
    for net in run.nets:
        net.prepared.train()


def _optimizer_step(run: _Run, step: int, micro_batches: Iterator[dict]) -> dict[str, torch.Tensor]:
    """One optimizer step of each network with a loss in training_step's result, over grad_accum
    micro-batches; returns the last micro-batch's metrics."""
    accelerator, (main, *others) = run.accelerator, run.nets
    info = StepInfo(step, {net.name: net.prepared for net in others})
    for _ in range(run.cfg.grad_accum):
        batch = next(micro_batches)
        # accumulate() syncs on every grad_accum-th call to it since the Accelerator was made, and each
        # optimizer step makes exactly grad_accum calls: the update falls on each step's last micro-batch,
        # in a resumed run as in a new one.
        with accelerator.accumulate(*(net.prepared for net in run.nets)):
            metrics = run.training_step(main.prepared, batch, info)
            assert main.loss in metrics, f"training_step returned no '{main.loss}'"
            trained = [net for net in run.nets if net.loss in metrics]
            _stop_if_not_finite(run, "loss", [metrics[net.loss] for net in trained])
            for net in trained:
                scaled_backward(metrics[net.loss], net.state.scaler, run.cfg.grad_accum)
            if accelerator.sync_gradients:
                for net in trained:
                    metrics[_prefixed(net, "grad_norm")] = _update(run, net)
    return metrics


def _prefixed(net: _Net, metric: str) -> str:
    """A network's metric name: "grad_norm" for the model, "discriminator_grad_norm" for the discriminator."""
    return metric if net.name == checkpoint.MAIN else f"{net.name}_{metric}"


def _update(run: _Run, net: _Net) -> torch.Tensor:
    """Unscale, clip to grad_clip and step one network; return its total gradient norm before clipping.

    A finite loss can still have an infinite gradient: clipping turns it into NaN and the optimizer
    would write NaN weights into the next checkpoint, so the run stops. With fp16 the GradScaler skips
    such steps itself.
    """
    optimizer, scaler = net.state.optimizer.optimizer, net.state.scaler  # the torch optimizer inside Accelerate's
    # max_norm=inf only measures: the clip factor is then exactly 1.
    max_norm = run.cfg.grad_clip if run.cfg.grad_clip > 0 else math.inf
    norm = unscale_and_clip(list(net.prepared.parameters()), optimizer, scaler, max_norm)
    if scaler is None:
        _stop_if_not_finite(run, "gradient", [norm])
    scaled_step(optimizer, scaler)
    optimizer.zero_grad(set_to_none=True)
    return norm


def _step_schedules(run: _Run, metrics: dict[str, torch.Tensor]) -> None:
    """Every schedule follows the global step, also that of a network not updated yet (a discriminator
    before its start), for which torch would warn that the schedule stepped before its optimizer."""
    for net in run.nets:
        with warnings.catch_warnings():
            if net.loss not in metrics:
                warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"), UserWarning)
            net.state.scheduler.step()


def _learning_rates(run: _Run) -> dict[str, float]:
    return {_prefixed(net, "lr"): net.state.scheduler.get_last_lr()[0] for net in run.nets}


def _stop_if_not_finite(run: _Run, what: str, tensors: list[torch.Tensor]) -> None:
    finite = torch.stack([torch.isfinite(t.detach()).all() for t in tensors]).all()
    # Every process must take the same branch, or the others wait forever in the next all-reduce.
    bad = run.accelerator.reduce((~finite).float().reshape(1).to(run.accelerator.device), reduction="sum")
    if bad.item() > 0:
        fix = "lower train.lr or use mixed_precision=no"
        raise VqgenError(f"{run.out_dir}: the {what} became NaN or infinite; {_resume_note(run.checkpoint, fix)}")


def _resume_note(last: Path | None, fix: str) -> str:
    """What a stopped run leaves to resume from, and how to go on: true with and without a checkpoint."""
    if last is not None:
        return f"the last good checkpoint, {last}, is intact: {fix}, then pass --resume to continue from it"
    return (f"no checkpoint was saved yet, so a rerun starts from step 0: {fix}, then run it again "
            "(--resume is not needed)")


@contextmanager
def _one_line_if_disk_full(out_dir: Path, last_checkpoint: Callable[[], Path | None]) -> Iterator[None]:
    """A write that failed for lack of room (checkpoint, metrics, model): one line naming the file, if
    the error names it, else the run folder, and what is left to resume from."""
    try:
        yield
    except Exception as err:
        if disk_full_errno(err) is None:
            raise
        note = _resume_note(last_checkpoint(), "free some disk space (or raise your quota or `ulimit -f`)")
        with disk_full_is_user_error(getattr(err, "filename", None) or out_dir, note):  # runs' one wording
            raise


def _check_weights(run: _Run) -> None:
    """Never save non-finite weights: a checkpoint must stay a good place to resume from."""
    models = [*(net.prepared for net in run.nets), *([run.ema.model] if run.ema is not None else [])]
    _stop_if_not_finite(run, "weights", [p for m in models for p in m.parameters()])


def _save_checkpoint(run: _Run, step: int) -> None:
    _check_weights(run)
    run.checkpoint = checkpoint.save_step(run.accelerator, run.out_dir, step, run.parts, run.cfg.keep_checkpoints)


def _reduce(metrics: dict[str, torch.Tensor], accelerator: Accelerator) -> dict[str, float]:
    names = sorted(metrics)
    values = torch.stack([torch.as_tensor(metrics[n], dtype=torch.float32).detach().reshape(()) for n in names])
    values = accelerator.reduce(values.to(accelerator.device), reduction="mean")
    return {f"train/{n}": float(v) for n, v in zip(names, values.cpu())}


def _evaluate(run: _Run, step: int, log: MetricsLog) -> None:
    if run.val_loader is None:
        return
    model = run.ema.model if run.ema is not None else run.nets[0].state.model
    model.eval()
    with torch.no_grad():
        results = run.task.evaluate(model, run.val_loader, run.accelerator)
        if run.accelerator.is_main_process:
            pictures = run.task.after_evaluate(model, step, run.out_dir, run.accelerator)
    _set_train_mode(run)
    if run.accelerator.is_main_process:
        _write_row(run, log, {"step": step, **{k: float(v) for k, v in results.items()}})
        log_pictures(run.accelerator, pictures or {}, step)
        logger.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in results.items()))
    run.accelerator.wait_for_everyone()


def _write_row(run: _Run, log: MetricsLog, row: dict) -> None:
    """A row of metrics.jsonl, and the same numbers to the trackers (main process only)."""
    log.append(row)
    log_row(run.accelerator, row)


def _check_run_folder(task: TrainTask, out_dir: Path, resume: bool, accelerator: Accelerator) -> None:
    claim_output(out_dir, "run")  # a new, empty or run folder only; locked until this process exits
    saved_path = out_dir / "run_config.json"
    if saved_path.exists() and resume:
        saved = read_json(saved_path, "run config")
        live = json.loads(json.dumps(task.run_config))  # as saved: a tuple of settings reads back as a list
        changed = sorted(k for k in set(saved) | set(live) if k != "train" and saved.get(k) != live.get(k))
        if changed:
            raise VqgenError(
                f"{saved_path}: this run was started with other settings ({', '.join(changed)}); "
                "resume with the same config or choose a new --out"
            )
    elif checkpoint.folders(out_dir) and not resume:
        raise VqgenError(f"{out_dir}: holds a run already; pass --resume to continue it or choose a new --out")


def _save_run_config(task: TrainTask, out_dir: Path, accelerator: Accelerator) -> None:
    """run_config.json, written once the data, the batch and the checkpoint to resume from are known to be good."""
    with _one_line_if_disk_full(out_dir, lambda: (checkpoint.folders(out_dir) or [None])[-1]):
        if accelerator.is_main_process:
            write_json(out_dir / "run_config.json", task.run_config)
        accelerator.wait_for_everyone()


def _save_final(run: _Run) -> Path:
    accelerator = run.accelerator
    final = run.out_dir / "model"
    _check_weights(run)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = run.ema.model if run.ema is not None else run.nets[0].state.model
        with atomic_path(final, is_dir=True) as tmp:
            model.save_pretrained(tmp, save_function=accelerator.save)
            run.task.save_extras(tmp)
    accelerator.wait_for_everyone()
    return final
