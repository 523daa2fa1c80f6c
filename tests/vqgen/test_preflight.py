"""The pipeline's checks before stage 1, on a tiny labelled folder: each refusal a later stage would
make is made up front, naming the pipeline's keys, and a good config passes."""

import pytest

from core.config import load_config
from core.errors import VqgenError
from vqgen.cli import main
from vqgen.pipeline import PipelineConfig
from vqgen.preflight import check_pipeline

# 2 classes x 16 images of 16x16: 24 train, 8 val (= test) images.
SMALL = ["--data.image_size=16", "--data.val_fraction=0.25", "--tokenizer.preset=tiny",
         "--tokenizer.train.batch_size=8", "--prior.preset=demo", "--prior.train.batch_size=8",
         "--eval.classifier.train.batch_size=8", "--eval.classifier.widths=[8, 16]", "--sample.per_class=4",
         "--eval.inception_n=8", "--eval.ref_n=8", "--eval.rfid_n=4", "--eval.recon_n=4"]


def config(folder, *changes: str):
    return load_config(PipelineConfig, None, [f"--data.spec=folder:{folder}", *SMALL, *changes])


def test_a_good_config_passes(folder):
    check_pipeline(config(folder))
    check_pipeline(config(folder, "--prior.arch=pixelcnn", "--sample.per_class=0", "--sample.n=8"))
    check_pipeline(config(folder, "--tokenizer.model={levels: 2, top_factor: 4}"))  # a 2x2 top grid over 8x8


@pytest.mark.parametrize(
    "changes,message",
    [
        (["--sample.per_class=3"], "sample.per_class=3 x 2 classes = 6 samples < eval.inception_n=8; raise sample.per_class"),
        (["--sample.per_class=0", "--sample.n=5"], "sample.n=5 < eval.inception_n=8; raise sample.n or lower eval.inception_n"),
        (["--sample.per_class=0", "--sample.n=3", "--eval.inception_n=0"], "sample.n=3: FID and KID need at least 4"),
        (["--sample.classes=[2]"], "sample.classes [2] out of range"),
        (["--tokenizer.train.batch_size=32"], "tokenizer.train.batch_size=32 is larger than the 24 training images"),
        (["--prior.train.batch_size=32"], "prior.train.batch_size=32 is larger than the 24 training images"),
        (["--eval.classifier.train.batch_size=32"], "eval.classifier.train.batch_size=32 is larger"),
        (["--prior.train.grad_accum=3"], "prior.train.batch_size=8 is not divisible by 1 process(es) x prior.train.grad_accum=3"),
        (["--prior.preset=huge"], "prior.preset: unknown GPT preset 'huge'"),
        (["--prior.arch=pixelcnn", "--prior.preset=huge"], "prior.preset: unknown PixelCNN preset 'huge'"),
        (["--prior.model={vocab_size: 40}"], "prior.model.vocab_size: 40 is too small for K=64 codes + 2 classes"),
        (["--prior.model={max_position_embeddings: 8}"], "prior.model.max_position_embeddings: 8 is too short"),
        (["--prior.model={hidden_sise: 8}"], "hidden_sise"),
        (["--tokenizer.model={channel_mult: [1, 2, 2, 2, 2, 2]}"],
         "data.image_size=16 is not a multiple of the tokenizer's downsampling factor 32"),
        (["--tokenizer.model={codebook_size: 0}"], "codebook_size"),
        (["--tokenizer.model={levels: 2}", "--prior.arch=maskgit", "--sample.per_class=0", "--sample.n=8"],
         "prior.arch=maskgit takes one grid of codes in this version, and tokenizer.model.levels=2 makes top 4x4 (K=64), "
         "bottom 8x8 (K=64); use prior.arch=gpt"),
        (["--tokenizer.model={levels: 2, channel_mult: [1, 2, 2, 2, 2]}"],  # a 1x1 bottom grid has no top grid
         "data.image_size=16 is not a multiple of the tokenizer's downsampling factor 32; use a multiple of 32 or fewer "
         "model.channel_mult entries, a smaller model.top_factor or model.levels=1"),
        (["--sample.cfg_scale=2", "--prior.label_dropout=0"], "sample.cfg_scale=2.0 needs the unconditional token"),
        (["--sample.classes=[-1, 0]", "--prior.label_dropout=0"], "sample.classes -1 needs the unconditional token"),
        (["--eval.rfid_n=0", "--eval.recon_n=1"], "eval.rfid_n=0 scores eval.recon_n=1 val image; rFID needs 2"),
        (["--data.val_fraction=0.01", "--eval.ref_split=train"], "the val split holds 1 image; rFID needs 2"),
        (["--data.val_fraction=0.05"], "has 2 test images; FID and KID need at least 4"),
        (["--eval.classifier.widths=[4, 4, 4, 4, 4]"], "eval.classifier.widths: 5 stages halve data.image_size=16"),
    ],
)
def test_a_refusal_of_a_later_stage_comes_first(folder, changes, message):
    with pytest.raises(VqgenError) as err:
        check_pipeline(config(folder, *changes))
    assert message in str(err.value)


def test_missing_inception_weights_are_found_missing_first(folder, tmp_path):
    with pytest.raises(VqgenError, match="Inception weights not found"):
        check_pipeline(config(folder), tmp_path / "nope.pth")


def test_the_cli_refuses_before_writing(folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["pipeline", "--out", str(out), f"--data.spec=folder:{folder}", *SMALL]
    assert main([*argv, "--sample.per_class=0", "--sample.n=5"]) == 2
    err = capsys.readouterr().err
    assert "error: sample.n=5 < eval.inception_n=8" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("changes,message", [
    (["--tokenizer.loss.perceptual_weight=1"], "tokenizer.loss.perceptual_weight > 0 needs LPIPS's ImageNet VGG16 weights"),
    (["--tokenizer.loss.perceptual_network=inception"], "the Inception network that scores FID is never a training loss"),
    (["--tokenizer.loss.adversarial.weight=0.5", "--tokenizer.loss.adversarial.discriminator_layers=4"],
     "discriminator_layers=4 halves data.image_size=16 until no patch is left"),
])
def test_the_tokenizer_loss_is_refused_before_stage_1(folder, tmp_path, monkeypatch, changes, message):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty torch hub cache: no VGG16 weights
    monkeypatch.delenv("VQGEN_LPIPS_WEIGHTS", raising=False)
    with pytest.raises(VqgenError) as err:
        check_pipeline(config(folder, *changes))
    assert message in str(err.value) and "\n" not in str(err.value)
