"""The notebooks' helpers keep no hidden state: a folder trained with other fields is never reused, the
course's folder names follow what was changed, RETRAIN leaves no stale guide, and nothing changes the kernel
(working directory, input transformers) behind the learner's back."""
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from lib_cfg.checkpoint import resolve_checkpoint
from lib_cfg.config import get_preset
from lib_cfg.notebook import (check_folder, differences, ensure_trained, has_attributes, is_finished, remove_run,
                              setup, shorter_guide)

from test_checkpoint import tiny_config

LIB = Path(__file__).resolve().parent.parent / "lib_cfg"


def test_a_folder_trained_with_other_fields_is_refused_and_the_fields_named(tmp_path, data_dir, capsys):
    config = tiny_config(tmp_path, data_dir, "run", max_steps=4)
    ensure_trained(config, silent=True)
    out = capsys.readouterr().out
    assert re.search(r"training steps 1-4 now \(4 steps of 16 images: about [\d.]+ min of steps on this machine", out), out
    assert differences(config) == {} and is_finished(config)
    # where, how long and how visibly do not count: the same model
    assert is_finished(replace(config, log_every=1, num_inference_steps=7))
    changed = replace(config, text_drop_prob=0.5)
    assert differences(changed) == {"text_drop_prob": (0.3, 0.5)}
    with pytest.raises(ValueError, match=r"run holds a model trained with text_drop_prob=0.3 \(you asked for 0.5\)"):
        ensure_trained(changed, silent=True)
    with pytest.raises(ValueError, match="snr_gamma"):
        check_folder(replace(config, snr_gamma=1.0))


def test_setup_names_a_folder_for_the_changed_fields_and_stays_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert setup("quick").checkpoint_dir == "checkpoints/quick-course"
    assert setup("quick", text_drop_prob=0.5).checkpoint_dir == "checkpoints/quick-course-text_drop_prob=0.5"
    assert setup("ci", snr_gamma=0.0, beta_schedule="cosine").checkpoint_dir == \
        "checkpoints/ci-beta_schedule=cosine-snr_gamma=0.0"
    assert setup("ci", max_steps=7, log_every=1).checkpoint_dir == "checkpoints/ci"  # runtime fields: the same model
    assert setup("ci", text_drop_prob=0.5, checkpoint_dir="mine").checkpoint_dir == "mine"
    assert os.getcwd() == str(tmp_path)


def test_remove_run_deletes_the_guide_snapshot_too(tmp_path, data_dir):
    config = tiny_config(tmp_path, data_dir, "main", max_steps=8)
    ensure_trained(config, silent=True)
    guide = shorter_guide(config)
    assert is_finished(config) and is_finished(guide)
    remove_run(config)
    assert not os.path.exists(config.checkpoint_dir) and not os.path.exists(guide.checkpoint_dir)


def test_training_again_replaces_an_older_guide_snapshot(tmp_path, data_dir):
    """The main run deleted by hand, its guide left behind: the new run writes its own guide over it."""
    config = tiny_config(tmp_path, data_dir, "again", max_steps=8)
    ensure_trained(config, silent=True)
    guide = shorter_guide(config)
    weights = os.path.join(resolve_checkpoint(guide.checkpoint_dir), "model.safetensors")
    before = os.stat(weights).st_mtime_ns
    shutil.rmtree(config.checkpoint_dir)
    ensure_trained(config, silent=True)
    assert os.stat(os.path.join(resolve_checkpoint(guide.checkpoint_dir), "model.safetensors")).st_mtime_ns > before


def test_has_attributes_says_why_a_cell_is_skipped(capsys):
    assert has_attributes(get_preset("ci")) and capsys.readouterr().out == ""
    assert not has_attributes(get_preset("lesson-smoke"))
    assert "skipped: this cell needs the labels of a labelled dataset" in capsys.readouterr().out


def test_the_library_never_changes_the_kernel_behind_the_learner():
    for path in LIB.glob("*.py"):
        source = path.read_text()
        assert "os.chdir" not in source, f"{path.name} changes the working directory"
        assert "input_transformers" not in source, f"{path.name} rewrites cells"


def test_log_lines_carry_a_validation_loss_only_when_it_is_new(tmp_path, data_dir):
    from lib_cfg.bookkeeping import read_log

    config = tiny_config(tmp_path, data_dir, "log", max_steps=40, log_every=10, validate_every=20)
    ensure_trained(config, silent=True, save_guide=False)
    lines = read_log(config.checkpoint_dir)
    assert [line["step"] for line in lines] == [10, 20, 30, 40]
    assert ["val_loss" in line for line in lines] == [False, True, False, True]


def test_a_run_that_has_trained_is_not_trained_again_on_top(tmp_path, data_dir):
    """Notebook 03 hands its `run` to ensure_trained; after RETRAIN (the folder deleted) the same cell must train
    a fresh model, not 4 more steps on the trained one: the weights equal the first training's."""
    import torch

    from lib_cfg.checkpoint import load_model
    from lib_cfg.train import build_training

    config = tiny_config(tmp_path, data_dir, "twice", max_steps=4)
    run = build_training(config, silent=True)
    ensure_trained(config, run, silent=True)
    first, _ = load_model(config.checkpoint_dir, "cpu")
    remove_run(config)
    ensure_trained(config, run, silent=True)
    again, _ = load_model(config.checkpoint_dir, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
