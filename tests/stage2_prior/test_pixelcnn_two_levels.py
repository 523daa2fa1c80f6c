"""The two-level PixelCNN (VQ-VAE-2): a top PixelCNN and a bottom one conditioned on the whole top grid
through a conditioning stack; its causality, its config, training on a two-level folder with bits per
level, and one-level folders written before two levels existed."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.code_grids import GridLevel
from core.errors import VqgenError
from core.loop import TrainConfig
from stage2_prior.load import META_FILE, load_prior
from stage2_prior.next_token import pixelcnn_logits
from stage2_prior.pixelcnn import PixelCNNConfig, PixelCNNPrior, build_pixelcnn
from stage2_prior.train import PriorRunConfig, train_prior
from stage2_prior.vocab import PriorVocab

sys.path.insert(0, str(Path(__file__).parent))
from test_two_levels import structured_grids, write_two_level_codes  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "one_level_pixelcnn"
TOP = GridLevel("top", 2, 2, 8)
N = 3
SIZES = {"hidden_size": 8, "num_layers": 3, "head_size": 16, "kernel_size": 3}
LABELS = torch.tensor([0, 2])


def tiny(**overrides) -> PixelCNNPrior:
    """Top 2x2 (K=8), bottom 4x4 (K=16), N=3, in float64 so a change of one code shows exactly."""
    torch.manual_seed(0)
    return build_pixelcnn("tiny", 16, N, 4, 4, TOP, **{**SIZES, **overrides}).double().eval()


def logits(model, codes):
    with torch.no_grad():
        return model(codes, LABELS).level_logits()


def with_code(codes: dict, level: str, i: int, j: int, k: int) -> dict:
    changed = {name: grid.clone() for name, grid in codes.items()}
    changed[level][:, i, j] = (changed[level][:, i, j] + 1) % k
    return changed


def test_bottom_logits_see_only_earlier_bottom_codes_and_top_logits_never_see_the_bottom():
    model, codes = tiny(), structured_grids(2, 0)
    base = logits(model, codes)
    assert base["top"].shape == (2, 2, 2, 8) and base["bottom"].shape == (2, 4, 4, 16)
    for t in range(16):
        other = logits(model, with_code(codes, "bottom", *divmod(t, 4), 16))
        assert torch.equal(other["top"], base["top"]), f"a bottom code at {t} reached the top logits"
        before, after = (logits_["bottom"].flatten(1, 2) for logits_ in (base, other))
        assert torch.equal(after[:, : t + 1], before[:, : t + 1]), f"bottom position <= {t} sees the code at {t}"
        if t < 15:
            assert not torch.equal(after[:, t + 1], before[:, t + 1]), f"position {t + 1} misses the code at {t}"


def test_every_top_cell_reaches_the_first_bottom_code():
    """The conditioning stack shows the bottom the whole top grid: even the first bottom code, which
    sees no bottom code at all, changes with any top cell (2 residual 3x3 layers span the 2x2 top)."""
    model, codes = tiny(), structured_grids(2, 0)
    base = logits(model, codes)
    for i, j in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        other = logits(model, with_code(codes, "top", i, j, 8))
        assert not torch.equal(other["bottom"][:, 0, 0], base["bottom"][:, 0, 0]), (i, j)
        assert (other["bottom"] != base["bottom"]).any(-1).all(), f"top cell {(i, j)} must reach every bottom code"


def test_the_sequence_logits_put_each_level_in_its_vocabulary_range():
    model, codes, vocab = tiny(), structured_grids(2, 1), PriorVocab.of_levels([8, 16], N)
    index = torch.tensor([1, 3])
    with torch.no_grad():
        seq = pixelcnn_logits(model, vocab, codes, index)
        per_level = model(codes, index).level_logits()
    assert seq.shape == (2, 4 + 16, 24)
    assert torch.equal(seq[:, :4, :8], per_level["top"].flatten(1, 2)) and bool((seq[:, :4, 8:] == -torch.inf).all())
    assert torch.equal(seq[:, 4:, 8:], per_level["bottom"].flatten(1, 2)) and bool((seq[:, 4:, :8] == -torch.inf).all())


@pytest.mark.parametrize("overrides, match", [
    ({"top_grid_h": 3, "top_codebook_size": 8, "top_grid_w": 2}, r"model\.grid_h must be a multiple of top_grid_h=3"),
    ({"top_codebook_size": 8}, r"top_codebook_size, top_grid_h and top_grid_w must all be 0 \(one level\) or all"),
    ({"cond_layers": -1}, r"model\.cond_layers must be >= 0"),
])
def test_a_bad_two_level_config_is_one_line(overrides, match):
    with pytest.raises(VqgenError, match=match) as err:
        PixelCNNConfig(grid_h=4, grid_w=4, **overrides)
    assert "\n" not in str(err.value)


def test_the_codes_levels_cannot_be_overridden():
    with pytest.raises(VqgenError, match=r"^prior\.model\.top_grid_h: 1 does not match the codes \(2\); remove it$"):
        build_pixelcnn("tiny", 16, N, 4, 4, TOP, top_grid_h=1)
    with pytest.raises(VqgenError, match=r"^prior\.model\.top_codebook_size: 8 does not match the codes \(0\)"):
        build_pixelcnn("tiny", 16, N, 4, 4, top_codebook_size=8, top_grid_h=2, top_grid_w=2)


def test_a_one_level_folder_from_before_two_levels_loads_with_the_same_logits():
    """fixtures/one_level_pixelcnn was written by the code before two levels (fixtures/README.md)."""
    assert "top_codebook_size" not in json.loads((FIXTURE / "config.json").read_text())
    model, info = PixelCNNPrior.from_pretrained(FIXTURE, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    assert not model.config.two_levels
    expected = load_file(FIXTURE / "expected.safetensors")
    with torch.no_grad():
        assert torch.equal(model.eval()(expected["codes"], expected["labels"]).logits, expected["logits"])
    # A one-level model built from the same seed today has the same weights as then.
    torch.manual_seed(0)
    fresh = build_pixelcnn("tiny", 11, 3, 4, 5, hidden_size=8, num_layers=2, head_size=16, kernel_size=3)
    saved = load_file(FIXTURE / "model.safetensors")
    assert saved.keys() == fresh.state_dict().keys()
    assert all(torch.equal(saved[key], value) for key, value in fresh.state_dict().items())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixelcnn-two")
    codes = write_two_level_codes(root / "codes", n_train=64, n_val=32)
    cfg = PriorRunConfig(codes=str(codes), arch="pixelcnn", preset="tiny", model=SIZES, train=TrainConfig(
        steps=6, batch_size=16, lr=1e-2, warmup_steps=1, eval_every=6, save_every=6, log_every=1))
    return train_prior(cfg, root / "run"), root / "run"


def test_a_two_level_folder_trains_one_pixelcnn_reporting_bits_per_level(trained):
    model_dir, run = trained
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "val/bits_per_token" in r][-1]
    assert last["val/bits_per_token"] == pytest.approx(
        (4 * last["val/top/bits_per_token"] + 16 * last["val/bottom/bits_per_token"]) / 20)
    assert 0 < last["val/top/bits_per_token"] < 10 and 0 < last["val/bottom/bits_per_token"] < 10, last
    stored = json.loads((model_dir / META_FILE).read_text())
    assert [lv["name"] for lv in stored["levels"]] == ["top", "bottom"] and stored["arch"] == "pixelcnn"
    prior = load_prior(model_dir)
    config = prior.model.config
    assert (config.top_codebook_size, config.top_grid_h, config.top_grid_w) == (8, 2, 2)
    assert (config.codebook_size, config.grid_h, config.grid_w) == (16, 4, 4)
    assert isinstance(prior.model, PixelCNNPrior) and prior.meta.vocab == PriorVocab.of_levels([8, 16], N)
