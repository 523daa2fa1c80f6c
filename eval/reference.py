"""Reference statistics on disk: `X.npz` and its sidecar `X.json`, written and read back checked.

The `.npz` holds `mu` (2048,) and `sigma` (2048, 2048) float64, the keys pytorch-fid writes and
reads, `features` (N, 2048) float32 for KID and precision/recall, and `mu_s` (2023,) and `sigma_s`
(2023, 2023) for sFID, the keys of an ADM reference batch; the sidecar records the protocol. A
third-party `.npz` (pytorch-fid's `--save-stats`, an ADM reference batch) is read for these keys only.
Every file read is checked before it is used: a wrong shape or a NaN would otherwise give a number
(or crash oneMKL's eigen-solver outright).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import VqgenError
from core.runs import OutputLock, atomic_path, read_json, write_json
from eval.inception import NUM_FEATURES, NUM_SPATIAL
from eval.report import check_output_file, claim_file, json_has_keys, written

SIDECAR_KEYS = ("network", "weights_sha", "n", "split")  # what every sidecar of ours holds
REMAKE = "make it again with `vqgen fid-ref`"
ARRAY_KEYS = ("mu", "sigma", "features", "mu_s", "sigma_s")  # ADM's names for the spatial pair
SHAPES = {"mu": (NUM_FEATURES,), "sigma": (NUM_FEATURES, NUM_FEATURES), "features": ("N", NUM_FEATURES),
          "mu_s": (NUM_SPATIAL,), "sigma_s": (NUM_SPATIAL, NUM_SPATIAL)}


@dataclass
class RefStats:
    """Reference statistics: mu (F,), sigma (F, F) float64; features (N, F) float32 or None; the
    spatial features' mu_s (S,), sigma_s (S, S) float64 or None (F = 2048, S = 2023)."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None


def sidecar_of(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def claim_ref_out(path: str | Path) -> OutputLock:
    """`check_ref_out`, then lock `path` for this process (released by `with`, else at exit)."""
    check_ref_out(path)
    return claim_file(Path(path))


def check_ref_out(path: str | Path) -> None:
    """Refuse, before any work, a `save_ref` destination that cannot be written, or that holds an
    `.npz` or `.json` other than an earlier `vqgen fid-ref` output (known by its sidecar)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise VqgenError(f"{path}: reference statistics are an .npz file (with the sidecar {path.stem}.json "
                         "beside it); pass --out NAME.npz")
    ours = lambda _: json_has_keys(sidecar_of(path), SIDECAR_KEYS)  # noqa: E731
    check_output_file(path, ours, "reference statistics from `vqgen fid-ref`")
    check_output_file(sidecar_of(path), ours, "the sidecar of reference statistics from `vqgen fid-ref`")


def save_ref(path: str | Path, stats: RefStats) -> None:
    """`path` (.npz) with mu, sigma (and features), and `path.json` beside it with the protocol. The
    sidecar goes first: a kill between the two leaves no `.npz` that looks complete without it."""
    path = Path(path)
    arrays = {key: getattr(stats, key) for key in ARRAY_KEYS if getattr(stats, key) is not None}
    with written(sidecar_of(path), "the sidecar of the reference statistics"):
        write_json(sidecar_of(path), stats.meta)
    with written(path, "the reference statistics"), atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz" to the temp name
            np.savez(f, **arrays)


def load_ref(path: str | Path) -> RefStats:
    """Our `.npz` or a third-party one (pytorch-fid, ADM) holding at least `mu` and `sigma`, checked.
    Only ARRAY_KEYS are read: an ADM reference batch also holds ~2 GB of images."""
    path = Path(path)
    if not path.is_file():
        raise VqgenError(f"{path}: reference statistics not found; make them with `vqgen fid-ref`")
    try:
        with np.load(path, allow_pickle=False) as npz:  # lazy: an array is read when it is indexed
            if "mu" not in npz.files or "sigma" not in npz.files:
                raise VqgenError(f"{path}: has keys {sorted(npz.files)}, needs 'mu' and 'sigma'; {REMAKE}")
            arrays = {k: npz[k] for k in ARRAY_KEYS if k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise VqgenError(f"{path}: not a readable .npz ({err}); {REMAKE}") from None
    check_arrays(path, arrays)
    sidecar = sidecar_of(path)
    meta = read_json(sidecar, "reference sidecar") if sidecar.is_file() else {}
    if not isinstance(meta, dict) or not isinstance(meta.get("data", {}), dict):
        raise VqgenError(f"{sidecar}: not the sidecar of reference statistics; delete it or {REMAKE}")
    if ("mu_s" in arrays) != ("sigma_s" in arrays):
        raise VqgenError(f"{path}: has one of 'mu_s' and 'sigma_s' without the other; {REMAKE}")
    typed = {key: array.astype(np.float32 if key == "features" else np.float64, copy=False)
             for key, array in arrays.items()}
    return RefStats(**typed, meta=meta)


def check_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Shapes mu (F,), sigma (F, F), features (N, F), mu_s (S,), sigma_s (S, S) with F = 2048 and
    S = 2023; real numbers, all finite; each sigma symmetric (to float32 rounding) with a
    non-negative diagonal, as a covariance is."""
    for key, array in arrays.items():
        want = SHAPES[key]
        if array.ndim != len(want) or any(w != "N" and s != w for s, w in zip(array.shape, want)):
            raise VqgenError(f"{path}: '{key}' has shape {array.shape}, Inception statistics need "
                             f"{tuple(want)}; {REMAKE}")
        if array.dtype.kind not in "fiu":
            raise VqgenError(f"{path}: '{key}' holds {array.dtype}, not real numbers; {REMAKE}")
        if not np.isfinite(array).all():
            raise VqgenError(f"{path}: '{key}' holds NaN or inf; {REMAKE} from images that load")
    for key in ("sigma", "sigma_s"):
        if key in arrays:
            check_covariance(path, key, arrays[key].astype(np.float64, copy=False))


def check_covariance(path: Path, key: str, sigma: np.ndarray) -> None:
    scale = max(-float(sigma.min()), float(sigma.max()), np.finfo(np.float64).tiny)
    # Row blocks: a whole sigma - sigma.T would be another 32 MB.
    asymmetry = max(float(np.abs(sigma[i : i + 256] - sigma[:, i : i + 256].T).max()) for i in range(0, len(sigma), 256))
    if asymmetry > 1e-5 * scale or (np.diag(sigma) < 0).any():
        raise VqgenError(f"{path}: '{key}' is not a covariance (not symmetric, or a negative variance); {REMAKE}")
