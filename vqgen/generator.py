"""A trained generator (a prior and its tokenizer), named one way for every command that uses one.

`where` may be a pipeline run folder (the --out of `vqgen pipeline`: OUT/tokenizer/model and
OUT/prior/model), a bundle folder written by `vqgen export` (BUNDLE/tokenizer, BUNDLE/prior and
bundle.json, whose sha256s are checked here before anything is loaded), or a Hugging Face Hub repo
id of such a bundle, downloaded with `snapshot_download` when no local path of that name exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from core.errors import VqgenError
from core.runs import read_json, sha256_file
from stage1_vqvae.load import tokenizer_folder
from stage2_prior.load import prior_folder

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = "vqgen-bundle"
FORMAT_VERSION = 1
MODELS = ("tokenizer", "prior")  # the bundle's model folders, and a pipeline run's training runs
FIX = ("pass a finished `vqgen pipeline` run folder, a folder written by `vqgen export`, or the Hub repo id "
       "of such a bundle")
# A Hub id is `name` or `owner/name`; a path-like string (./x, /x, a/b/c) is never sent to the Hub.
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class GeneratorPaths:
    prior: Path  # a prior model folder (what stage2_prior.load.load_prior accepts)
    tokenizer: Path  # a tokenizer model folder (what stage1_vqvae.load.load_tokenizer accepts)
    source: str  # what the user passed, for messages


def locate_generator(where: str | Path) -> GeneratorPaths:
    """The prior and tokenizer folders of a pipeline run, a bundle (checked) or a Hub repo id; anything
    else is one VqgenError line naming `where` and the fix."""
    path, source = Path(where), str(where)
    if path.exists():
        return _local(path, source)
    if REPO_ID.match(source) and not source.endswith((".", "/")):
        snapshot = _download(source)
        if not (snapshot / BUNDLE_FILE).is_file():
            raise VqgenError(f"{source}: this Hub repo has no {BUNDLE_FILE}, so it is not a vqgen bundle; {FIX}")
        return bundle_paths(snapshot, source)
    raise VqgenError(f"{source}: no such folder; {FIX}")


def _local(path: Path, source: str) -> GeneratorPaths:
    if not path.is_dir():
        raise VqgenError(f"{source}: is a file, not a folder; {FIX}")
    if (path / BUNDLE_FILE).is_file():
        return bundle_paths(path, source)
    if (path / "stages").is_dir():
        return run_paths(path, source)
    raise VqgenError(f"{source}: neither a pipeline run (no stages/) nor a bundle (no {BUNDLE_FILE}); {FIX}")


def run_paths(run: Path, source: str | None = None) -> GeneratorPaths:
    """The model folders of a pipeline run whose tokenizer and prior stages have finished."""
    source = source or str(run)
    if not (run / "stages").is_dir():
        what = "no such folder" if not run.exists() else "not a pipeline run (no stages/)"
        raise VqgenError(f"{source}: {what}; pass the --out folder of a finished `vqgen pipeline`")
    for stage in MODELS:
        if not (run / "stages" / f"{stage}.json").is_file():
            raise VqgenError(f"{source}: the pipeline run has not finished its {stage} stage (no stages/{stage}.json); "
                             "run the same `vqgen pipeline` command again to finish it, then pass the run")
    return GeneratorPaths(prior_folder(run / "prior"), tokenizer_folder(run / "tokenizer"), source)


def bundle_paths(bundle: Path, source: str | None = None) -> GeneratorPaths:
    """The model folders of a bundle, after checking every file against bundle.json."""
    check_bundle(bundle)
    return GeneratorPaths(prior_folder(bundle / "prior"), tokenizer_folder(bundle / "tokenizer"), source or str(bundle))


def check_bundle(bundle: Path) -> dict:
    """Refuse a bundle whose model files differ from those bundle.json lists (changed, missing or added);
    returns bundle.json's contents."""
    record = read_bundle_record(bundle)
    listed = record["files"]
    on_disk = {p.relative_to(bundle).as_posix() for model in MODELS if (bundle / model).is_dir()
               for p in (bundle / model).rglob("*") if p.is_file()}
    for name in sorted(listed):
        if name not in on_disk:
            raise VqgenError(f"{bundle / name}: missing (bundle.json lists it); copy or download the bundle again")
        if sha256_file(bundle / name) != listed[name]:
            raise VqgenError(f"{bundle / name}: its sha256 differs from bundle.json's, so the file was changed or "
                             "damaged after export; copy or download the bundle again, or export the run again")
    added = sorted(on_disk - set(listed))
    if added:
        raise VqgenError(f"{bundle / added[0]}: not listed in bundle.json, so it was added after export; remove it, "
                         "or export the run again")
    return record


def read_bundle_record(bundle: Path) -> dict:
    """bundle.json, its format and its file list checked."""
    path = bundle / BUNDLE_FILE
    record = read_json(path, "bundle record")
    if not isinstance(record, dict) or record.get("format") != BUNDLE_FORMAT:
        raise VqgenError(f"{path}: not a vqgen bundle record (format is not {BUNDLE_FORMAT!r}); {FIX}")
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise VqgenError(f"{path}: format_version {version!r} is newer than this vqgen reads ({FORMAT_VERSION}); "
                         "upgrade vqgen (pip install -U vqgen)")
    files = record.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) and _inside_models(k) for k, v in files.items()):
        raise VqgenError(f"{path}: 'files' must map paths under {' or '.join(f'{m}/' for m in MODELS)} to sha256s; "
                         "the file was edited: export the run again")
    return record


def _inside_models(name: str) -> bool:
    parts = Path(name).parts
    return len(parts) >= 2 and parts[0] in MODELS and ".." not in parts and not Path(name).is_absolute()


def _download(repo_id: str) -> Path:
    """A snapshot of Hub repo `repo_id` in the Hugging Face cache (works offline when already cached):
    the bundle's files only, so a repo that is not a bundle costs no large download."""
    try:
        return Path(snapshot_download(repo_id, allow_patterns=[BUNDLE_FILE, "README.md", *(f"{m}/*" for m in MODELS)]))
    except GatedRepoError:
        raise VqgenError(f"{repo_id}: a gated Hub repo; accept its terms on the Hub and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise VqgenError(f"{repo_id}: no such local folder, and no such Hub repo (or it is private: log in with "
                         f"`hf auth login`); {FIX}") from None
    except LocalEntryNotFoundError:
        raise VqgenError(f"{repo_id}: no such local folder, and the Hub cannot be reached (offline, or HF_HUB_OFFLINE "
                         "is set) with no copy in the Hugging Face cache; connect and unset HF_HUB_OFFLINE, or "
                         "download the bundle and pass its folder") from None
    except HfHubHTTPError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VqgenError(f"{repo_id}: the Hub refused the download ({first}); {FIX}") from None
