"""Training checkpoints in safetensors and JSON: resuming never unpickles anything.

A checkpoint folder (`checkpoints/step_XXXXXXXX/`) holds:

    model.safetensors      the live model's weights and buffers
    ema.safetensors        the EMA of the weights, when train.ema_decay > 0
    optimizer.safetensors  the optimizer's tensors (AdamW's moments and step counts), named "<param>.<name>"
    state.json             the format version, the counters (step), the number of processes, whether there is
                           an EMA, the optimizer's param groups, the learning-rate schedule, the fp16 loss scaler
    rng_<i>.json           process i's random generators: Python, NumPy, torch CPU and CUDA

and for each other network a task trains (`core.loop.Network`, e.g. "discriminator"):

    <name>.safetensors            its weights and buffers
    <name>.optimizer.safetensors  its optimizer's tensors
    state.json                    its param groups, schedule and loss scaler under "networks" -> "<name>"

A run of one network writes exactly the files and keys it wrote before networks were added (format 1).

Accelerate's `save_state`/`load_state` would pickle most of this: `torch.save` for the optimizer and the
random states, and `register_for_checkpointing`'s states load with `weights_only=False`, so a file planted
in a shared run folder runs code on `--resume`. It also skips an unreadable random-state file without a
word, which silently ends an exact resume.

`save_step` writes a checkpoint under a temporary name, renames it into place and keeps the newest few.
`read` checks every file against the live objects before `apply` changes anything, so a bad checkpoint
is rejected whole (`CheckpointError`), and `resume` falls back to the one before it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from core.errors import VqgenError

logger = get_logger(__name__)
FORMAT = 1
MAIN = "model"  # the task's model, the one network of format 1
MODEL, EMA, OPTIMIZER, STATE = "model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"
STEP_FOLDER = re.compile(r"^step_(\d{8})$")
NETWORK_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a file-name part; never MAIN or "ema" (`check_names`)


class CheckpointError(Exception):
    """A checkpoint folder that cannot be resumed from; the message says which file and why."""


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Trained:
    """One network a run trains, with its optimizer, its learning-rate schedule and its fp16 loss scaler."""

    name: str  # MAIN for the task's model
    model: torch.nn.Module  # unwrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None


@dataclass
class Parts:
    """The live objects whose state a checkpoint holds."""

    networks: list[Trained]  # the task's model (named MAIN) first
    counters: Stateful  # a JSON-able state_dict of ints
    ema: torch.nn.Module | None = None  # of the task's model


@dataclass
class LoadedNetwork:
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None


@dataclass
class Loaded:
    """A checkpoint read into memory and checked against the live objects, not yet applied."""

    networks: list[LoadedNetwork]  # in the order of Parts.networks
    ema: dict[str, torch.Tensor] | None
    counters: dict[str, Any]
    rng: dict[str, Any] | None


def check_names(names: list[str]) -> None:
    """Network names make file names: MAIN first, then distinct names of lowercase letters, digits and _."""
    assert names[0] == MAIN and len(set(names)) == len(names), names
    assert all(NETWORK_NAME.match(name) and name != "ema" for name in names), names


def _files(name: str) -> tuple[str, str]:
    """The weights and optimizer files of the network `name`."""
    return (MODEL, OPTIMIZER) if name == MAIN else (f"{name}.safetensors", f"{name}.optimizer.safetensors")


def save(folder: Path, parts: Parts, process_index: int, num_processes: int) -> None:
    """Write `parts` into `folder`: process 0 writes the shared state, every process its random generators."""
    folder.mkdir(parents=True, exist_ok=True)
    if process_index == 0:
        for net in parts.networks:
            weights, optimizer = _files(net.name)
            _write(folder / weights, save_tensors(_cpu(net.model.state_dict())))
            state = net.optimizer.state_dict()["state"]
            tensors = {f"{i}.{name}": value for i, named in state.items() for name, value in named.items()}
            _write(folder / optimizer, save_tensors(_cpu(tensors)))
        if parts.ema is not None:
            _write(folder / EMA, save_tensors(_cpu(parts.ema.state_dict())))
        _write(folder / STATE, _json_bytes(_state_json(parts, num_processes), indent=1))  # to be read by people
    _write(folder / f"rng_{process_index}.json", _json_bytes(_rng_state()))


def folders(out_dir: Path) -> list[Path]:
    """The run's checkpoints, `out_dir/checkpoints/step_XXXXXXXX`, oldest first."""
    folder = out_dir / "checkpoints"
    found = [p for p in folder.iterdir() if STEP_FOLDER.match(p.name)] if folder.is_dir() else []
    return sorted(found)


def save_step(accelerator: Accelerator, out_dir: Path, step: int, parts: Parts, keep: int) -> Path:
    """On every process: write the checkpoint of `step` whole under a temporary name, rename it into place,
    drop all but the newest `keep`, and return its folder."""
    final = out_dir / "checkpoints" / f"step_{step:08d}"
    tmp = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        save(tmp, parts, accelerator.process_index, accelerator.num_processes)
    except BaseException:
        # A half-written checkpoint is only a temporary folder; drop it, so a full disk gets its space back.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # A same-named folder is one that did not load (`resume` fell back past it).
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in folders(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume(accelerator: Accelerator, out_dir: Path, parts: Parts) -> Path | None:
    """Apply the newest checkpoint of the run in `out_dir` that reads whole, warning of each newer one
    that does not, and return it; None when the run has none, one line naming each problem when none reads."""
    found = folders(out_dir)
    if not found:
        logger.info("no checkpoint in %s; starting from step 0", out_dir)
        return None
    problems = []
    for folder in reversed(found):
        loaded, problem = _read_on_every_process(accelerator, folder, parts)
        if loaded is not None:
            apply(loaded, parts)
            logger.info("resumed from %s", folder)
            return folder
        logger.warning("%s cannot be resumed from (%s); trying the checkpoint before it", folder, problem)
        problems.append(f"{folder.name}: {problem}")
    raise VqgenError(
        f"{found[0].parent}: no checkpoint can be resumed from ({'; '.join(problems)}); move the "
        "step_* folders out of it to train again from step 0, or choose a new --out"
    )


def _read_on_every_process(accelerator: Accelerator, folder: Path, parts: Parts) -> tuple[Loaded | None, str]:
    """(the checkpoint read whole, "") or (None, what is wrong with it), the same on every process."""
    try:
        loaded, problem = read(folder, parts, accelerator.process_index), ""
    except CheckpointError as err:
        loaded, problem = None, str(err)
    # Every process must resume from the same checkpoint, even where only one of them cannot read it.
    failed = accelerator.reduce(torch.tensor([float(loaded is None)], device=accelerator.device), reduction="sum")
    if failed.item() > 0 and loaded is not None:
        return None, "another process could not read its part"
    return loaded, problem


def read(folder: Path, parts: Parts, process_index: int) -> Loaded:
    """Read and check every file of a checkpoint; raise CheckpointError naming the first bad one."""
    state = _read_state(folder, parts)
    ema = None
    if parts.ema is not None and state["ema"]:  # else the run turned the EMA on now: it starts from the model
        ema = _read_tensors(folder / EMA, parts.ema.state_dict())
    return Loaded(
        networks=[_read_network(folder, net, entry) for net, entry in zip(parts.networks, _entries(state, parts))],
        ema=ema,
        counters=state["counters"],
        rng=_read_rng(folder, process_index, state["processes"]),
    )


def _read_network(folder: Path, net: Trained, entry: dict[str, Any]) -> LoadedNetwork:
    weights, optimizer = _files(net.name)
    return LoadedNetwork(
        weights=_read_tensors(folder / weights, net.model.state_dict()),
        optimizer={"state": _read_optimizer_tensors(folder / optimizer, net.optimizer),
                   "param_groups": entry["param_groups"]},
        scheduler=entry["scheduler"],
        scaler=entry["scaler"],
    )


def apply(loaded: Loaded, parts: Parts) -> None:
    """Put a checked checkpoint into the live objects."""
    for net, saved in zip(parts.networks, loaded.networks):
        net.model.load_state_dict(saved.weights)
        net.optimizer.load_state_dict(saved.optimizer)
        net.scheduler.load_state_dict(saved.scheduler)
        if net.scaler is not None and saved.scaler is not None:
            net.scaler.load_state_dict(saved.scaler)
    if parts.ema is not None:
        parts.ema.load_state_dict(loaded.ema if loaded.ema is not None else parts.networks[0].model.state_dict())
    parts.counters.load_state_dict(loaded.counters)
    if loaded.rng is not None:
        _set_rng(loaded.rng)


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as err:
        err.filename = err.filename or str(path)  # a failed write() names no file; the user needs it
        raise


def _json_bytes(obj: Any, indent: int | None = None) -> bytes:
    return (json.dumps(obj, indent=indent) + "\n").encode()


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().cpu().contiguous() for name, t in tensors.items()}


def _state_json(parts: Parts, num_processes: int) -> dict[str, Any]:
    main, *others = parts.networks
    state = {
        "format": FORMAT,
        "counters": parts.counters.state_dict(),
        "processes": num_processes,
        "ema": parts.ema is not None,
        **_optimizer_json(main),  # at the top level, as in a run of one network
    }
    if others:
        state["networks"] = {net.name: _optimizer_json(net) for net in others}
    return state


def _optimizer_json(net: Trained) -> dict[str, Any]:
    return {
        "param_groups": net.optimizer.state_dict()["param_groups"],
        "scheduler": net.scheduler.state_dict(),
        "scaler": net.scaler.state_dict() if net.scaler is not None else None,
    }


def _entries(state: dict[str, Any], parts: Parts) -> list[dict[str, Any]]:
    """Each network's part of a state.json, in the order of parts.networks."""
    return [state, *(state["networks"][net.name] for net in parts.networks[1:])]


def _read_state(folder: Path, parts: Parts) -> dict[str, Any]:
    path = folder / STATE
    if not path.exists() and any(folder.glob("*.pkl")):
        raise CheckpointError("in the pickle format of older vqgen versions, which --resume no longer loads "
                              "(a pickle can run code)")
    state = _read_json(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path.name}: not a vqgen checkpoint of format {FORMAT}")
    template = _state_json(parts, num_processes=0)
    # A loss scaler exists under fp16 only, and mixed_precision may change on resume: checked apart.
    saved_scalers = [_pop_scaler(entry) for entry in _entries_if_any(state, parts)]
    for entry in _entries(template, parts):
        entry.pop("scaler")
    state = _conform(state, template, STATE)
    for net, entry, saved in zip(parts.networks, _entries(state, parts), saved_scalers):
        both = net.scaler is not None and saved is not None
        entry["scaler"] = _conform(saved, net.scaler.state_dict(), f"{STATE} {net.name} scaler") if both else None
    return state


def _entries_if_any(state: dict[str, Any], parts: Parts) -> list[Any]:
    """`_entries` of a state.json not yet checked: a missing part is None (refused by `_conform` next)."""
    others = state.get("networks")
    return [state, *(others.get(net.name) if isinstance(others, dict) else None for net in parts.networks[1:])]


def _pop_scaler(entry: Any) -> Any:
    return entry.pop("scaler", None) if isinstance(entry, dict) else None


def _conform(value: Any, template: Any, where: str) -> Any:
    """`value` read from JSON, checked to have the shape and leaf types of `template` (a live state) and
    given back in the template's types (tuples where it has tuples)."""
    if isinstance(template, dict):
        if not isinstance(value, dict) or set(value) != set(template):
            raise CheckpointError(f"{where}: expected the keys {sorted(template)}")
        return {key: _conform(value[key], template[key], f"{where} {key}") for key in template}
    if isinstance(template, (list, tuple)):
        if not isinstance(value, list) or len(value) != len(template):
            raise CheckpointError(f"{where}: expected a list of {len(template)}")
        return type(template)(_conform(v, t, where) for v, t in zip(value, template))
    if isinstance(template, bool) or template is None or isinstance(template, str):
        if type(value) is not type(template):
            raise CheckpointError(f"{where}: expected {type(template).__name__}, found {value!r}")
        return value
    if isinstance(template, int) and type(value) is int:
        return value
    if isinstance(template, float) and type(value) in (int, float):
        return float(value)
    raise CheckpointError(f"{where}: expected {type(template).__name__}, found {value!r}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{path.name} is missing") from None
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{path.name} is not readable JSON ({err})") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_tensors(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{path.name} is missing") from None
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({err})") from None


def _read_tensors(path: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tensors = _load_safetensors(path)
    wrong = sorted(name for name in like.keys() | tensors.keys()
                   if name not in like or name not in tensors
                   or (tensors[name].shape, tensors[name].dtype) != (like[name].shape, like[name].dtype))
    if wrong:
        raise CheckpointError(f"{path.name} does not match the model ({', '.join(wrong[:3])})")
    return tensors


def _read_optimizer_tensors(path: Path, optimizer: torch.optim.Optimizer) -> dict[int, dict[str, torch.Tensor]]:
    """The optimizer's per-parameter state; each tensor is a scalar or has its parameter's shape and dtype."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in _load_safetensors(path).items():
        index, _, name = key.partition(".")
        param = params[int(index)] if index.isdigit() and int(index) < len(params) else None
        if param is None or (tensor.ndim and (tensor.shape, tensor.dtype) != (param.shape, param.dtype)):
            raise CheckpointError(f"{path.name}: {key} does not match the model's parameters")
        state.setdefault(int(index), {})[name] = tensor
    return state


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _read_rng(folder: Path, process_index: int, processes: int) -> dict[str, Any] | None:
    """This process's random generators, checked by loading them into scratch generators."""
    path = folder / f"rng_{process_index}.json"
    if process_index >= processes and not path.exists():
        return None  # the run had fewer processes: this one's draws start from the seed
    saved = _read_json(path)
    try:
        state = {"python": (saved["python"][0], tuple(saved["python"][1]), saved["python"][2]),
                 "numpy": (saved["numpy"][0], np.array(saved["numpy"][1], dtype=np.uint32), *saved["numpy"][2:]),
                 "torch": torch.tensor(saved["torch"], dtype=torch.uint8),
                 "cuda": [torch.tensor(s, dtype=torch.uint8) for s in saved.get("cuda", [])]}
        random.Random().setstate(state["python"])
        np.random.RandomState().set_state(state["numpy"])
        torch.Generator().set_state(state["torch"])
        state["cuda"] = state["cuda"][:torch.cuda.device_count()]  # a GPU run resumed on fewer GPUs or the CPU
        for device, cuda_state in enumerate(state["cuda"]):
            torch.Generator(device=f"cuda:{device}").set_state(cuda_state)
    except (KeyError, IndexError, TypeError, ValueError, OverflowError, RuntimeError) as err:
        raise CheckpointError(f"{path.name}: not a saved random-generator state ({err!r})") from None
    return state


def _set_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for device, cuda_state in enumerate(state["cuda"]):
        torch.cuda.set_rng_state(cuda_state, device)
