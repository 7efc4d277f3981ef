"""`python -m training train` end to end for a few steps, resume through the CLI, and config errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.training_data import TINY, write_dataset
from training.__main__ import cli
from training.checkpoint import load_checkpoint
from training.config import ConfigError, config_fields, load_config, parse_override
from training.trainer import LAST

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]



def test_cli_trains_validates_and_resumes(tmp_path):
    data = write_dataset(tmp_path / "data", labelled=4, unlabelled=2)
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--config", "cpu", "--data", str(data), "--out", str(run), "--epochs", "1",
                                 *TINY])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(run / "best.pt")
    assert "random weights" in result.output  # no --encoder-weights: said so
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"]  # untrained validation, then epoch 1
    assert 0.0 <= float(rows[-1]["val_f1"]) <= 1.0 and float(rows[-1]["loss_total"]) > 0
    # Resume from the run folder alone (config from the checkpoint), with a longer budget.
    result = runner.invoke(cli, ["train", "--data", str(data), "--resume", str(run), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(run / LAST)
    assert ckpt["epoch"] == 2 and ckpt["teacher"] is not None and ckpt["preset"] == "cpu"
    assert ckpt["config"]["augment"]["crop"] == 64


def test_cli_stops_at_a_step_and_continues_from_exported_weights(tmp_path):
    from training.export import export_fp32_only

    data = write_dataset(tmp_path / "data", labelled=6, unlabelled=2)
    run = tmp_path / "run"
    runner = CliRunner()
    base = ["train", "--config", "cpu", "--data", str(data), *TINY, "--set", "teacher.warmup_epochs=0"]
    result = runner.invoke(cli, base + ["--out", str(run), "--max-steps", "8", "--stop-at-step", "3"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / LAST)["schedule"] == {"step": 3, "total_steps": 8, "warmup_steps": 0}
    export_fp32_only(run / LAST, tmp_path / "weights")
    again = tmp_path / "again"
    result = runner.invoke(cli, ["train", "--continue-from", str(tmp_path / "weights"), "--data", str(data),
                                 "--out", str(again), "--stop-at-step", "4"])
    assert result.exit_code == 0, result.output
    assert "schedule taken up at step 3 of 8" in result.output
    ckpt = load_checkpoint(again / LAST)
    assert ckpt["step"] == 4 and ckpt["schedule"]["total_steps"] == 8 and ckpt["preset"] == "cpu"
    assert list(ckpt["config"]["data"]["sources"]) == [str(data)]  # --data replaces the manifest's folders
    result = runner.invoke(cli, ["train", "--continue-from", str(tmp_path / "weights"), "--resume", str(run)])
    assert result.exit_code != 0 and "--resume and --continue-from name different starting points" in result.output


def test_cli_refuses_bad_settings_in_one_line(tmp_path):
    data = write_dataset(tmp_path / "data", labelled=1, unlabelled=0, size=32)
    runner = CliRunner()
    base = ["train", "--config", "cpu", "--data", str(data), "--out", str(tmp_path / "run")]
    result = runner.invoke(cli, base + ["--set", "augment.crop=50"])
    assert result.exit_code != 0 and "augment.crop = 50 is not a multiple of 32" in result.output
    result = runner.invoke(cli, base + ["--set", "schedule.epoch=3"])
    assert result.exit_code != 0 and "unknown key(s) epoch" in result.output
    result = runner.invoke(cli, ["train", "--config", "nosuch", "--data", str(data), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "nosuch: not a config file or preset name" in result.output
    assert not (tmp_path / "run").exists() or not (tmp_path / "run" / LAST).exists()


def test_presets_load_and_document_every_field():
    for name in ("cpu", "ship", "paper"):
        cfg = load_config(name)
        assert cfg.preset == name
    paper = load_config("paper")
    assert paper.model.encoder == "resnet50" and paper.schedule.epochs == 500
    assert paper.schedule.batch_size == paper.schedule.unlabelled_batch_size == 24
    assert paper.augment.crop == 512 and paper.teacher.warmup_epochs == 100
    ship = load_config("ship")
    assert ship.model == type(ship.model)() and ship.augment.crop == 256
    doc = (ROOT / "docs" / "TRAINING.md").read_text()
    missing = [name for name, _ in config_fields() if f"`{name}`" not in doc]
    assert not missing, f"undocumented fields: {missing}"


def test_the_capacity_preset_changes_only_the_encoder_and_its_budget():
    long, b0 = load_config("long").to_dict(), load_config("long_b0").to_dict()
    changed = {(section, key) for section, values in long.items() if isinstance(values, dict)
               for key, value in values.items() if b0[section][key] != value}
    assert changed == {("model", "encoder"), ("teacher", "warmup_epochs"), ("schedule", "max_steps")}
    assert b0["model"]["encoder"] == "efficientnet-b0" and b0["schedule"]["max_steps"] < long["schedule"]["max_steps"]


def test_the_second_cycle_preset_restarts_lower_and_ends_where_stage_11_ended():
    long, cycle = load_config("long"), load_config("long_cycle2")
    assert cycle.model == long.model and cycle.data == long.data and cycle.teacher == long.teacher
    assert cycle.optim.lr == cycle.optim.encoder_lr == long.optim.lr / 2
    assert cycle.optim.lr * cycle.optim.min_lr_ratio == pytest.approx(long.optim.lr * long.optim.min_lr_ratio)
    assert long.augment.stain_scale < cycle.augment.stain_scale <= 0.2  # below Tellez et al.'s "HED-strong"
    assert cycle.schedule.max_steps < long.schedule.max_steps


def test_a_preset_inherits_its_base_and_refuses_circles(tmp_path):
    (tmp_path / "parent.toml").write_text('base = "long"\n[schedule]\nmax_steps = 123\n')
    (tmp_path / "child.toml").write_text('base = "parent.toml"\n[optim]\nlr = 1e-4\n')
    child, long = load_config(tmp_path / "child.toml"), load_config("long")
    assert (child.schedule.max_steps, child.optim.lr, child.preset) == (123, 1e-4, "child")
    assert child.augment == long.augment and child.teacher == long.teacher
    (tmp_path / "a.toml").write_text('base = "b.toml"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\n')
    with pytest.raises(ConfigError, match="circle"):
        load_config(tmp_path / "a.toml")
    (tmp_path / "bad.toml").write_text("base = 3\n")
    with pytest.raises(ConfigError, match="bad.toml: base must be"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "lost.toml").write_text('base = "no_such_preset"\n')
    with pytest.raises(ConfigError, match="no_such_preset"):
        load_config(tmp_path / "lost.toml")


def test_overrides_parse_as_toml_values():
    assert parse_override("schedule.epochs=3") == ("schedule.epochs", 3)
    assert parse_override("model.encoder=resnet18") == ("model.encoder", "resnet18")
    assert parse_override("validation.scales=[0.8, 1.0]") == ("validation.scales", [0.8, 1.0])
    with pytest.raises(ConfigError):
        parse_override("no_equals_sign")
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config("cpu", {"teacher.semi_supervised": "yes"})


def test_module_entry_point_lists_train():
    out = subprocess.run([sys.executable, "-m", "training", "train", "--help"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "--encoder-weights" in out.stdout and "--resume" in out.stdout
