"""Interrupted runs lose nothing, bad input gets a clear error, checkpoints are safe to load."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from lib_cfg.bookkeeping import Bookkeeping, CheckpointCallback
from lib_cfg.checkpoint import load_model, resolve_checkpoint, save_checkpoint
from lib_cfg.config import get_preset, preset_of
from lib_cfg.data import load_data
from lib_cfg.diffusion import create_noise_schedule
from lib_cfg.model import UNetModel
from lib_cfg.train import DivergenceError, run_training, train

ROOT = Path(__file__).resolve().parent.parent


def test_sigterm_during_cli_train_saves_and_resume_continues(tmp_path, data_dir):
    ckpt = tmp_path / "run"
    cmd = [sys.executable, "-m", "lib_cfg", "train", "--preset", "ci", "--checkpoint_dir", str(ckpt),
           "--data_dir", data_dir, "--max_steps", "5000", "--log_every", "10", "--sample_every", "5000",
           "--save_every", "5000", "--validate_every", "5000"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = ckpt / "log.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.5)  # wait until training is really under way (20 steps logged)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "interrupted by SIGTERM" in out and "--resume" in out
    step = int(re.search(r"after step (\d+)", out).group(1))
    assert 20 <= step < 5000
    assert resolve_checkpoint(str(ckpt)).endswith(f"step_{step:06d}")
    # resume to a nearby end: continues from `step`, not from 0
    out = subprocess.run([sys.executable, "-m", "lib_cfg", "train", "--resume", str(ckpt), "--max_steps",
                          str(step + 5)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resumed from {ckpt} at step {step}" in out.stdout + out.stderr
    assert resolve_checkpoint(str(ckpt)).endswith(f"step_{step + 5:06d}")


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = get_preset("ci", checkpoint_dir=str(tmp_path / "nan"), device="cpu", warmup_steps=1)
    torch.manual_seed(0)
    from lib_cfg.model import create_unet_model
    model = create_unet_model(config, text_embed_dim=8, verbose=False)
    batches = [(torch.rand(4, 3, 16, 16), {"text": ["a"] * 4}) for _ in range(5)]
    batches[3][0][0, 0, 0, 0] = float("nan")  # step 4 sees a NaN pixel
    bookkeeping = Bookkeeping([CheckpointCallback(1, config)])
    with pytest.raises(DivergenceError, match=r"at step 4.*learning_rate"):
        train(config, model, lambda texts, device: torch.zeros(len(texts), 8), iter(batches), None,
              create_noise_schedule(100), torch.optim.AdamW(model.parameters()), steps=5, silent=True,
              bookkeeping=bookkeeping)
    assert resolve_checkpoint(config.checkpoint_dir).endswith("step_000003")
    load_model(config.checkpoint_dir, "cpu", ema=False)  # still loads


def test_nan_weights_behind_a_finite_loss_are_never_checkpointed(tmp_path):
    """The loss is computed before the update: an inf gradient can leave NaN weights behind a finite loss.
    The checkpoint callback checks the weights too, so `latest` keeps pointing at good ones."""
    from lib_cfg.model import create_unet_model

    config = get_preset("ci", checkpoint_dir=str(tmp_path / "w"), device="cpu")
    model = create_unet_model(config, "cpu", text_embed_dim=8, verbose=False)
    callback = CheckpointCallback(1, config)
    ctx = dict(model=model, ema_model=None, optimizer=None, loss=0.5, history={})
    callback({**ctx, "step": 1})
    with torch.no_grad():
        model.null_text_embed[0, 0] = float("nan")
    callback({**ctx, "step": 2})
    assert resolve_checkpoint(config.checkpoint_dir).endswith("step_000001") and callback.last_step == 1


def write_folder(root, files, captions):
    root.mkdir()
    lines = []
    for name, caption in zip(files, captions):
        lines.append(f'{{"file_name": "{name}", "text": "{caption}"}}\n')
    (root / "metadata.jsonl").write_text("".join(lines))


def test_corrupt_and_truncated_images_are_skipped_by_name(tmp_path):
    root = tmp_path / "imgs"
    write_folder(root, ["ok1.png", "ok2.png", "garbage.png", "cut.png"], ["one", "two", "three", "four"])
    for n in ("ok1.png", "ok2.png"):
        Image.new("RGB", (20, 20), (255, 0, 0)).save(root / n)
    (root / "garbage.png").write_bytes(b"not an image at all")
    Image.new("RGB", (64, 64), (0, 255, 0)).save(root / "full.png")
    (root / "cut.png").write_bytes((root / "full.png").read_bytes()[:60])
    (root / "full.png").unlink()
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable.*garbage.png.*cut.png"):
        train, val = load_data(get_preset("ci", dataset=str(root), resolution=8, val_fraction=0.5), verbose=False)
    assert len(train) + len(val) == 2


def test_empty_captions_warn_and_empty_dataset_fails(tmp_path):
    root = tmp_path / "empty_captions"
    write_folder(root, ["a.png", "b.png", "c.png"], ["a red thing", "", " "])
    for n in ("a.png", "b.png", "c.png"):
        Image.new("L", (9, 13), 200).save(root / n)
    with pytest.warns(UserWarning, match="2 of 3 captions are empty"):
        load_data(get_preset("ci", dataset=str(root), resolution=8), verbose=False)

    root = tmp_path / "nothing_usable"
    write_folder(root, ["x.png"], ["a caption"])
    (root / "x.png").write_bytes(b"broken")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="0 usable item"):
        load_data(get_preset("ci", dataset=str(root), resolution=8), verbose=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    config = get_preset("ci", checkpoint_dir=str(tmp_path_factory.mktemp("ck")), device="cpu")
    model = UNetModel(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                      num_heads=2, text_embed_dim=384)
    return config, save_checkpoint(config.checkpoint_dir, config, model, step=1)


def test_resume_with_a_different_model_names_the_fields(saved, data_dir):
    config, path = saved
    other = get_preset("ci", checkpoint_dir=config.checkpoint_dir, data_dir=data_dir, model_channels=64,
                       resolution=32, synthetic_size=200)
    with pytest.raises(ValueError, match=r"resolution: checkpoint 16, config 32; model_channels: checkpoint 32"):
        run_training(other, resume=path, silent=True)


def test_truncated_and_foreign_weight_files_give_clear_errors(saved, tmp_path):
    import shutil
    _, path = saved
    broken = str(tmp_path / "broken")
    shutil.copytree(path, broken)
    weights = Path(broken) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or not a safetensors file"):
        load_model(broken, "cpu", ema=False)
    weights.write_bytes(b"\x80\x04pickle? no thanks" * 10)
    with pytest.raises(ValueError, match="truncated or not a safetensors file"):
        load_model(broken, "cpu", ema=False)
    (Path(broken) / "trainer_state.json").write_text("{oops")
    with pytest.raises(ValueError, match="not a readable lib_cfg checkpoint"):
        load_model(broken, "cpu")


def test_mismatched_weights_are_refused(saved, tmp_path):
    import json
    import shutil
    _, path = saved
    edited = str(tmp_path / "edited")
    shutil.copytree(path, edited)
    cfg = json.loads((Path(edited) / "config.json").read_text())
    cfg["num_res_blocks"] = 2
    (Path(edited) / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match its config.json"):
        load_model(edited, "cpu", ema=False)


def test_a_lesson_checkpoint_is_recognised_and_needs_clip(tmp_path, capsys):
    from lib_cfg.cli import main
    config = get_preset("lesson", checkpoint_dir=str(tmp_path / "lesson"), device="cpu")
    assert preset_of(config) == "lesson" and preset_of(get_preset("quick", max_steps=7)) == "quick"
    from lib_cfg.model import create_unet_model
    save_checkpoint(config.checkpoint_dir, config, create_unet_model(config, text_embed_dim=768, verbose=False),
                    step=20000)
    assert main(["sample", "--checkpoint", config.checkpoint_dir, "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert "the `lesson` preset (CLIP ViT-L/14" in captured.out
    assert "all-MiniLM-L6-v2" in captured.err  # offline: CLIP cannot load, and the error names the offline encoder


def test_no_remote_code_and_no_pickle_in_the_library():
    for path in (ROOT / "lib_cfg").glob("*.py"):
        text = path.read_text()
        assert "trust_remote_code" not in text, path
        assert "import pickle" not in text and "pickle.load" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
