"""Code grids on disk: the contract between stage 1 and stage 2. The only reader and writer.

    CODES/train/, CODES/val/   datasets `save_to_disk` Arrow folders, memory-mapped on load; columns
                               codes  uint16 Array2D (h, w) (uint32 when K > 65535)
                               label  int64, -1 when the data set is unlabelled
                               index  int64, position of the source image in its split
    CODES/vqgen_codes.json     CodeGridMeta below (format_version 1); "data" holds the whole DataConfig,
                               so `load_images(DataConfig(**meta.data), split)[index]` is a row's image

Images are encoded once, as LlamaGen's `extract_codes_c2i.py` does, so stage 2 never touches pixels.
Under `accelerate launch` every process encodes a contiguous shard of each split; the main process
joins the shards in order, so the rows equal a one-process dump.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import PartialState
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

import core
from core.config import to_dict
from core.data import DataConfig, ImageDataset, load_images
from core.distributed import process_state
from core.errors import VqgenError
from core.runs import (
    REPLACED_WHOLE,
    atomic_path,
    claim_output,
    disk_full_is_user_error,
    read_json,
    sha256_file,
    write_json,
)
from stage1_vqvae.load import load_tokenizer, tokenizer_folder
from stage1_vqvae.model import VQVAE

FORMAT_VERSION = 1
META_FILE = "vqgen_codes.json"


@dataclass
class CodeGridMeta:
    format_version: int
    codebook_size: int  # K
    grid_h: int  # h
    grid_w: int  # w
    image_size: int  # H = W of the encoded images
    channels: int  # C
    num_classes: int  # N, 0 when unlabelled
    data_spec: str
    splits: dict[str, int]  # rows per split
    tokenizer_sha256: str  # sha256 of the tokenizer's model.safetensors
    tokenizer_path: str
    vqgen_version: str
    # Added within format 1; folders written before read back with these empty.
    data: dict = field(default_factory=dict)  # the DataConfig the images came from (maps `index` to an image)
    skipped: dict[str, int] = field(default_factory=dict)  # unreadable images data.skip_bad dropped, per split


def code_dtype(codebook_size: int) -> str:
    """The Arrow dtype of stored codes: uint16 unless K > 65535 (the contract's rule)."""
    return "uint16" if codebook_size <= 65535 else "uint32"


def tokenizer_sha256(tokenizer_path: str | Path) -> str:
    """The tokenizer hash stored with codes: sha256 of <model folder>/model.safetensors."""
    weights = tokenizer_folder(tokenizer_path) / "model.safetensors"
    if not weights.is_file():
        raise VqgenError(f"{weights}: not found; pass a tokenizer model folder or its training run folder")
    return sha256_file(weights)


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
    grid = (data.image_size // tokenizer.downsample_factor,) * 2
    staging = out.with_name(f".{out.name}.shards")  # a killed dump's leftover, cleared under the lock
    with claim_output(out, "codes"), disk_full_is_user_error(out, REPLACED_WHOLE):
        try:
            if state.is_main_process:
                shutil.rmtree(staging, ignore_errors=True)
            state.wait_for_everyone()
            for split, images in sets.items():
                shard = staging / split / f"rank_{state.process_index:05d}"
                _write_shard(tokenizer, images, grid, shard, batch_size, state)
            state.wait_for_everyone()
            if state.is_main_process:
                _join_shards(staging, out, _meta(tokenizer_path, tokenizer, sets, data, grid))
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


def _meta(tokenizer_path: str | Path, tokenizer: VQVAE, sets: dict[str, ImageDataset], data: DataConfig,
          grid: tuple[int, int]) -> CodeGridMeta:
    first = next(iter(sets.values()))
    return CodeGridMeta(
        FORMAT_VERSION, tokenizer.config.codebook_size, grid[0], grid[1], data.image_size, first.channels,
        first.num_classes, data.spec, {split: len(images) for split, images in sets.items()},
        tokenizer_sha256(tokenizer_path), str(tokenizer_folder(tokenizer_path).resolve()), core.__version__,
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


def _features(grid: tuple[int, int], codebook_size: int) -> datasets.Features:
    return datasets.Features({
        "codes": datasets.Array2D(shape=grid, dtype=code_dtype(codebook_size)),
        "label": datasets.Value("int64"),
        "index": datasets.Value("int64"),
    })


def _write_shard(tokenizer: VQVAE, images: ImageDataset, grid: tuple[int, int], shard: Path, batch_size: int,
                 state: PartialState) -> None:
    """This process's contiguous slice of `images`, encoded and streamed to an Arrow folder."""
    with state.split_between_processes(torch.arange(len(images))) as mine:
        subset = Subset(images, mine.tolist())
    # from_generator writes rows to an Arrow file in cache_dir as they come (1000 per write), so
    # memory stays flat however large the split; the explicit fingerprint skips hashing the
    # generator's arguments (the model) and, with a fresh cache_dir, can never reuse stale rows.
    try:
        ds = datasets.Dataset.from_generator(
            _encoded_rows, features=_features(grid, tokenizer.config.codebook_size),
            gen_kwargs={"tokenizer": tokenizer, "subset": subset, "batch_size": batch_size,
                        "show_progress": state.is_main_process},
            cache_dir=str(shard.with_name(shard.name + ".cache")), fingerprint=f"{shard.parent.name}-{shard.name}",
        )
    except datasets.exceptions.DatasetGenerationError as err:
        if isinstance(err.__cause__, VqgenError):  # raised while encoding (an unreadable image): our one line
            raise VqgenError(str(err.__cause__)) from None  # a new one: re-raising the cause would chain it to itself
        raise
    ds.save_to_disk(str(shard))


def _encoded_rows(tokenizer: VQVAE, subset: Dataset, batch_size: int, show_progress: bool):
    dtype = code_dtype(tokenizer.config.codebook_size)
    loader = DataLoader(subset, batch_size=batch_size)
    # A context: an error closes the bar before the CLI prints it, on a line of its own.
    with tqdm(loader, desc="encoding", disable=not show_progress) as bar:
        for batch in bar:
            codes = tokenizer.encode(batch["image"].to(tokenizer.device)).cpu().numpy().astype(dtype)
            for row, label, index in zip(codes, batch["label"].tolist(), batch["index"].tolist()):
                yield {"codes": row, "label": label, "index": index}


def _join_shards(staging: Path, out: Path, meta: CodeGridMeta) -> None:
    with atomic_path(out, is_dir=True) as tmp:
        for split in meta.splits:
            shards = sorted(p for p in (staging / split).iterdir() if p.is_dir() and not p.name.endswith(".cache"))
            parts = [datasets.load_from_disk(str(p)) for p in shards]
            joined = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
            joined.save_to_disk(str(tmp / split))
        write_json(tmp / META_FILE, dataclasses.asdict(meta))


def read_meta(codes_dir: str | Path) -> CodeGridMeta:
    """The vqgen_codes.json of a code-grid folder."""
    path = Path(codes_dir) / META_FILE
    if not Path(codes_dir).is_dir():
        raise VqgenError(f"{codes_dir}: code-grid folder not found; run `vqgen dump-codes` first or fix the path")
    raw = read_json(path, "code-grid metadata (written by `vqgen dump-codes`)")
    fields = [f.name for f in dataclasses.fields(CodeGridMeta)]
    required = [f.name for f in dataclasses.fields(CodeGridMeta)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in raw]
    if missing:
        raise VqgenError(f"{path}: field '{missing[0]}' is missing; the folder is incomplete, re-run `vqgen dump-codes`")
    if raw["format_version"] != FORMAT_VERSION:
        raise VqgenError(
            f"{path}: format_version={raw['format_version']} but this vqgen reads {FORMAT_VERSION}; "
            "re-run `vqgen dump-codes` with this version"
        )
    return CodeGridMeta(**{name: raw[name] for name in fields if name in raw})


class CodeGrids(Dataset):
    """One split of a code-grid folder, memory-mapped. Item: {"codes": int64 (h, w), "label": int64}."""

    def __init__(self, table: datasets.Dataset, meta: CodeGridMeta):
        self.table, self.meta = table.with_format("torch", columns=["codes", "label"]), meta

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.table[int(i)]
        return {"codes": row["codes"].long(), "label": row["label"]}

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        # One Arrow read per batch instead of one per item (DataLoader's batched fetch).
        rows = self.table[list(indices)]
        return [{"codes": c, "label": y} for c, y in zip(rows["codes"].long(), rows["label"])]


def load_codes(codes_dir: str | Path, split: str, expect_tokenizer_sha256: str | None = None) -> CodeGrids:
    """Split `split` of the code-grid folder `codes_dir`, checked against its metadata and tokenizer:
    `expect_tokenizer_sha256` when given, else the file at the stored tokenizer_path when it still exists."""
    meta = read_meta(codes_dir)
    meta_path = Path(codes_dir) / META_FILE
    if expect_tokenizer_sha256 is not None and expect_tokenizer_sha256 != meta.tokenizer_sha256:
        raise VqgenError(
            f"{meta_path}: tokenizer_sha256 {meta.tokenizer_sha256[:12]}... does not match the tokenizer in use "
            f"({expect_tokenizer_sha256[:12]}...); re-run `vqgen dump-codes` with this tokenizer or use the one "
            f"the codes were made with ({meta.tokenizer_path})"
        )
    if expect_tokenizer_sha256 is None:
        _check_tokenizer_unchanged(meta, meta_path, Path(codes_dir))
    folder = Path(codes_dir) / split
    if split not in meta.splits or not folder.is_dir():
        raise VqgenError(f"{folder}: split '{split}' not found (has {', '.join(meta.splits)}); dump it with `vqgen dump-codes`")
    table = datasets.load_from_disk(str(folder))
    _check_table(table, meta, meta_path, split)
    return CodeGrids(table, meta)


def _check_tokenizer_unchanged(meta: CodeGridMeta, meta_path: Path, codes_dir: Path) -> None:
    """The tokenizer at tokenizer_path must still be the one that made the codes: one retrained in
    place would decode them into noise. A tokenizer folder moved away is not checked (nothing to compare)."""
    weights = Path(meta.tokenizer_path) / "model.safetensors"
    if not weights.is_file() or sha256_file(weights) == meta.tokenizer_sha256:
        return
    raise VqgenError(
        f"{meta_path}: tokenizer_sha256 does not match {weights}, which changed after the codes were dumped "
        f"(retrained in place?); dump the codes again: vqgen dump-codes --tokenizer {meta.tokenizer_path} --out {codes_dir}"
    )


def _check_table(table: datasets.Dataset, meta: CodeGridMeta, meta_path: Path, split: str) -> None:
    feature = table.features.get("codes")
    if not isinstance(feature, datasets.Array2D) or tuple(feature.shape) != (meta.grid_h, meta.grid_w):
        raise VqgenError(
            f"{meta_path}: grid_h/grid_w ({meta.grid_h}x{meta.grid_w}) do not match the stored codes "
            f"({feature}); the folder is mixed up, re-run `vqgen dump-codes`"
        )
    if meta.codebook_size - 1 > np.iinfo(np.dtype(feature.dtype)).max:
        raise VqgenError(
            f"{meta_path}: codebook_size={meta.codebook_size} cannot be held by the stored {feature.dtype} codes; "
            "the metadata belongs to another tokenizer, re-run `vqgen dump-codes`"
        )
    if len(table) != meta.splits[split]:
        raise VqgenError(
            f"{meta_path}: splits.{split}={meta.splits[split]} but {split}/ holds {len(table)} rows; "
            "the folder is incomplete, re-run `vqgen dump-codes`"
        )


@torch.no_grad()
def decode(codes: torch.Tensor, tokenizer: VQVAE, batch_size: int = 256) -> torch.Tensor:
    """codes (B, h, w) integers in [0, K) -> images (B, C, H, W) in [-1, 1] on the CPU, in batches."""
    return torch.cat([tokenizer.decode_codes(chunk).cpu() for chunk in codes.split(batch_size)])
