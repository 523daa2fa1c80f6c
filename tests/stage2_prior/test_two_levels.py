"""The two-level GPT prior (VQ-VAE-2's top and bottom grids as one sequence [cond, top, bottom]): its
token layout, the per-level loss and bits, training on a two-level folder, its metadata, and loading
it with plain transformers. One-level behaviour is covered, unchanged, by the other tests here."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from core.code_grids import GridLevel, grid_rows, join_shards, new_meta, write_shard
from core.errors import VqgenError
from core.loop import TrainConfig
from stage2_prior.load import META_FILE, load_prior, read_prior_meta
from stage2_prior.next_token import NextToken
from stage2_prior.train import PriorRunConfig, train_prior
from stage2_prior.vocab import PriorVocab

sys.path.insert(0, str(Path(__file__).parent))
from test_gpt import PLAIN_LOADER  # noqa: E402

LEVELS = (GridLevel("top", 2, 2, 8), GridLevel("bottom", 4, 4, 16))
N = 3
GPT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def structured_grids(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Random top grids; each bottom code is its top cell's code doubled plus the cell's parity, so the
    bottom is known exactly to a model that sees the whole top grid, and ~4 bits/token to one that does not."""
    top = torch.randint(0, 8, (n, 2, 2), generator=torch.Generator().manual_seed(seed))
    i, j = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    bottom = 2 * top.repeat_interleave(2, 1).repeat_interleave(2, 2) + (i + j) % 2
    return {"top": top, "bottom": bottom}


def _rows(codes, labels, indices, levels):
    yield from grid_rows(codes, labels, indices, levels)


def write_two_level_codes(folder: Path, n_train: int = 256, n_val: int = 64) -> Path:
    staging = folder.with_name(f".{folder.name}.shards")
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        write_shard(_rows, {"codes": structured_grids(n, seed), "labels": tuple((torch.arange(n) % N).tolist()),
                            "indices": tuple(range(n)), "levels": LEVELS}, LEVELS, staging / split / "rank_00000")
    meta = new_meta(LEVELS, image_size=8, channels=1, num_classes=N, data_spec="synthetic",
                    splits={"train": n_train, "val": n_val}, tokenizer_sha256="0" * 64, tokenizer_path="none",
                    vqgen_version="test")
    join_shards(staging, folder, meta)
    shutil.rmtree(staging)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    codes = write_two_level_codes(root / "codes")
    cfg = PriorRunConfig(codes=str(codes), preset="tiny", model=GPT, train=TrainConfig(
        steps=60, batch_size=32, lr=1e-2, warmup_steps=4, weight_decay=0.1, eval_every=60, save_every=60, log_every=1))
    return train_prior(cfg, root / "run"), root / "run"


def test_one_level_vocabulary_keeps_its_ids_and_two_levels_stack_their_ranges():
    assert PriorVocab(16, 3) == PriorVocab.of_levels([16], 3) and PriorVocab(16, 3).level_ranges == [range(16)]
    vocab = PriorVocab.of_levels([8, 16], 3)
    assert vocab.level_ranges == [range(0, 8), range(8, 24)]
    assert (vocab.codebook_size, vocab.uncond_token, vocab.vocab_size) == (24, 27, 28)
    assert vocab.cond_token(torch.tensor([0, 3])).tolist() == [24, 27]
    grids = structured_grids(2, 0)
    tokens = vocab.tokens(grids)
    assert tokens.shape == (2, 4 + 16)
    assert torch.equal(tokens[:, :4], grids["top"].flatten(1)) and torch.equal(tokens[:, 4:], grids["bottom"].flatten(1) + 8)


def test_each_position_is_scored_over_its_own_level_only():
    """Raising the logits of the other level's codes changes neither the loss nor the bits: a top
    position is scored over the 8 top codes, a bottom one over the 16 bottom codes."""
    vocab, codes = PriorVocab.of_levels([8, 16], N), structured_grids(4, 1)
    logits = torch.randn(4, 20, vocab.vocab_size, generator=torch.Generator().manual_seed(0))
    raised = logits.clone()
    raised[:, :4, 8:] += 100.0  # bottom codes, classes and uncond at top positions
    raised[:, 4:, :8] += 100.0  # top codes at bottom positions
    scores = []
    for values in (logits, raised):
        objective = NextToken(lambda model, vocab, codes, index, values=values: values)
        loss = objective.loss(None, vocab, codes, torch.zeros(4, dtype=torch.long))["loss"]
        batch = {"codes": codes, "label": torch.zeros(4, dtype=torch.long)}
        scores.append((float(loss), objective.evaluate(None, vocab, [batch], Accelerator(cpu=True))))
    assert scores[0] == scores[1]
    (loss, metrics) = scores[0]
    top = -torch.log_softmax(logits[:, :4, :8], -1).gather(-1, codes["top"].flatten(1)[..., None]).mean()
    assert metrics["val/top/nll"] == pytest.approx(float(top))
    # The total is the token-weighted mean of the levels, and the loss is that mean.
    assert metrics["val/nll"] == pytest.approx((4 * metrics["val/top/nll"] + 16 * metrics["val/bottom/nll"]) / 20)
    assert loss == pytest.approx(metrics["val/nll"], rel=1e-5)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_two_level_folder_trains_one_gpt_reporting_bits_per_level(trained):
    model_dir, run = trained
    last = [r for r in metrics(run) if "val/bits_per_token" in r][-1]
    assert last["val/top/unigram_bits"] == pytest.approx(3.0, abs=0.05)  # random top codes: 8 equally likely
    assert last["val/unigram_bits"] == pytest.approx(
        (4 * last["val/top/unigram_bits"] + 16 * last["val/bottom/unigram_bits"]) / 20)
    assert last["val/bits_per_token"] == pytest.approx(
        (4 * last["val/top/bits_per_token"] + 16 * last["val/bottom/bits_per_token"]) / 20)
    # The bottom codes follow from the top grid: seeing it, the prior needs far fewer bits than their unigram.
    assert last["val/bottom/bits_per_token"] < 0.5 * last["val/bottom/unigram_bits"], last
    assert last["val/top/bits_per_token"] > 2.5, last  # no context can predict random top codes


def test_the_prior_records_its_levels_and_loads_back(trained):
    model_dir, _ = trained
    stored = json.loads((model_dir / META_FILE).read_text())
    assert stored["levels"] == [{"name": "top", "grid_h": 2, "grid_w": 2, "codebook_size": 8},
                                {"name": "bottom", "grid_h": 4, "grid_w": 4, "codebook_size": 16}]
    assert (stored["codebook_size"], stored["grid_h"], stored["grid_w"], stored["uncond_token"]) == (None, None, None, 27)
    prior = load_prior(model_dir)
    assert prior.meta.levels == list(LEVELS) and prior.meta.vocab == PriorVocab.of_levels([8, 16], N)
    assert prior.model.config.vocab_size == 28 and prior.model.config.max_position_embeddings == 21


def test_a_one_level_prior_file_from_before_levels_reads_as_one_level(tmp_path):
    record = {"arch": "gpt", "codebook_size": 16, "grid_h": 4, "grid_w": 4, "num_classes": 3, "uncond_token": 19,
              "tokenizer_sha256": "0" * 64, "codes_meta": {}}
    (tmp_path / META_FILE).write_text(json.dumps(record))
    meta = read_prior_meta(tmp_path)
    assert meta.levels == [GridLevel("codes", 4, 4, 16)] and meta.vocab == PriorVocab(16, 3)


@pytest.mark.parametrize("arch, levels, message", [
    ("maskgit", None, "holds 2 levels (top 2x2 (K=8), bottom 4x4 (K=16)), but arch maskgit takes one level in this "
     "version (its two-level version comes later); use arch gpt or pixelcnn"),
    ("gpt", [{"name": "top", "grid_h": 2, "grid_w": 2}], "levels must list one level named codes or two"),
    ("gpt", [{"name": "bottom", "grid_h": 2, "grid_w": 2, "codebook_size": 8}], "levels must list one level"),
])
def test_a_damaged_or_impossible_prior_file_is_one_line(tmp_path, trained, arch, levels, message):
    record = json.loads((trained[0] / META_FILE).read_text())
    record["arch"] = arch
    record["levels"] = record["levels"] if levels is None else levels
    (tmp_path / META_FILE).write_text(json.dumps(record))
    with pytest.raises(VqgenError) as err:
        read_prior_meta(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / META_FILE}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_two_level_prior_loads_with_plain_transformers(tmp_path, trained):
    """AutoModelForCausalLM (in a process that never imports vqgen) gives the same logits over the
    two-level sequence [cond, top tokens, bottom tokens], and its generate() emits only code tokens."""
    model_dir = trained[0]
    tokens = PriorVocab.of_levels([8, 16], N).tokens(structured_grids(2, 5))
    ids = torch.cat([torch.tensor([[24], [27]]), tokens[:, :-1]], dim=1)  # class 0, unconditional
    save_file({"ids": ids}, tmp_path / "ids.safetensors")
    shutil.copytree(model_dir, tmp_path / "model")
    subprocess.run([sys.executable, str(PLAIN_LOADER), str(tmp_path), "model"], check=True, timeout=120, cwd=tmp_path)
    got = load_file(tmp_path / "model.safetensors")
    with torch.no_grad():
        expected = load_prior(model_dir).model(input_ids=ids).logits
    assert torch.allclose(got["logits"], expected, atol=1e-6)
    assert bool((got["sampled"][:, 1:] < 24).all()), "plain generate() must only emit codes"
