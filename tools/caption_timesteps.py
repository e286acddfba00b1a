"""caption_accuracy at several sets of timesteps, step by step, on one training run of a preset: where in t a
model reads its captions (docs/benchmarks.md, "Caption accuracy"). Prints one JSON line per measurement.

    python tools/caption_timesteps.py animal-faces 125
    python tools/caption_timesteps.py quick 50
    python tools/caption_timesteps.py quick 150 '{"dataset": "/tmp/fruit", "caption_column": "text", "tag": "fruit"}' 900

argv: preset, steps between measurements, config overrides as JSON (optional; "tag" names the folder under
/tmp/exp), and a step count to resume the finished run to (optional)."""
import sys, json, time
from dataclasses import replace
import torch
from lib_cfg.config import get_preset
from lib_cfg.train import build_training
from lib_cfg.bookkeeping import Callback, ValidationCallback, sampling_model, labelled_prompts
from lib_cfg.caption_accuracy import caption_accuracy

name, every = sys.argv[1], int(sys.argv[2])
over = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
resume_to = int(sys.argv[4]) if len(sys.argv) > 4 else None
tag = over.pop("tag", name)
config = get_preset(name, checkpoint_dir=f"/tmp/exp/ts-{tag}", validate_every=10**6, sample_every=10**6, **over)
run = build_training(config)
SETS = {"0.3,0.5,0.7": (0.3, 0.5, 0.7), "0.5,0.7,0.9": (0.5, 0.7, 0.9), "0.7,0.8,0.9": (0.7, 0.8, 0.9),
        "0.1..0.9 (5)": (0.1, 0.3, 0.5, 0.7, 0.9)}
val = ValidationCallback(1, run.val_dataloader, run.noise_schedule, run.embed, prompts=labelled_prompts(config))
out = []
class Probe(Callback):
    def __init__(self): self.every = every
    def __call__(self, ctx):
        model = sampling_model(ctx); device = next(model.parameters()).device
        images, captions, pool, targets = val.held_out()
        T = len(run.noise_schedule["betas"])
        row = {"step": ctx["step"]}
        t0 = time.time()
        for k, fr in SETS.items():
            row[k] = caption_accuracy(model, run.noise_schedule, images.to(device), captions, lambda c: run.embed(c, device),
                                      seed=1234, timesteps=[int(f * T) for f in fr], mixed_precision=config.mixed_precision,
                                      targets=targets, prompts=val.prompts)["caption_accuracy"]
        row["s"] = round(time.time() - t0, 1)
        print(json.dumps(row), flush=True); out.append(row)
run.bookkeeping.callbacks.insert(1, Probe())
run.train(silent=True)
if resume_to:
    config = replace(config, max_steps=resume_to)
    run = build_training(config, resume=config.checkpoint_dir)
    val = ValidationCallback(1, run.val_dataloader, run.noise_schedule, run.embed, prompts=labelled_prompts(config))
    run.bookkeeping.callbacks.insert(1, Probe())
    run.train(silent=True)
json.dump(out, open(f"/tmp/exp/ts-{tag}.json", "w"))
