"""Code grids on disk: the contract between stage 1 and stage 2. The only reader, and the writer's
format half (stage 1's `stage1_vqvae.codes.dump_codes` encodes the images and calls it).

    CODES/train/, CODES/val/   datasets `save_to_disk` Arrow folders, memory-mapped on load; columns
                               <level>  uint16 Array2D (h, w) per level (uint32 when its K > 65535),
                                        named by the level: `codes` for one level, `top` and `bottom` for two
                               label    int64, -1 when the data set is unlabelled
                               index    int64, position of the source image in its split
    CODES/vqgen_codes.json     CodeGridMeta below (format_version 2): `levels` lists every level coarse
                               to fine; "data" holds the whole DataConfig, so
                               `load_images(DataConfig(**meta.data), split)[index]` is a row's image

Version-1 folders (one `codes` column, no `levels`) read as one level named `codes`. Under
`accelerate launch` every process writes a contiguous shard of each split (`write_shard`); the main
process joins the shards in order (`join_shards`), so the rows equal a one-process dump.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from torch.utils.data import Dataset

from core.errors import VqgenError
from core.model_folder import WEIGHTS_FILE
from core.runs import atomic_path, read_json, sha256_file, write_json

FORMAT_VERSION = 2
READS = (1, 2)  # the format versions this reader understands
META_FILE = "vqgen_codes.json"
# A folder's level names, by level count, coarse to fine (VQ-VAE-2's top and bottom grids).
LEVEL_NAMES = {1: ("codes",), 2: ("top", "bottom")}
ONE_LEVEL_FIELDS = ("codebook_size", "grid_h", "grid_w")  # the one level's K, h, w, at the top level
REDUMP = "re-run `vqgen dump-codes`"


@dataclass(frozen=True)
class GridLevel:
    """One level of every image's code grid: grid_h x grid_w codes in [0, codebook_size)."""

    name: str
    grid_h: int  # h
    grid_w: int  # w
    codebook_size: int  # K


@dataclass
class CodeGridMeta:
    format_version: int
    image_size: int  # H = W of the encoded images
    channels: int  # C
    num_classes: int  # N, 0 when unlabelled
    data_spec: str
    splits: dict[str, int]  # rows per split
    tokenizer_sha256: str  # sha256 of the tokenizer's model.safetensors
    tokenizer_path: str
    vqgen_version: str
    levels: list[GridLevel]  # coarse to fine; a version-1 folder reads as one level named "codes"
    # One level: that level's K, h, w (what one-level readers use); None for two levels.
    codebook_size: int | None = None
    grid_h: int | None = None
    grid_w: int | None = None
    # Added within format 1; folders written before read back with these empty.
    data: dict = field(default_factory=dict)  # the DataConfig the images came from (maps `index` to an image)
    skipped: dict[str, int] = field(default_factory=dict)  # unreadable images data.skip_bad dropped, per split


def new_meta(levels: Sequence[GridLevel], **fields) -> CodeGridMeta:
    """The metadata of a folder about to be written in the current format: `fields` are the
    CodeGridMeta fields other than the version and the levels."""
    one = dict(zip(ONE_LEVEL_FIELDS, (levels[0].codebook_size, levels[0].grid_h, levels[0].grid_w))) \
        if len(levels) == 1 else {}
    return CodeGridMeta(format_version=FORMAT_VERSION, levels=list(levels), **one, **fields)


def describe_levels(levels: Iterable) -> str:
    """'top 4x4 (K=512), bottom 8x8 (K=512)': levels (anything with name, grid_h, grid_w, codebook_size)
    as an error message shows them."""
    return ", ".join(f"{lv.name} {lv.grid_h}x{lv.grid_w} (K={lv.codebook_size})" for lv in levels)


def one_level(meta: CodeGridMeta, codes_dir: str | Path, needs: str) -> GridLevel:
    """The only level of a one-level folder, for a reader that takes one level; a two-level folder is
    one line naming the file, its levels and `needs` (what the reader takes, and the fix)."""
    if len(meta.levels) == 1:
        return meta.levels[0]
    raise VqgenError(f"{Path(codes_dir) / META_FILE}: holds {len(meta.levels)} levels "
                     f"({describe_levels(meta.levels)}), but {needs}")


def code_dtype(codebook_size: int) -> str:
    """The Arrow dtype of stored codes: uint16 unless K > 65535 (the contract's rule, per level)."""
    return "uint16" if codebook_size <= 65535 else "uint32"


# ---- writing ----------------------------------------------------------------------------------

def grid_features(levels: Sequence[GridLevel]) -> datasets.Features:
    """The Arrow columns of a split: one Array2D per level, then label and index."""
    grids = {lv.name: datasets.Array2D(shape=(lv.grid_h, lv.grid_w), dtype=code_dtype(lv.codebook_size))
             for lv in levels}
    return datasets.Features({**grids, "label": datasets.Value("int64"), "index": datasets.Value("int64")})


def grid_rows(codes: dict[str, torch.Tensor], labels: Sequence[int], indices: Sequence[int],
              levels: Sequence[GridLevel]) -> Iterator[dict]:
    """One batch as rows: codes {level name: (B, h, w) integers}, each level cast to its stored dtype."""
    arrays = {lv.name: codes[lv.name].cpu().numpy().astype(code_dtype(lv.codebook_size)) for lv in levels}
    for b, (label, index) in enumerate(zip(labels, indices)):
        yield {**{name: grid[b] for name, grid in arrays.items()}, "label": label, "index": index}


def write_shard(rows: Callable[..., Iterator[dict]], gen_kwargs: dict, levels: Sequence[GridLevel],
                shard: Path) -> None:
    """Stream `rows(**gen_kwargs)` (dicts as `grid_rows` yields them) to the Arrow folder `shard`.
    `gen_kwargs` holds no lists: datasets would take each list for shards and call `rows` per item."""
    # from_generator writes rows to an Arrow file in cache_dir as they come (1000 per write), so
    # memory stays flat however large the split; the explicit fingerprint skips hashing the
    # generator's arguments (a model) and, with a fresh cache_dir, can never reuse stale rows.
    try:
        ds = datasets.Dataset.from_generator(
            rows, features=grid_features(levels), gen_kwargs=gen_kwargs,
            cache_dir=str(shard.with_name(shard.name + ".cache")), fingerprint=f"{shard.parent.name}-{shard.name}",
        )
    except datasets.exceptions.DatasetGenerationError as err:
        if isinstance(err.__cause__, VqgenError):  # raised while encoding (an unreadable image): our one line
            raise VqgenError(str(err.__cause__)) from None  # a new one: re-raising the cause would chain it to itself
        raise
    ds.save_to_disk(str(shard))


def join_shards(staging: Path, out: Path, meta: CodeGridMeta) -> None:
    """Write the folder `out` (atomically) from staging/<split>/<shard>/ folders, joined in name order."""
    with atomic_path(out, is_dir=True) as tmp:
        for split in meta.splits:
            shards = sorted(p for p in (staging / split).iterdir() if p.is_dir() and not p.name.endswith(".cache"))
            parts = [datasets.load_from_disk(str(p)) for p in shards]
            joined = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
            joined.save_to_disk(str(tmp / split))
        write_json(tmp / META_FILE, dataclasses.asdict(meta))


# ---- reading ----------------------------------------------------------------------------------

def read_meta(codes_dir: str | Path) -> CodeGridMeta:
    """The vqgen_codes.json of a code-grid folder, version 1 or 2, with its levels checked."""
    path = Path(codes_dir) / META_FILE
    if not Path(codes_dir).is_dir():
        raise VqgenError(f"{codes_dir}: code-grid folder not found; run `vqgen dump-codes` first or fix the path")
    raw = read_json(path, "code-grid metadata (written by `vqgen dump-codes`)")
    fields = {f.name: f for f in dataclasses.fields(CodeGridMeta)}
    _require(raw, path, [name for name, f in fields.items() if name != "levels" and _is_required(f)])
    if raw["format_version"] not in READS:
        raise VqgenError(
            f"{path}: format_version={raw['format_version']} but this vqgen reads {' and '.join(map(str, READS))}; "
            "re-run `vqgen dump-codes` with this version"
        )
    levels = _levels(raw, path)
    return CodeGridMeta(**{**{name: raw[name] for name in fields if name in raw}, "levels": levels})


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _require(raw: dict, path: Path, names: Iterable[str]) -> None:
    missing = [name for name in names if name not in raw]
    if missing:
        raise VqgenError(f"{path}: field '{missing[0]}' is missing; the folder is incomplete, {REDUMP}")


def _levels(raw: dict, path: Path) -> list[GridLevel]:
    """The levels of a version-1 (one `codes` level, from the top-level fields) or version-2 file."""
    if raw["format_version"] == 1:
        _require(raw, path, ONE_LEVEL_FIELDS)
        return [GridLevel(LEVEL_NAMES[1][0], raw["grid_h"], raw["grid_w"], raw["codebook_size"])]
    _require(raw, path, ["levels"])
    levels = _parse_levels(raw["levels"], path)
    if len(levels) == 1:
        _require(raw, path, ONE_LEVEL_FIELDS)
    top_level = tuple(raw.get(name) for name in ONE_LEVEL_FIELDS)
    expected = (levels[0].codebook_size, levels[0].grid_h, levels[0].grid_w) if len(levels) == 1 else (None,) * 3
    if top_level != expected:
        raise VqgenError(
            f"{path}: {'/'.join(ONE_LEVEL_FIELDS)} are {top_level} but levels lists {describe_levels(levels)} "
            f"(they must repeat a single level, and be null for two); the file was edited, {REDUMP}"
        )
    return levels


def _parse_levels(entries: object, path: Path) -> list[GridLevel]:
    keys = sorted(f.name for f in dataclasses.fields(GridLevel))
    if not (isinstance(entries, list) and entries and all(isinstance(e, dict) and sorted(e) == keys for e in entries)):
        raise VqgenError(f"{path}: levels must be a list of {{{', '.join(keys)}}} entries, coarse to fine; "
                         f"the file is damaged, {REDUMP}")
    levels = [GridLevel(**entry) for entry in entries]
    names = tuple(lv.name for lv in levels)
    if names not in LEVEL_NAMES.values():
        raise VqgenError(f"{path}: levels are named {', '.join(names)}, but a code-grid folder holds one level "
                         f"named codes or two named top, bottom (coarse to fine); {REDUMP}")
    if not all(type(v) is int and v > 0 for lv in levels for v in (lv.grid_h, lv.grid_w, lv.codebook_size)):
        raise VqgenError(f"{path}: levels {describe_levels(levels)}: grid sides and K must be positive integers; "
                         f"the file is damaged, {REDUMP}")
    if len(levels) == 2 and (levels[1].grid_h % levels[0].grid_h or levels[1].grid_w % levels[0].grid_w):
        top, bottom = levels
        raise VqgenError(
            f"{path}: the top grid {top.grid_h}x{top.grid_w} does not divide the bottom grid "
            f"{bottom.grid_h}x{bottom.grid_w} (each bottom side must be a whole multiple of the top one); "
            f"the file was edited or mixed from two dumps, {REDUMP}"
        )
    return levels


class CodeGrids(Dataset):
    """One split of a code-grid folder, memory-mapped. Item: an int64 (h, w) grid per level and the
    label: {"codes", "label"} for one level, {"top", "bottom", "label"} for two."""

    def __init__(self, table: datasets.Dataset, meta: CodeGridMeta):
        self.names = [lv.name for lv in meta.levels]
        self.table, self.meta = table.with_format("torch", columns=[*self.names, "label"]), meta

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.table[int(i)]
        return {**{name: row[name].long() for name in self.names}, "label": row["label"]}

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        # One Arrow read per batch instead of one per item (DataLoader's batched fetch).
        rows = self.table[list(indices)]
        grids = {name: rows[name].long() for name in self.names}
        return [{**{name: grid[b] for name, grid in grids.items()}, "label": label}
                for b, label in enumerate(rows["label"])]


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
    try:
        table = datasets.load_from_disk(str(folder))
    except (OSError, ValueError) as err:  # a torn or damaged Arrow file: pyarrow.ArrowInvalid is a ValueError
        raise VqgenError(f"{folder}: cannot read the code grids ({type(err).__name__}: {str(err).splitlines()[0]}); "
                         "dump them again with `vqgen dump-codes`") from None
    _check_table(table, meta, meta_path, split)
    return CodeGrids(table, meta)


def _check_tokenizer_unchanged(meta: CodeGridMeta, meta_path: Path, codes_dir: Path) -> None:
    """The tokenizer at tokenizer_path must still be the one that made the codes: one retrained in
    place would decode them into noise. A tokenizer folder moved away is not checked (nothing to compare)."""
    weights = Path(meta.tokenizer_path) / WEIGHTS_FILE
    if not weights.is_file() or sha256_file(weights) == meta.tokenizer_sha256:
        return
    raise VqgenError(
        f"{meta_path}: tokenizer_sha256 does not match {weights}, which changed after the codes were dumped "
        f"(retrained in place?); dump the codes again: vqgen dump-codes --tokenizer {meta.tokenizer_path} --out {codes_dir}"
    )


def _check_table(table: datasets.Dataset, meta: CodeGridMeta, meta_path: Path, split: str) -> None:
    stored = sorted(name for name, feature in table.features.items() if isinstance(feature, datasets.Array2D))
    if stored != sorted(lv.name for lv in meta.levels):
        raise VqgenError(
            f"{meta_path}: levels lists {describe_levels(meta.levels)} but {split}/ holds the grid column(s) "
            f"{', '.join(stored) or 'none'}; the folder is mixed up, {REDUMP}"
        )
    for level in meta.levels:
        _check_column(table.features[level.name], level, meta_path)
    if len(table) != meta.splits[split]:
        raise VqgenError(
            f"{meta_path}: splits.{split}={meta.splits[split]} but {split}/ holds {len(table)} rows; "
            f"the folder is incomplete, {REDUMP}"
        )


def _check_column(feature: datasets.Array2D, level: GridLevel, meta_path: Path) -> None:
    if tuple(feature.shape) != (level.grid_h, level.grid_w):
        raise VqgenError(
            f"{meta_path}: level {level.name}'s grid_h/grid_w ({level.grid_h}x{level.grid_w}) do not match the "
            f"stored codes ({feature}); the folder is mixed up, {REDUMP}"
        )
    if level.codebook_size - 1 > np.iinfo(np.dtype(feature.dtype)).max:
        raise VqgenError(
            f"{meta_path}: level {level.name}'s codebook_size={level.codebook_size} cannot be held by the stored "
            f"{feature.dtype} codes; the metadata belongs to another tokenizer, {REDUMP}"
        )
