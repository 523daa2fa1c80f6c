"""`vqgen export`: a finished pipeline run as one folder to hand to a colleague or upload to the Hub.

    BUNDLE/tokenizer/    config.json, model.safetensors, vqgen_tokenizer.json (what load_tokenizer reads)
    BUNDLE/prior/        config.json, model.safetensors, generation_config.json, vqgen_prior.json
    BUNDLE/samples.png   the run's sample grid, when it has one
    BUNDLE/bundle.json   vqgen and format versions, the sha256 of every model file, what the models are
    BUNDLE/README.md     the model card (vqgen/card.py): Hub metadata, metrics with their protocol, usage

Only the files that load the models are copied: no checkpoint, no optimizer state. `vqgen.generator`
checks every sha256 before a bundle is used.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import GENERATION_CONFIG_NAME

from core import __version__
from core.config import to_dict
from core.model_folder import FILES
from core.runs import (
    REPLACED_WHOLE,
    atomic_path,
    claim_output,
    disk_full_is_user_error,
    read_json,
    sha256_file,
    write_json,
)
from sampling.decode import check_pair
from stage1_vqvae.load import TRAINING_FILE, load_tokenizer, training_data
from stage2_prior.load import META_FILE, load_prior
from vqgen.card import CardFacts, model_card
from vqgen.generator import BUNDLE_FILE, BUNDLE_FORMAT, FORMAT_VERSION, GeneratorPaths, run_paths

# The files of each model folder a bundle keeps: save_pretrained's and our own record (copied when present).
KEPT = {"tokenizer": (*FILES, TRAINING_FILE), "prior": (*FILES, GENERATION_CONFIG_NAME, META_FILE)}
GRID_FILE = "samples.png"
CARD_FILE = "README.md"


def export_run(run: str | Path, out: str | Path) -> Path:
    """Write the bundle of the finished pipeline run `run` into `out` (replacing an earlier bundle
    there, whole); returns `out`. An unfinished run or an `out` vqgen did not write is refused first."""
    run, out = Path(run), Path(out)
    paths = run_paths(run)
    facts = describe(run, paths, out.name)
    with claim_output(out, "bundle"), disk_full_is_user_error(out, REPLACED_WHOLE), \
            atomic_path(out, is_dir=True) as tmp:
        files = {f"{model}/{name}": _copy_public(folder / name, tmp / model / name)
                 for model, folder in (("tokenizer", paths.tokenizer), ("prior", paths.prior))
                 for name in KEPT[model] if (folder / name).is_file()}
        if facts.grid:
            shutil.copyfile(run / "samples" / "grid.png", tmp / GRID_FILE)
        write_json(tmp / BUNDLE_FILE, bundle_record(files, facts))
        (tmp / CARD_FILE).write_text(model_card(facts))
    return out


def describe(run: Path, paths: GeneratorPaths, name: str) -> CardFacts:
    """What the bundle holds, read from the run: both models are loaded (so a run whose models do not
    load or do not belong together is refused before anything is written) and its metrics.json read."""
    prior, tokenizer = load_prior(paths.prior), load_tokenizer(paths.tokenizer)
    check_pair(prior, paths.prior, tokenizer)
    data = training_data(paths.tokenizer)
    metrics, sampling = (read_json(path, what) if path.is_file() else {} for path, what in
                         ((run / "metrics.json", "run metrics"), (run / "samples" / "sample_config.json", "sample settings")))
    return CardFacts(
        name=name, prior=prior.meta, tokenizer=tokenizer.config,
        data=dataclasses.replace(data, spec=public_spec(data.spec)),
        parameters={"tokenizer": tokenizer.num_parameters(), "prior": prior.model.num_parameters()},
        plain_transformers=prior.model.config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        metrics=metrics, sampling=sampling, grid=GRID_FILE if (run / "samples" / "grid.png").is_file() else None,
    )


def public_spec(spec: str) -> str:
    """A data spec as a bundle shows it: a local path keeps only its last part (where the data lies on
    the exporting machine is nobody else's business and means nothing elsewhere); others unchanged."""
    kind, colon, where = spec.partition(":")
    local = where.startswith(("/", ".", "~")) or Path(where).expanduser().exists()
    return f"{kind}:{Path(where).name}" if colon and where and local else spec


def _public_record(record: dict[str, Any]) -> dict[str, Any]:
    """Our JSON records with the exporting machine's paths taken out: the tokenizer the codes were made
    with is the bundle's own (its sha256 stays), data specs lose their local folders."""
    record = {key: _public_record(value) if isinstance(value, dict) else value for key, value in record.items()}
    if isinstance(record.get("spec"), str):
        record["spec"] = public_spec(record["spec"])
    if "tokenizer_path" in record:
        record["tokenizer_path"] = "tokenizer"
    return record


def _copy_public(source: Path, target: Path) -> str:
    """Copy one model file (our own JSON records through `_public_record`); its sha256, taken from the copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.name in (META_FILE, TRAINING_FILE):
        write_json(target, _public_record(read_json(source, "model record")))
    else:
        shutil.copyfile(source, target)
    return sha256_file(target)


def bundle_record(files: dict[str, str], facts: CardFacts) -> dict[str, Any]:
    """bundle.json: our metadata (the Hub reads README.md's front matter, vqgen reads this)."""
    meta, tok = facts.prior, facts.tokenizer
    return {
        "format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, "vqgen_version": __version__,
        "files": files,
        "models": {
            "tokenizer": {"model_type": tok.model_type, "image_size": tok.image_size, "channels": tok.in_channels,
                          "codebook_size": tok.codebook_size, "grid": [tok.grid_size, tok.grid_size],
                          "parameters": facts.parameters["tokenizer"], "data": to_dict(facts.data)},
            "prior": {"arch": meta.arch, "codebook_size": meta.codebook_size, "grid": [meta.grid_h, meta.grid_w],
                      "num_classes": meta.num_classes, "uncond_token": meta.uncond_token,
                      "parameters": facts.parameters["prior"],
                      "loads_with": "transformers.AutoModelForCausalLM" if facts.plain_transformers else "vqgen"},
        },
        # The run's headline numbers; how long its stages took says nothing about the models.
        "metrics": {k: v for k, v in facts.metrics.get("summary", {}).items() if k != "stage_seconds"},
    }
