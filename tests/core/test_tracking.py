"""`train.log_with`: Accelerate's trackers beside metrics.jsonl, read back offline from TensorBoard's event files."""

import dataclasses
import io
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from accelerate.tracking import get_available_trackers
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from core.config import load_config
from core.data import DataConfig
from core.errors import VqgenError
from core.loop import TrainConfig, fit
from core.loop.tracking import TRACKERS, flat_config, log_pictures_after
from stage1_vqvae.train import TokenizerRunConfig, train_tokenizer
from vqgen.cli import main
from vqgen.pipeline import PipelineConfig, stage_settings

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from killing import Killed  # noqa: E402
from tiny_task import CFG, TinyTask  # noqa: E402
from tracker_events import assert_scalars_match_metrics_jsonl, events  # noqa: E402

TENSORBOARD = dataclasses.replace(CFG, log_with=["tensorboard"])  # checkpoints at steps 4, 8 and 12
NOT_INSTALLED = [name for name in TRACKERS if name not in {t.value for t in get_available_trackers()}]


def logged_config(run: Path) -> list[dict]:
    """The hparams of each start of the run: TensorBoard keeps them in a folder per start."""
    starts = []
    for folder in sorted({path.parent for path in (run / "trackers" / "vqgen").glob("*/events.out.tfevents.*")}):
        content = EventAccumulator(str(folder)).Reload().PluginTagToContent("hparams")
        info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        starts.append({name: getattr(value, value.WhichOneof("kind"))
                       for name, value in info.session_start_info.hparams.items()})
    return starts


def test_scalars_and_config_go_to_tensorboard_as_to_metrics_jsonl(tmp_path):
    fit(TinyTask(), TENSORBOARD, tmp_path)
    assert_scalars_match_metrics_jsonl(tmp_path)
    assert {"train/loss", "lr", "val/mse"} <= set(events(tmp_path).Tags()["scalars"])
    (config,) = logged_config(tmp_path)
    assert config == pytest.approx(flat_config(TinyTask().run_config)) and config["model.dim"] == 4


def test_a_resumed_run_shows_each_step_once_with_the_resumed_values(tmp_path):
    with pytest.raises(Killed):
        fit(TinyTask(kill_at_call=11), TENSORBOARD, tmp_path)  # steps 9 and 10 logged, then lost: checkpoint 8
    fit(TinyTask(), TENSORBOARD, tmp_path, resume=True)
    assert [event.step for event in events(tmp_path).Scalars("train/loss")] == list(range(1, 13))
    assert_scalars_match_metrics_jsonl(tmp_path)  # metrics.jsonl holds the resumed run's steps 9 to 12
    assert len(logged_config(tmp_path)) == 2  # the config of each start


def test_the_tokenizer_shows_its_reconstruction_grid(tmp_path, fmnist_available):
    train = TrainConfig(steps=2, batch_size=16, warmup_steps=1, eval_every=2, save_every=2, log_with=["tensorboard"])
    cfg = TokenizerRunConfig(data=DataConfig(image_size=16, max_images=32), preset="tiny",
                             model={"quantizer": {"codebook_size": 32}}, train=train)
    train_tokenizer(cfg, tmp_path)
    (picture,) = events(tmp_path).Images("val/reconstruction")
    shown = np.asarray(Image.open(io.BytesIO(picture.encoded_image_string)).convert("RGB"))
    assert picture.step == 2
    assert np.array_equal(shown, np.asarray(Image.open(tmp_path / "recon_step_2.png").convert("RGB")))
    (config,) = logged_config(tmp_path)  # the run's whole config, flat
    assert config["preset"] == "tiny" and config["train.steps"] == 2 and config["data.image_size"] == 16
    assert config["train.log_with"] == '["tensorboard"]' and config["model.quantizer.codebook_size"] == 32


def test_a_grid_drawn_after_the_run_joins_its_trackers_at_the_last_step(tmp_path):
    fit(TinyTask(), TENSORBOARD, tmp_path)
    grid = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(grid).save(tmp_path / "grid.png")
    # TensorBoard reads a folder's event files in name order: the second they were opened, then a counter
    # that sorts as text (".10" before ".8"). The pipeline draws its samples long after the prior's last
    # event; here a second's wait puts the new file after the training's, as there.
    time.sleep(1.1)
    log_pictures_after(tmp_path, ["tensorboard"], {"samples/grid": tmp_path / "grid.png"}, step=12)
    (picture,) = events(tmp_path).Images("samples/grid")
    assert picture.step == 12
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(picture.encoded_image_string)).convert("RGB")), grid)
    assert_scalars_match_metrics_jsonl(tmp_path)  # the training's events are all still shown
    assert len(logged_config(tmp_path)) == 1  # no second config: the picture is not a new start


def test_no_tracker_by_default_writes_no_tracker_files(tmp_path):
    fit(TinyTask(), dataclasses.replace(CFG, steps=1), tmp_path)
    assert TrainConfig().log_with == [] and not (tmp_path / "trackers").exists()


@pytest.mark.skipif(not NOT_INSTALLED, reason="every tracker Accelerate knows is installed")
@pytest.mark.parametrize("command, key", [("train-tokenizer", "train"), ("pipeline", "prior.train")])
def test_a_tracker_not_installed_is_one_line_before_any_work(tmp_path, capsys, command, key):
    name = NOT_INSTALLED[0]
    with pytest.raises(VqgenError, match=rf"^train\.log_with: {name} is not installed; "
                                         rf"pip install {name}, or remove it from train\.log_with$"):
        TrainConfig(log_with=["tensorboard", name])
    code = main([command, "--out", str(tmp_path / "run"), f"--{key}.log_with=[{name}]"])
    err = capsys.readouterr().err
    assert code == 2 and f"pip install {name}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_an_unknown_tracker_is_one_line_listing_the_choices():
    with pytest.raises(VqgenError, match=r"log_with must be values, each one of .*tensorboard.*wandb.*mlflow") as err:
        load_config(TrainConfig, overrides=["--log_with=[tensorbord]"])
    assert "\n" not in str(err.value) and "'tensorbord'" in str(err.value)


def test_a_finished_pipeline_stage_is_kept_whatever_its_trackers():
    plain = load_config(PipelineConfig)
    tracked = load_config(PipelineConfig, None, [f"--{stage}.train.log_with=[tensorboard]" for stage in ("tokenizer", "prior")])
    assert all(stage_settings(plain, stage) == stage_settings(tracked, stage) for stage in ("tokenizer", "prior"))


def test_help_lists_the_setting_and_its_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train-prior", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--train.log_with=LIST (default [])" in text and "each one of aim, tensorboard, wandb" in text
