"""Exercise every row of the README's "When things go wrong" table and print what a user sees.

    HF_HUB_OFFLINE=1 .venv/bin/python tools/reliability_demo.py      # about 2 minutes on 2 CPU cores

Each row prints the case, then the outcome (the message or the result). Nothing here is a test:
tests/test_reliability.py asserts the same behaviour.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from PIL import Image

from lib_cfg.checkpoint import load_model, resolve_checkpoint, save_checkpoint
from lib_cfg.cli import main as cli
from lib_cfg.config import get_preset
from lib_cfg.data import load_data
from lib_cfg.model import create_unet_model
from lib_cfg.text_encoder import TextEncoder
from lib_cfg.train import run_training

ROOT = Path(__file__).resolve().parent.parent
TMP = Path(tempfile.mkdtemp(prefix="lib_cfg_reliability_"))


def row(case, fn):
    print(f"\n## {case}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = fn()
            print(f"   -> {out}" if out else "   -> ok")
        except BaseException as e:  # noqa: B902 - the point is to show whatever comes out
            print(f"   -> {type(e).__name__}: {e}")
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"   warning: {w.message}")


def sigterm_cli():
    ckpt = TMP / "run"
    cmd = [sys.executable, "-m", "lib_cfg", "train", "--preset", "ci", "--checkpoint_dir", str(ckpt),
           "--max_steps", "5000", "--log_every", "10"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    while not ((ckpt / "log.jsonl").exists() and (ckpt / "log.jsonl").read_text().count("\n") >= 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    msg = [line for line in out.splitlines() if "interrupted" in line][-1]
    return f"exit code {proc.returncode}; {msg.strip()}"


def resume_cli():
    ckpt = TMP / "run"
    step = int(re.search(r"step_(\d+)", resolve_checkpoint(str(ckpt))).group(1))
    out = subprocess.run([sys.executable, "-m", "lib_cfg", "train", "--resume", str(ckpt), "--max_steps",
                          str(step + 10)], cwd=ROOT, capture_output=True, text=True)
    said = [line for line in (out.stdout + out.stderr).splitlines() if "resumed" in line]
    return f"exit code {out.returncode}; {said[0] if said else ''}; latest = {resolve_checkpoint(str(ckpt))}"


def crash_mid_save():
    from lib_cfg import checkpoint
    config = get_preset("ci", checkpoint_dir=str(TMP / "atomic"), device="cpu")
    model = create_unet_model(config, verbose=False)
    good = save_checkpoint(config.checkpoint_dir, config, model, step=1)
    real = checkpoint.save_file
    checkpoint.save_file = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt("killed mid-save"))
    try:
        save_checkpoint(config.checkpoint_dir, config, model, step=2)
    except KeyboardInterrupt:
        pass
    finally:
        checkpoint.save_file = real
    load_model(config.checkpoint_dir, "cpu", ema=False)
    return f"killed while writing step 2; latest is still {os.path.basename(resolve_checkpoint(config.checkpoint_dir))} " \
           f"(== {os.path.basename(good)}) and it loads"


def nan_loss():
    config = get_preset("ci", checkpoint_dir=str(TMP / "nan"), learning_rate=1e30, warmup_steps=1, max_steps=50,
                        save_every=2)
    run_training(config, silent=True)


def folder(name, files):
    root = TMP / name
    root.mkdir()
    lines = []
    for fname, caption, content in files:
        if isinstance(content, Image.Image):
            content.save(root / fname)
        else:
            (root / fname).write_bytes(content)
        lines.append(json.dumps({"file_name": fname, "text": caption}) + "\n")
    (root / "metadata.jsonl").write_text("".join(lines))
    return str(root)


def data(dataset, **kw):
    train, val = load_data(get_preset("ci", dataset=dataset, resolution=8, **kw), verbose=False)
    return f"{len(train)} train + {len(val)} validation items"


red = Image.new("RGB", (20, 20), (255, 0, 0))


def main():
    print(f"lib_cfg reliability demo, files under {TMP}")
    row("Ctrl-C / SIGTERM during `python -m lib_cfg train`", sigterm_cli)
    row("--resume after the interrupt", resume_cli)
    row("a kill while a checkpoint is being written", crash_mid_save)
    row("the loss diverges (learning_rate=1e30)", nan_loss)
    row("train into a folder that already has a checkpoint",
        lambda: cli(["train", "--preset", "ci", "--checkpoint_dir", str(TMP / "run")]))
    row("unknown hub dataset (offline)", lambda: data("nobody/no-such-dataset"))
    row("a local folder that does not exist", lambda: data("./no/such/folder"))
    row("a folder without metadata.jsonl",
        lambda: (TMP / "bare").mkdir() or data(str(TMP / "bare")))
    row("missing caption column", lambda: data(folder("cols", [("a.png", "x", red), ("b.png", "y", red)]),
                                               caption_column="caption"))
    row("corrupt and truncated images", lambda: data(folder("corrupt", [
        ("a.png", "one", red), ("b.png", "two", red), ("bad.png", "three", b"garbage"),
        ("cut.png", "four", (TMP / "corrupt" / "a.png").read_bytes()[:50] if (TMP / "corrupt").exists() else b"\x89PNG")])))
    row("empty captions", lambda: data(folder("empty", [("a.png", "", red), ("b.png", "a red square", red)])))
    row("an empty dataset (nothing readable)", lambda: data(folder("none", [("a.png", "x", b"broken")])))
    row("mixed modes and sizes", lambda: data(folder("modes", [
        ("l.png", "gray", Image.new("L", (9, 31), 90)), ("rgba.png", "rgba", Image.new("RGBA", (40, 20), (0, 0, 255, 99))),
        ("p.png", "palette", red.convert("P")), ("big.png", "big", Image.new("RGB", (300, 200), (0, 200, 0)))])))
    encoder = TextEncoder("all-MiniLM-L6-v2", "cpu")
    row("empty, very long and non-ASCII prompts",
        lambda: f"embeddings {tuple(encoder(['', 'red ' * 600, 'ein rotes Quadrat über 東京 🚀']).shape)}")
    row("CLIP from the hub, offline", lambda: TextEncoder("openai/clip-vit-large-patch14", "cpu"))
    row("negative steps", lambda: get_preset("quick", max_steps=-5))
    row("text_drop_prob outside [0, 1]", lambda: get_preset("quick", text_drop_prob=1.5))
    row("a resolution the UNet cannot halve", lambda: get_preset("quick", resolution=18))
    row("guidance scale NaN (config)", lambda: get_preset("quick", guidance_scale=float("nan")))
    row("unknown preset", lambda: get_preset("fast"))
    row("unknown field on the command line", lambda: cli(["train", "--batchsize", "3"]))
    row("device='cuda' without CUDA", lambda: create_unet_model(get_preset("ci", device="cuda")))
    row("device='auto'", lambda: f"resolves to {__import__('lib_cfg.config').config.resolve_device('auto')}")
    row("resume with a different model", lambda: run_training(
        get_preset("ci", checkpoint_dir=str(TMP / "run"), model_channels=64), resume=str(TMP / "run"), silent=True))

    def truncated():
        broken = TMP / "broken"
        shutil.copytree(resolve_checkpoint(str(TMP / "run")), broken)
        (broken / "ema.safetensors").write_bytes((broken / "ema.safetensors").read_bytes()[:999])
        load_model(str(broken), "cpu")
    row("a truncated weights file", truncated)

    def foreign():
        (TMP / "broken" / "ema.safetensors").write_bytes(b"\x80\x04 a pickle would run code here")
        load_model(str(TMP / "broken"), "cpu")
    row("a foreign file in place of the weights", foreign)

    def lesson():
        config = get_preset("lesson", checkpoint_dir=str(TMP / "lesson"), device="cpu")
        save_checkpoint(config.checkpoint_dir, config, create_unet_model(config, text_embed_dim=768, verbose=False),
                        step=20000)
        return f"exit code {cli(['sample', '--checkpoint', config.checkpoint_dir, '--device', 'cpu'])}"
    row("sampling from a `lesson` checkpoint (offline)", lesson)
    shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
