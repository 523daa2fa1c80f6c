"""The one Accelerate training loop every stage uses.

A stage supplies a `TrainTask` (model, data sets, `training_step`, `evaluate`); `fit` owns the rest:
the Accelerator, AdamW with weight decay on matrices only, warmup and cosine decay, gradient
accumulation and clipping, an EMA of the weights, the progress bar, `metrics.jsonl`, atomic
checkpoints with exact resume, and the final `save_pretrained`.

`TrainConfig.batch_size` is the GLOBAL batch: each process takes batch_size / (processes * grad_accum)
per micro-batch, so a 2-process run sees the same samples at each step as a 1-process run.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import GradientAccumulationPlugin, set_seed
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm.auto import tqdm

from vqgen import checkpoint
from vqgen.config import check, setting
from vqgen.errors import VqgenError
from vqgen.runs import MetricsLog, atomic_path, claim_output, disk_full_errno, read_json, write_json

logger = get_logger(__name__)
CHECKPOINT = re.compile(r"^step_(\d{8})$")


@dataclass
class TrainConfig:
    steps: int = setting(2000, "optimizer steps", ge=1)
    batch_size: int = setting(64, "global batch, over all processes and accumulation steps", ge=1)
    grad_accum: int = setting(1, "micro-batches per optimizer step", ge=1)
    lr: float = setting(3e-4, "peak learning rate", gt=0, le=10)  # 1e39 overflows float32 inside AdamW
    min_lr_ratio: float = setting(0.1, "cosine decays to lr * min_lr_ratio", ge=0, le=1)
    warmup_steps: int = setting(100, "linear warmup steps", ge=0, le=10**9)
    weight_decay: float = setting(0.0, "applied to matrices only (params with ndim >= 2)", ge=0)
    betas: tuple[float, float] = setting((0.9, 0.95), "AdamW betas", length=2, ge=0, lt=1)
    grad_clip: float = setting(1.0, "max gradient norm; 0 turns clipping off", ge=0)
    ema_decay: float = setting(0.0, "decay of the EMA of weights; 0 turns it off", ge=0, lt=1)
    mixed_precision: str = setting("no", "autocast precision", choices=("no", "fp16", "bf16"))
    eval_every: int = setting(500, "steps between evaluations", ge=1)
    save_every: int = setting(500, "steps between checkpoints", ge=1)
    keep_checkpoints: int = setting(2, "newest checkpoints kept", ge=1)
    log_every: int = setting(10, "steps between metrics lines", ge=1)
    seed: int = setting(0, "seeds the initial weights and the data order", ge=0, le=2**32 - 1)
    num_workers: int = setting(0, "data loader worker processes", ge=0)
    eval_batches: int = setting(0, "val batches per evaluation; 0: the whole val set", ge=0)


class TrainTask(Protocol):
    """What a stage hands to `fit`."""

    model: torch.nn.Module
    train_set: Dataset
    val_set: Dataset | None
    run_config: dict

    def training_step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]: ...

    def evaluate(self, model: torch.nn.Module, loader: Iterable, accelerator: Accelerator) -> dict[str, float]: ...

    def after_evaluate(self, model: torch.nn.Module, step: int, out_dir: Path, accelerator: Accelerator) -> None: ...

    def save_extras(self, model_dir: Path) -> None: ...


class EpochSampler(Sampler[int]):
    """A permutation of the data set seeded by (seed, epoch): the same on every process, and
    reproducible after a resume (a RandomSampler draws from the global RNG instead)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


class WeightEMA:
    """Exponential moving average of the parameters; buffers (codebooks, counters) follow the live model.

    torch's AveragedModel either freezes buffers or averages all of them, integer counters included,
    and the quantizer's buffers need neither.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        ema_params = list(self.model.parameters())
        live_params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, live_params, 1.0 - self.decay)
        for ema_buf, live_buf in zip(self.model.buffers(), model.buffers()):
            ema_buf.copy_(live_buf)


@dataclass
class TrainState:
    """Counters saved with every checkpoint."""

    step: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear, conv, embedding weights) only; never norms, biases or gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def warmup_cosine(cfg: TrainConfig):
    """lr multiplier at optimizer step s: linear warmup, then cosine to min_lr_ratio."""

    def multiplier(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def fit(task: TrainTask, cfg: TrainConfig, out_dir: str | Path, resume: bool = False) -> Path:
    """Train `task.model` for `cfg.steps` optimizer steps; return the folder of the saved model."""
    check(cfg, "train.")  # a TrainConfig built in Python has not been through the config loader
    out_dir = Path(out_dir)
    accelerator = _accelerator(cfg)
    set_seed(cfg.seed)
    with _one_line_if_disk_full(out_dir, lambda: (_checkpoints(out_dir) or [None])[-1]):
        _check_run_folder(task, out_dir, resume, accelerator)
    micro_batch = _micro_batch(cfg, accelerator.num_processes)
    sampler = EpochSampler(len(task.train_set), cfg.seed)
    train_loader = _loader(task.train_set, micro_batch, cfg, sampler=sampler, drop_last=True)
    if len(train_loader) == 0:
        raise VqgenError(f"train.batch_size={cfg.batch_size} is larger than the {len(task.train_set)} training items; lower it")
    optimizer = torch.optim.AdamW(param_groups(task.model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    model, optimizer, train_loader = accelerator.prepare(task.model, optimizer, train_loader)
    # Stepped by us once per optimizer step: Accelerate's prepared scheduler steps once per process.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, warmup_cosine(cfg))
    state = TrainState()
    ema = WeightEMA(accelerator.unwrap_model(model), cfg.ema_decay) if cfg.ema_decay > 0 else None
    parts = checkpoint.Parts(accelerator.unwrap_model(model), optimizer, scheduler, state,
                             ema=ema.model if ema else None, scaler=accelerator.scaler)
    resumed_from = _restore(accelerator, out_dir, parts) if resume else None
    # accumulate() updates on every micro-batch whose count is a multiple of grad_accum: tie that
    # count to our own step counter.
    accelerator.step = state.step * cfg.grad_accum
    if state.step >= cfg.steps and (out_dir / "model").is_dir():
        return out_dir / "model"
    val_loader = _val_loader(task, cfg, accelerator)
    run = _Run(task, cfg, accelerator, model, ema, out_dir, val_loader, parts, resumed_from)
    batches = _endless(train_loader, accelerator, start=state.step * cfg.grad_accum)
    with _one_line_if_disk_full(out_dir, lambda: run.checkpoint):
        _train(run, optimizer, scheduler, state, batches)
        return _save_final(run)


def _accelerator(cfg: TrainConfig) -> Accelerator:
    # Our micro-batches run on across epochs (`_endless`), so an epoch end must not force an update:
    # Accelerate's default sync_with_dataloader=True steps there on fewer micro-batches and restarts
    # its count, which puts every later update at the wrong micro-batch.
    accumulation = GradientAccumulationPlugin(num_steps=cfg.grad_accum, sync_with_dataloader=False)
    return Accelerator(gradient_accumulation_plugin=accumulation, mixed_precision=cfg.mixed_precision)


@dataclass
class _Run:
    task: TrainTask
    cfg: TrainConfig
    accelerator: Accelerator
    model: torch.nn.Module
    ema: WeightEMA | None
    out_dir: Path
    val_loader: DataLoader | None
    parts: checkpoint.Parts
    checkpoint: Path | None  # the newest good checkpoint: the one resumed from, then each one saved


def _train(run: _Run, optimizer, scheduler, state: TrainState, batches: Iterator[dict]) -> None:
    cfg, accelerator = run.cfg, run.accelerator
    log = MetricsLog(run.out_dir / "metrics.jsonl")
    if accelerator.is_main_process:
        log.truncate_after(state.step)
    # A context: an error closes the bar before the CLI prints it, on a line of its own.
    with tqdm(total=cfg.steps, initial=state.step, disable=not accelerator.is_main_process, dynamic_ncols=True) as bar:
        started = time.time()
        run.model.train()
        while state.step < cfg.steps:
            metrics = _optimizer_step(run, optimizer, batches)
            scheduler.step()
            state.step += 1
            if run.ema is not None:
                run.ema.update(accelerator.unwrap_model(run.model))
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                record = _reduce(metrics, accelerator) | {"lr": scheduler.get_last_lr()[0]}
                bar.set_postfix({k.removeprefix("train/"): f"{v:.4g}" for k, v in record.items() if k != "lr"})
                if accelerator.is_main_process:
                    log.append({"step": state.step, "elapsed_s": round(time.time() - started, 2), **record})
            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                _evaluate(run, state.step, log)
            if state.step % cfg.save_every == 0 or state.step == cfg.steps:
                _save_checkpoint(run, state.step)


def _optimizer_step(run: _Run, optimizer, batches: Iterator[dict]) -> dict[str, torch.Tensor]:
    """One optimizer step over grad_accum micro-batches; returns the last micro-batch's metrics."""
    accelerator, model = run.accelerator, run.model
    for _ in range(run.cfg.grad_accum):
        batch = next(batches)
        with accelerator.accumulate(model):
            metrics = run.task.training_step(model, batch)
            loss = metrics["loss"]
            _stop_if_not_finite(run, "loss", [loss])
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                metrics["grad_norm"] = _clip_gradients(run)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return metrics


def _clip_gradients(run: _Run) -> torch.Tensor:
    """Clip to grad_clip and return the total norm before clipping; stop if it is not finite.

    A finite loss can still have an infinite gradient: clipping turns it into NaN and the optimizer
    would write NaN weights into the next checkpoint. With fp16 the GradScaler skips such steps itself.
    """
    # max_norm=inf only measures: the clip factor is then exactly 1.
    max_norm = run.cfg.grad_clip if run.cfg.grad_clip > 0 else math.inf
    norm = run.accelerator.clip_grad_norm_(run.model.parameters(), max_norm)
    if run.accelerator.scaler is None:
        _stop_if_not_finite(run, "gradient", [norm])
    return norm


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
        code = disk_full_errno(err)
        if code is None:
            raise
        path = getattr(err, "filename", None) or out_dir
        note = _resume_note(last_checkpoint(), "free some disk space (or raise your quota or `ulimit -f`)")
        raise VqgenError(f"{path}: could not write ({os.strerror(code)}); {note}") from None


def _check_weights(run: _Run) -> None:
    """Never save non-finite weights: a checkpoint must stay a good place to resume from."""
    models = [run.model, *([run.ema.model] if run.ema is not None else [])]
    _stop_if_not_finite(run, "weights", [p for m in models for p in m.parameters()])


def _reduce(metrics: dict[str, torch.Tensor], accelerator: Accelerator) -> dict[str, float]:
    names = sorted(metrics)
    values = torch.stack([torch.as_tensor(metrics[n], dtype=torch.float32).detach().reshape(()) for n in names])
    values = accelerator.reduce(values.to(accelerator.device), reduction="mean")
    return {f"train/{n}": float(v) for n, v in zip(names, values.cpu())}


def _evaluate(run: _Run, step: int, log: MetricsLog) -> None:
    if run.val_loader is None:
        return
    model = run.ema.model if run.ema is not None else run.accelerator.unwrap_model(run.model)
    model.eval()
    with torch.no_grad():
        results = run.task.evaluate(model, run.val_loader, run.accelerator)
        if run.accelerator.is_main_process:
            run.task.after_evaluate(model, step, run.out_dir, run.accelerator)
    run.model.train()
    if run.accelerator.is_main_process:
        log.append({"step": step, **{k: float(v) for k, v in results.items()}})
        logger.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in results.items()))
    run.accelerator.wait_for_everyone()


def _micro_batch(cfg: TrainConfig, processes: int) -> int:
    per_step = processes * cfg.grad_accum
    if cfg.batch_size % per_step:
        raise VqgenError(
            f"train.batch_size={cfg.batch_size} is not divisible by processes*grad_accum={per_step}; "
            "choose a multiple"
        )
    return cfg.batch_size // per_step


def _loader(dataset: Dataset, batch: int, cfg: TrainConfig, sampler=None, drop_last: bool = False) -> DataLoader:
    # A generator of its own keeps the loader's worker seed off the global RNG, which resume restores.
    return DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=drop_last,
                      num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))


def _val_loader(task: TrainTask, cfg: TrainConfig, accelerator: Accelerator) -> DataLoader | None:
    if task.val_set is None or len(task.val_set) == 0:
        return None
    per_process = max(1, cfg.batch_size // accelerator.num_processes)
    val_set = task.val_set
    if cfg.eval_batches > 0:
        # A shorter data set, not a loop that stops early: a prepared loader left unfinished stays
        # registered with Accelerate's GradientState, and gather_for_metrics reads the wrong loader.
        n = min(len(val_set), cfg.eval_batches * per_process * accelerator.num_processes)
        val_set = Subset(val_set, range(n))
    return accelerator.prepare(_loader(val_set, per_process, cfg))


def _endless(loader: DataLoader, accelerator: Accelerator, start: int) -> Iterator[dict]:
    """Micro-batches forever, epoch after epoch, beginning after the first `start` of them."""
    epoch, skip = divmod(start, len(loader))
    while True:
        # The prepared loader owns the epoch counter and hands it to our sampler on every pass;
        # a skipping copy of it would start counting from its own copy, so set it here.
        loader.set_epoch(epoch)
        yield from accelerator.skip_first_batches(loader, skip) if skip else loader
        epoch, skip = epoch + 1, 0


def _checkpoints(out_dir: Path) -> list[Path]:
    folder = out_dir / "checkpoints"
    found = [p for p in folder.iterdir() if CHECKPOINT.match(p.name)] if folder.is_dir() else []
    return sorted(found)


def _save_checkpoint(run: _Run, step: int) -> None:
    accelerator, out_dir = run.accelerator, run.out_dir
    _check_weights(run)
    final = out_dir / "checkpoints" / f"step_{step:08d}"
    tmp = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        checkpoint.save(tmp, run.parts, accelerator.process_index, accelerator.num_processes)
    except BaseException:
        # A half-written checkpoint is only a temporary folder; drop it, so a full disk gets its space back.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # A same-named folder is one that did not load (`_restore` fell back past it).
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoints(out_dir)[:-run.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    run.checkpoint = final
    accelerator.wait_for_everyone()


def _restore(accelerator: Accelerator, out_dir: Path, parts: checkpoint.Parts) -> Path | None:
    found = _checkpoints(out_dir)
    if not found:
        logger.info("no checkpoint in %s; starting from step 0", out_dir)
        return None
    return checkpoint.resume(accelerator, found, parts)


def _check_run_folder(task: TrainTask, out_dir: Path, resume: bool, accelerator: Accelerator) -> None:
    claim_output(out_dir, "run")  # a new, empty or run folder only; locked until this process exits
    saved_path = out_dir / "run_config.json"
    if saved_path.exists() and resume:
        saved = read_json(saved_path, "run config")
        changed = sorted(k for k in set(saved) | set(task.run_config) if k != "train" and saved.get(k) != task.run_config.get(k))
        if changed:
            raise VqgenError(
                f"{saved_path}: this run was started with other settings ({', '.join(changed)}); "
                "resume with the same config or choose a new --out"
            )
    elif _checkpoints(out_dir) and not resume:
        raise VqgenError(f"{out_dir}: holds a run already; pass --resume to continue it or choose a new --out")
    if accelerator.is_main_process:
        write_json(saved_path, task.run_config)
    accelerator.wait_for_everyone()


def _save_final(run: _Run) -> Path:
    accelerator = run.accelerator
    final = run.out_dir / "model"
    _check_weights(run)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = run.ema.model if run.ema is not None else accelerator.unwrap_model(run.model)
        with atomic_path(final, is_dir=True) as tmp:
            model.save_pretrained(tmp, save_function=accelerator.save)
            run.task.save_extras(tmp)
    accelerator.wait_for_everyone()
    return final
