"""Checkpoints: exact round trip, exact resume after an interrupt, atomic writes."""
import copy
import os
import shutil
import signal

import pytest
import torch

from lib_cfg import checkpoint as ckpt_mod
from lib_cfg.bookkeeping import Callback
from lib_cfg.checkpoint import load_model, resolve_checkpoint, save_checkpoint
from lib_cfg.config import get_preset
from lib_cfg.model import create_unet_model
from lib_cfg.notebook import ensure_trained, is_finished, shorter_guide
from lib_cfg.train import build_training, make_optimizer, run_training, train, training_step


def tiny_config(tmp_path, data_dir, name, **kw):
    # Small enough that a 30-step run takes seconds; all callbacks fire inside the run.
    base = dict(checkpoint_dir=str(tmp_path / name), data_dir=data_dir, synthetic_size=600, max_steps=30,
                batch_size=16, validate_every=10, sample_every=15, save_every=15, log_every=10, n_samples=2,
                num_inference_steps=3, warmup_steps=5, ema_decay=0.9, text_drop_prob=0.3)
    return get_preset("ci", **{**base, **kw})


class InterruptAt(Callback):
    """Sends this process a real SIGINT (Ctrl-C) once step `at` is done."""

    def __init__(self, at):
        self.at = at

    def due(self, step):
        return step == self.at

    def __call__(self, ctx):
        os.kill(os.getpid(), signal.SIGINT)


def test_interrupt_then_resume_equals_uninterrupted_run(tmp_path, data_dir):
    full_model, full_ema, _, _ = run_training(tiny_config(tmp_path, data_dir, "full"), silent=True)

    config = tiny_config(tmp_path, data_dir, "interrupted")
    _, _, bookkeeping, _ = run_training(config, silent=True, extra_callbacks=[InterruptAt(11)])
    assert bookkeeping.interrupted
    assert resolve_checkpoint(config.checkpoint_dir).endswith("step_000011")  # saved at the interrupt
    model, ema, bookkeeping, _ = run_training(config, resume=config.checkpoint_dir, silent=True)
    assert not bookkeeping.interrupted and bookkeeping.history["step"][0] == 1  # history carried over
    for a, b in zip(full_model.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(full_ema.state_dict().values(), ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_notebook_03s_path_trains_exactly_what_the_cli_trains(tmp_path, data_dir):
    """Notebook 03 builds the run, looks at a batch, takes one step by hand on a copy (under fork_rng), then
    trains it with ensure_trained: the weights must equal run_training's (what `python -m lib_cfg train` runs)."""
    cli_model, cli_ema, _, _ = run_training(tiny_config(tmp_path, data_dir, "cli", max_steps=12), silent=True)

    config = tiny_config(tmp_path, data_dir, "notebook", max_steps=12)
    run = build_training(config, silent=True)
    x0, meta = next(iter(run.train_dataloader))
    model = copy.deepcopy(run.model)
    with torch.random.fork_rng():
        training_step(model, make_optimizer(model, config), x0, run.embed(meta["text"]), run.noise_schedule, config)
    ensure_trained(config, run, silent=True)
    assert run.bookkeeping.history["step"][-1] == 12
    for a, b in zip(cli_model.state_dict().values(), run.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(cli_ema.state_dict().values(), run.ema_model.state_dict().values()):
        assert torch.equal(a, b)


def test_ensure_trained_saves_the_quarter_way_guide_on_the_way(tmp_path, data_dir):
    """Autoguidance's shorter guide (notebook 06) is the run's own state at a quarter of its steps, saved while
    it trains: the weights at step 3 of a 12-step run, and ensure_trained then loads it instead of training."""
    config = tiny_config(tmp_path, data_dir, "main", max_steps=12)
    ensure_trained(config, silent=True)
    guide = shorter_guide(config)
    assert guide.max_steps == 3 and is_finished(guide)
    assert resolve_checkpoint(guide.checkpoint_dir).endswith("step_000003")

    same = build_training(tiny_config(tmp_path, data_dir, "same", max_steps=12), silent=True)
    train(same.config, same.model, same.embed, same.train_dataloader, same.val_dataloader, same.noise_schedule,
          same.optimizer, steps=3, silent=True, bookkeeping=same.bookkeeping, ema_model=same.ema_model)
    for ema, model in ((True, same.ema_model), (False, same.model)):
        snapshot, _ = load_model(guide.checkpoint_dir, "cpu", ema=ema)
        for a, b in zip(model.state_dict().values(), snapshot.state_dict().values()):
            assert torch.equal(a, b)
    ensure_trained(guide, silent=True)  # finished: loaded, so it saves no guide of its own (training would)
    assert not os.path.exists(shorter_guide(guide).checkpoint_dir)
    shutil.rmtree(guide.checkpoint_dir)
    ensure_trained(guide, silent=True, save_guide=False)  # trained now, as asked: without a guide of its own
    assert is_finished(guide) and not os.path.exists(shorter_guide(guide).checkpoint_dir)


def test_round_trip_gives_identical_outputs(tmp_path, data_dir):
    config = tiny_config(tmp_path, data_dir, "rt", max_steps=5, save_every=5)
    model, ema, _, _ = run_training(config, silent=True)
    loaded, loaded_config = load_model(config.checkpoint_dir, "cpu")
    assert loaded_config == config
    x, t, te = torch.randn(4, 3, 16, 16), torch.tensor([1, 100, 500, 999]), torch.randn(4, 384)
    with torch.no_grad():
        assert torch.equal(ema.eval()(x, t, te), loaded(x, t, te))
    files = sorted(os.listdir(resolve_checkpoint(config.checkpoint_dir)))
    assert files == ["config.json", "ema.safetensors", "model.safetensors", "optimizer.safetensors",
                     "trainer_state.json"]


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    config = get_preset("ci", checkpoint_dir=str(tmp_path / "c"), device="cpu")
    model = create_unet_model(config, verbose=False)
    first = save_checkpoint(config.checkpoint_dir, config, model, step=1)
    before = open(os.path.join(first, "model.safetensors"), "rb").read()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(ckpt_mod, "save_file", crash)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(config.checkpoint_dir, config, model, step=2)
    assert resolve_checkpoint(config.checkpoint_dir) == first  # `latest` still names the good one
    assert open(os.path.join(first, "model.safetensors"), "rb").read() == before
    assert not os.path.exists(os.path.join(config.checkpoint_dir, "step_000002"))
    monkeypatch.undo()
    loaded, _ = load_model(config.checkpoint_dir, "cpu", ema=False)  # and it still loads


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    config = get_preset("ci", checkpoint_dir=str(tmp_path / "k"), device="cpu")
    model = create_unet_model(config, verbose=False)
    for step in (1, 2, 3):
        save_checkpoint(config.checkpoint_dir, config, model, step=step, keep=2)
    assert sorted(d for d in os.listdir(config.checkpoint_dir) if d.startswith("step_")) == \
        ["step_000002", "step_000003"]
