"""Writing code grids with a tokenizer (`vqgen dump-codes`), and decoding them back to images.

The format itself, and its only reader, is `core.code_grids` (the contract between the stages):
one Arrow column per level of the tokenizer (`codes` for one level; `top` and `bottom` for two).
Images are encoded once, as LlamaGen's `extract_codes_c2i.py` does, so stage 2 never touches pixels.
Under `accelerate launch` every process encodes a contiguous shard of each split; the main process
joins the shards in order, so the rows equal a one-process dump.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from accelerate import PartialState
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

import core
from core.code_grids import CodeGridMeta, GridLevel, grid_rows, join_shards, new_meta, write_shard
from core.config import to_dict
from core.cpu_threads import LoadFollower
from core.data import DataConfig, ImageDataset, load_images
from core.distributed import process_state
from core.errors import VqgenError
from core.model_folder import WEIGHTS_FILE
from core.runs import REPLACED_WHOLE, claim_output, disk_full_is_user_error, sha256_file
from stage1_vqvae.load import load_tokenizer, tokenizer_folder
from stage1_vqvae.model import VQVAE


def tokenizer_sha256(tokenizer_path: str | Path) -> str:
    """The tokenizer hash stored with codes: sha256 of <model folder>/model.safetensors."""
    weights = tokenizer_folder(tokenizer_path) / WEIGHTS_FILE
    if not weights.is_file():
        raise VqgenError(f"{weights}: not found; pass a tokenizer model folder or its training run folder")
    return sha256_file(weights)


def grid_levels(tokenizer: VQVAE) -> tuple[GridLevel, ...]:
    """The format's levels of the tokenizer's grids, coarse to fine (its config's level specs)."""
    return tuple(GridLevel(s.name, s.grid_h, s.grid_w, s.codebook_size) for s in tokenizer.config.level_specs)


def dump_codes(tokenizer_path: str | Path, data: DataConfig, out: str | Path, splits: tuple[str, ...] = ("train", "val"),
               batch_size: int = 256) -> Path:
    """Encode every image of `splits` with the tokenizer and write the code-grid folder `out`:
    a new one, or one dump-codes wrote before, replaced whole."""
    out, state = Path(out), process_state()
    _check_request(splits, batch_size)
    tokenizer = load_tokenizer(tokenizer_path).to(state.device)
    sets = {split: load_images(data, split) for split in splits}
    for images in sets.values():
        _check_fits(tokenizer_path, tokenizer, images, data)
    staging = out.with_name(f".{out.name}.shards")  # a killed dump's leftover, cleared under the lock
    with claim_output(out, "codes"), disk_full_is_user_error(out, REPLACED_WHOLE):
        try:
            if state.is_main_process:
                shutil.rmtree(staging, ignore_errors=True)
            state.wait_for_everyone()
            for split, images in sets.items():
                shard = staging / split / f"rank_{state.process_index:05d}"
                _write_shard(tokenizer, images, shard, batch_size, state)
            state.wait_for_everyone()
            if state.is_main_process:
                join_shards(staging, out, _meta(tokenizer_path, tokenizer, sets, data))
        finally:
            if state.is_main_process:
                shutil.rmtree(staging, ignore_errors=True)
        state.wait_for_everyone()
    return out


def _check_request(splits: tuple[str, ...], batch_size: int) -> None:
    if not splits or len(set(splits)) != len(splits):
        raise VqgenError(f"dump-codes --splits {','.join(splits)}: name each split once, e.g. train,val")
    if batch_size < 1:
        raise VqgenError(f"dump-codes --batch-size {batch_size}: must be 1 or more, e.g. 256")


def _meta(tokenizer_path: str | Path, tokenizer: VQVAE, sets: dict[str, ImageDataset], data: DataConfig) -> CodeGridMeta:
    first = next(iter(sets.values()))
    return new_meta(
        grid_levels(tokenizer), image_size=data.image_size, channels=first.channels, num_classes=first.num_classes,
        data_spec=data.spec, splits={split: len(images) for split, images in sets.items()},
        tokenizer_sha256=tokenizer_sha256(tokenizer_path),
        tokenizer_path=str(tokenizer_folder(tokenizer_path).resolve()), vqgen_version=core.__version__,
        data=to_dict(data), skipped={split: images.skipped for split, images in sets.items()},
    )


def _check_fits(tokenizer_path: str | Path, tokenizer: VQVAE, images: ImageDataset, data: DataConfig) -> None:
    """Refuse images other than those the tokenizer was trained on: a tokenizer runs on other sizes,
    but its grids would not match the ones the prior and the decoder expect."""
    cfg, config_file = tokenizer.config, tokenizer_folder(tokenizer_path) / "config.json"
    for name, got, trained in (("channels", images.channels, cfg.in_channels),
                               ("image_size", data.image_size, cfg.image_size)):
        if got != trained:
            raise VqgenError(
                f"{config_file}: the tokenizer was trained on {name}={trained} but data '{data.spec}' gives "
                f"{name}={got}; set data.{name}={trained} (the tokenizer's training data settings)"
            )


def _write_shard(tokenizer: VQVAE, images: ImageDataset, shard: Path, batch_size: int, state: PartialState) -> None:
    """This process's contiguous slice of `images`, encoded and streamed to an Arrow folder."""
    with state.split_between_processes(torch.arange(len(images))) as mine:
        subset = Subset(images, mine.tolist())
    write_shard(_encoded_rows, {"tokenizer": tokenizer, "subset": subset, "batch_size": batch_size,
                                "show_progress": state.is_main_process}, grid_levels(tokenizer), shard)


def _encoded_rows(tokenizer: VQVAE, subset: Dataset, batch_size: int, show_progress: bool):
    levels = grid_levels(tokenizer)
    loader = DataLoader(subset, batch_size=batch_size)
    # A context: an error closes the bar before the CLI prints it, on a line of its own.
    threads = LoadFollower(tokenizer.device.type)
    with tqdm(loader, desc="encoding", disable=not show_progress) as bar:
        for batch in bar:
            threads.follow()
            codes = tokenizer.encode_levels(batch["image"].to(tokenizer.device))
            yield from grid_rows(codes, batch["label"].tolist(), batch["index"].tolist(), levels)


@torch.no_grad()
def decode(codes: torch.Tensor, tokenizer: VQVAE, batch_size: int = 256) -> torch.Tensor:
    """codes (B, h, w) integers in [0, K) -> images (B, C, H, W) in [-1, 1] on the CPU, in batches."""
    return torch.cat([tokenizer.decode_codes(chunk).cpu() for chunk in codes.split(batch_size)])
