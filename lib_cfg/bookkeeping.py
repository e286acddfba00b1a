"""Bookkeeping callbacks around the training loop: EMA weights, logs, validation loss and caption accuracy,
sample grids, checkpoints.

The loop calls `bookkeeping.run_callbacks(step=..., loss=..., ...)` after every step; each
callback decides whether it is its turn (`every`) and does one job. Keeping them out of
`train()` keeps the training step short and readable.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from typing import Dict, List, Optional

import torch
from tqdm.auto import tqdm

from .caption_accuracy import CAPTION_IMAGES, caption_accuracy
from .checkpoint import save_checkpoint
from .data import all_captions
from .diffusion import add_noise, sample, sampler_for
from .labelled import labelled_data
from .plotting import save_image_grid


class Callback:
    every: int = 1
    at_end: bool = True  # also run after the last step, so the end of a run is always saved and shown

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def wants_loss(self, step: int) -> bool:
        """Whether this step's call reads the loss or the history: the loop then brings the losses to the host."""
        return self.due(step)

    def __call__(self, ctx: Dict) -> None:
        raise NotImplementedError


def sampling_model(ctx: Dict):
    """The EMA weights when training keeps them (what sampling should use), else the raw model."""
    return ctx["ema_model"] if ctx.get("ema_model") is not None else ctx["model"]


class Bookkeeping:
    def __init__(self, callbacks: List[Callback]):
        self.callbacks = callbacks
        self.history: Dict[str, list] = {"step": [], "loss": [], "lr": [], "val_step": [], "val_loss": [],
                                         "caption_step": [], "caption_accuracy": [], "caption_chance": []}
        self.interrupted = False  # set by train() when a signal stopped it
        self.active = True  # False under torchrun outside process 0: the callbacks say when, but do not run

    def record(self, step: int, loss: float, lr: float) -> None:
        """One step's loss and learning rate in the history (the loop records them when it reads them)."""
        self.history["step"].append(step)
        self.history["loss"].append(loss)
        self.history["lr"].append(lr)

    def wants_loss(self, step: int) -> bool:
        return any(cb.wants_loss(step) for cb in self.callbacks)

    def run_callbacks(self, step: int, final: bool = False, **ctx) -> None:
        """Run each callback whose turn it is (and, after the last step, those that run at the end)."""
        if not self.active:
            return
        ctx = {**ctx, "step": step, "final": final, "history": self.history}
        for cb in self.callbacks:
            if cb.due(step) or (final and cb.at_end):
                cb(ctx)

    def save_now(self, step: int, **ctx) -> None:
        """Checkpoint now (used when training is interrupted), unless this step is already saved."""
        ctx = {**ctx, "step": step, "history": self.history}
        for cb in self.callbacks if self.active else []:
            if isinstance(cb, CheckpointCallback) and cb.last_step != step:
                cb(ctx)


@torch.no_grad()
def update_ema(ema_model, model, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * model; d ramps up early so short runs get a useful average."""
    d = min(decay, (1 + step) / (10 + step))
    # One multi-tensor kernel for all the weights on CUDA, instead of one launch per tensor (~365 a step).
    torch._foreach_lerp_(list(ema_model.parameters()), list(model.parameters()), 1 - d)


class EMACallback(Callback):
    """After every step, ctx["ema_model"] moves towards ctx["model"] (an exponential moving average of the
    weights). Sampling callbacks, evaluation and checkpoints then use the EMA weights (`sampling_model`):
    they average out the last steps' noise, which shows most in short runs."""

    at_end = False  # every step is already its turn

    def __init__(self, decay: float):
        self.every, self.decay = 1, decay

    def wants_loss(self, step):
        return False

    def __call__(self, ctx):
        if ctx.get("ema_model") is not None:
            update_ema(ctx["ema_model"], ctx["model"], self.decay, ctx["step"] - 1)


class LogCallback(Callback):
    """Every `every` steps (and at the end) prints, or posts to the progress bar, the mean loss since the last
    line, the learning rate and images/s, and appends them to log_file (JSON lines)."""

    def __init__(self, every: int, log_file: Optional[str] = None, printer=tqdm.write):
        self.every, self.log_file, self.printer = every, log_file, printer
        self._t = self._step = None  # the clock, and the step it was read at
        self._line_step = None  # the last step the previous line covered

    def due(self, step):
        return True  # called every step, to start the clock at the first one; prints only every `every`

    def wants_loss(self, step):
        return step % self.every == 0

    def __call__(self, ctx):
        h, step = ctx["history"], ctx["step"]
        if self._t is None:  # the first step this callback saw (its own time is not counted)
            self._t, self._step, self._line_step = time.perf_counter(), step, step - 1
            if not ctx.get("final"):
                return
        if step % self.every and not ctx.get("final"):
            return
        now = time.perf_counter()
        ips = (step - self._step) * ctx["batch_size"] / max(now - self._t, 1e-9)
        recent = h["loss"][-(step - self._line_step):]  # the losses since the previous line
        previous, (self._t, self._step, self._line_step) = self._line_step, (now, step, step)
        line = {"step": step, "loss": sum(recent) / len(recent), "lr": ctx["lr"], "images_per_s": round(ips, 1)}
        if h["val_step"] and h["val_step"][-1] > previous:  # only a validation loss measured since the last line
            line["val_loss"] = h["val_loss"][-1]
        if h.get("caption_step") and h["caption_step"][-1] > previous:
            line["caption_accuracy"], line["caption_chance"] = h["caption_accuracy"][-1], h["caption_chance"][-1]
        if self.printer:
            self.printer(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()))
        if self.log_file:
            os.makedirs(os.path.dirname(self.log_file) or ".", exist_ok=True)
            with open(self.log_file, "a") as f:
                f.write(json.dumps(line) + "\n")


def read_log(checkpoint_dir: str) -> List[Dict]:
    """The lines LogCallback wrote to checkpoint_dir/log.jsonl: [{"step", "loss", "lr", "images_per_s", ...}]."""
    path = os.path.join(checkpoint_dir, "log.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no training log in {checkpoint_dir} (log.jsonl is written while training)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class ValidationCallback(Callback):
    """Mean denoising loss on the validation set, with fixed t and noise so values compare across steps; and
    whether the model follows its captions (`caption_accuracy` on the first `caption_images` validation
    images, the same noise each time; skipped when the validation set has fewer than two distinct captions).
    prompts: a labelled dataset's canonical (caption, labels) pairs, whose images carry their labels in their
    metadata: the rivals are then captions one label away (`lib_cfg.caption_accuracy.one_label_apart`)."""

    def __init__(self, every: int, val_dataloader, noise_schedule, embed, max_batches: int = 8,
                 caption_images: int = CAPTION_IMAGES, mixed_precision: str = "no", prompts=None):
        self.every, self.loader, self.schedule, self.embed, self.max_batches = \
            every, val_dataloader, noise_schedule, embed, max_batches
        self.caption_images, self.mixed_precision, self.prompts = caption_images, mixed_precision, prompts
        self._held_out = None  # (images, their captions, every validation caption, their labels), read once

    def held_out(self):
        if self._held_out is None:
            images, captions, targets = [], [], []
            keys = list(self.prompts[0][1]) if self.prompts else []
            for x0, meta in self.loader:
                images.append(x0)
                captions += list(meta["text"])
                targets += [{a: meta[a][i] for a in keys} for i in range(len(x0))]
                if len(captions) >= self.caption_images:
                    break
            n = min(self.caption_images, len(captions))
            pool = all_captions(self.loader.dataset) if len(captions) else []
            self._held_out = (torch.cat(images)[:n] if images else None, captions[:n], pool,
                              targets[:n] if keys else None)
        return self._held_out

    @torch.no_grad()
    def __call__(self, ctx):
        model = sampling_model(ctx)
        device = next(model.parameters()).device
        g = torch.Generator().manual_seed(1234)  # its own RNG: validation never shifts the training noise
        was_training, total, count = model.training, 0.0, 0
        model.eval()
        for i, (x0, meta) in enumerate(self.loader):
            if i >= self.max_batches:
                break
            x0 = x0.to(device)
            t = torch.randint(0, len(self.schedule["betas"]), (x0.shape[0],), generator=g).to(device)
            eps = torch.randn(x0.shape, generator=g).to(device)
            pred = model(add_noise(x0, eps, t, self.schedule), t, self.embed(meta["text"], device))
            total += torch.nn.functional.mse_loss(pred, eps, reduction="sum").item() / eps[0].numel()
            count += x0.shape[0]
        model.train(was_training)
        h = ctx["history"]
        h["val_step"].append(ctx["step"])
        h["val_loss"].append(total / max(count, 1))
        images, captions, pool, targets = self.held_out()
        if self.caption_images and len(set(pool)) >= 2:
            result = caption_accuracy(model, self.schedule, images.to(device), captions,
                                      lambda c: self.embed(c, device), pool=pool, seed=1234,
                                      mixed_precision=self.mixed_precision, targets=targets, prompts=self.prompts)
            for key, value in (("caption_step", ctx["step"]), ("caption_accuracy", result["caption_accuracy"]),
                               ("caption_chance", result["caption_chance"])):
                h.setdefault(key, []).append(value)


class SampleGridCallback(Callback):
    """Writes a PNG grid of samples (prompts as titles) with the EMA model, same noise each time, with the
    config's sampler and steps."""

    def __init__(self, every: int, out_dir: str, prompts: List[str], embed, noise_schedule, config):
        self.every, self.out_dir, self.prompts, self.embed = every, out_dir, prompts, embed
        self.sampler = sampler_for(config, noise_schedule)
        self.config = config
        self.last_path = None

    def __call__(self, ctx):

        model = sampling_model(ctx)
        device = next(model.parameters()).device
        r = self.config.resolution
        g = torch.Generator().manual_seed(self.config.seed)
        images = sample(model, self.embed(self.prompts, device), self.sampler, self.config.guidance_scale,
                        self.config.num_inference_steps, shape=(len(self.prompts), 3, r, r), generator=g,
                        progress=False)
        self.last_path = os.path.join(self.out_dir, f"samples_step_{ctx['step']:06d}.png")
        save_image_grid(images, self.last_path, titles=self.prompts,
                        suptitle=f"step {ctx['step']}, guidance s={self.config.guidance_scale:g}")


def weights_are_finite(model) -> bool:
    """No NaN or inf in any parameter (one norm per tensor, one host sync)."""
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(list(model.parameters())))).all())


def save_if_finite(config, ctx) -> Optional[str]:
    """Checkpoint this step of the run into config.checkpoint_dir (with config and the history), unless the loss
    or the weights are not finite; returns the checkpoint's path, or None when nothing was saved."""
    loss = float(ctx["loss"])
    # Never overwrite a good checkpoint with a diverged model. The loss is computed before the update, so
    # an inf gradient can make the weights NaN while this step's loss is still finite: check them too.
    if not (math.isfinite(loss) and weights_are_finite(ctx["model"])):
        return None
    return save_checkpoint(config.checkpoint_dir, config, ctx["model"], ctx["ema_model"], ctx["optimizer"],
                           ctx["step"], loss, extra={"history": ctx["history"]})


class CheckpointCallback(Callback):
    def __init__(self, every: int, config):
        self.every, self.config = every, config
        self.last_path = self.last_step = None

    def __call__(self, ctx):
        path = save_if_finite(self.config, ctx)
        if path is not None:
            self.last_path, self.last_step = path, ctx["step"]


class SnapshotCallback(Callback):
    """At one step, the run so far as a checkpoint in another folder: the same training stopped early, at no
    extra cost. Autoguidance's weaker model (notebook 06) is one."""

    at_end = False  # its step or never

    def __init__(self, step: int, checkpoint_dir: str, config):
        self.step, self.config = step, replace(config, checkpoint_dir=checkpoint_dir)

    def due(self, step):
        return step == self.step

    def __call__(self, ctx):
        save_if_finite(self.config, ctx)


def labelled_prompts(config) -> Optional[list]:
    """The canonical (caption, labels) pairs of a dataset with known labels, None for any other."""
    labelled = labelled_data(config)
    return labelled.prompts() if labelled else None


def default_bookkeeping(config, val_dataloader, noise_schedule, embed, prompts: List[str],
                        silent: bool = False, printer=tqdm.write) -> Bookkeeping:
    """The usual callbacks, reading their intervals from the config. EMA first, so the others see this
    step's average; checkpoint last, so it records the validation loss of its own step."""
    return Bookkeeping([
        EMACallback(config.ema_decay),
        ValidationCallback(config.validate_every, val_dataloader, noise_schedule, embed,
                           mixed_precision=config.mixed_precision, prompts=labelled_prompts(config)),
        LogCallback(config.log_every, os.path.join(config.checkpoint_dir, "log.jsonl"),
                    printer=None if silent else printer),
        SampleGridCallback(config.sample_every, config.checkpoint_dir, prompts, embed, noise_schedule, config),
        CheckpointCallback(config.save_every, config),
    ])
