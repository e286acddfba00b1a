"""The training loop (the lesson's `train`); `build_training` builds what it needs from a config, and
`run_training` is the two together.

One step (`training_step`): take a batch (x0, captions) -> look up the caption embeddings
(cached) -> draw t and eps -> x_t = add_noise(x0, eps, t) -> predict eps with the captions,
each replaced by the null embedding with probability `text_drop_prob` -> MSE -> AdamW step;
then the bookkeeping callbacks (EMA, logs, validation, samples, checkpoints). Under torchrun the
same step runs on k processes (lib_cfg.distributed).
"""
from __future__ import annotations

import copy
import math
import signal
import threading
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from . import distributed
from .bookkeeping import Bookkeeping, default_bookkeeping
from .checkpoint import load_trainer_state, restore_training
from .config import TrainingConfig, autocast, resolve_device
from .data import all_captions, load_data
from .labelled import labelled_data
from .diffusion import add_noise, noise_schedule_for, snr
from .distributed import Shard
from .model import create_unet_model
from .text_encoder import EmbeddingCache


class DivergenceError(RuntimeError):
    pass


class StepBatchSampler(Sampler):
    """Batches of indices for steps start_step, start_step+1, ...: epoch e is a permutation seeded by
    (seed, e), so a resumed run sees exactly the batches the uninterrupted run would have.
    rows: the part of each global batch this process takes (all of it for one process)."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0, rows: slice = slice(None)):
        if n < batch_size:
            raise ValueError(f"the training set has {n} items, fewer than batch_size={batch_size}")
        self.n, self.batch_size, self.seed, self.start_step, self.rows = n, batch_size, seed, start_step, rows
        self.per_epoch = n // batch_size  # drop the last partial batch: every step has batch_size images

    def __iter__(self):
        step = self.start_step
        while True:
            epoch, i = divmod(step, self.per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            for j in range(i, self.per_epoch):
                yield perm[j * self.batch_size:(j + 1) * self.batch_size][self.rows].tolist()
            step = (epoch + 1) * self.per_epoch

    def __len__(self):
        return 2 ** 62  # endless: the loop counts steps


def lr_at(step: int, config: TrainingConfig) -> float:
    """Linear warm-up, then constant (lr_schedule "constant") or cosine decay to 10% of the peak at max_steps."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.learning_rate
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def training_step(model, optimizer, x0: torch.Tensor, text_embeddings: torch.Tensor, noise_schedule: Dict,
                  config: TrainingConfig, shard: Shard = Shard(), draws=None) -> torch.Tensor:
    """One optimisation step. x0: [N x C x H x W] images in [-1, 1]; text_embeddings: [N x D]. Returns the loss.

    With k processes, N is this process's share of the global batch: t, eps and the dropout are drawn for
    all k * N rows (the same seed everywhere) and each process keeps its own rows, so the step does not
    depend on how many processes share it. draws: (t [N], eps [N x C x H x W], uncond_mask [N]) to take
    instead of drawing them (notebook 03 gives a learner's step and this one the same draws)."""
    device = x0.device
    if draws is not None:
        t, eps, uncond_mask = draws
    else:
        n, rows = x0.shape[0] * shard.world_size, shard.rows(x0.shape[0])
        t = draw_timesteps(n, len(noise_schedule["betas"]), config.timestep_sampling, device)[rows]
        eps = torch.randn((n, *x0.shape[1:]), device=device)[rows]
        # Classifier-free dropout: each caption becomes the null embedding with probability text_drop_prob (the
        # lesson's p_uncond), so one network learns eps(x_t, t, caption) and eps(x_t, t, null). The lesson draws
        # this mask inside forward; drawn here, over the global batch, k processes take the step one would.
        uncond_mask = (torch.rand(n, device=device) < config.text_drop_prob)[rows]
    x_t = add_noise(x0, eps, t, noise_schedule)
    with autocast(str(device), config.mixed_precision):
        predicted_noise = model(x_t, t, text_embeddings, uncond_mask=uncond_mask)
    if config.snr_gamma:  # Min-SNR-gamma: each image's MSE times min(SNR, gamma) / SNR
        per_image = (predicted_noise.float() - eps).pow(2).mean(dim=(1, 2, 3))
        s = snr(noise_schedule, t)
        loss = (per_image * s.clamp(max=config.snr_gamma) / s).mean()
    else:  # the lesson's loss
        loss = F.mse_loss(predicted_noise.float(), eps)

    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # under DDP this also averages the gradients over the processes
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return loss


def draw_timesteps(n: int, T: int, how: str = "uniform", device="cpu") -> torch.Tensor:
    """n training timesteps in [0, T): "uniform", or "logit_normal" (t / T = sigmoid(z), z ~ N(0, 1))."""
    if how == "logit_normal":
        return (torch.sigmoid(torch.randn(n, device=device)) * T).long().clamp(max=T - 1)
    return torch.randint(0, T, (n,), device=device)


def train(config: TrainingConfig, model: torch.nn.Module, text_encoder, train_dataloader: DataLoader,
          val_dataloader: DataLoader, noise_schedule: Dict, optimizer: torch.optim.Optimizer,
          steps: Optional[int] = None, silent: bool = False, bookkeeping=None, ema_model=None,
          start_step: int = 0, shard: Shard = Shard(), ddp_model=None) -> float:
    """Train for `steps` (default config.max_steps) total steps, from `start_step`. Returns the last loss.

    text_encoder: (captions [N], device) -> [N x D] embeddings, e.g. an EmbeddingCache.
    shard, ddp_model: this process and the DDP-wrapped model under torchrun (lib_cfg.distributed).
    The losses stay on the device until a step that logs, validates, samples or saves (or the last): reading
    them waits for the device, so it happens once per `log_every` steps, not every step. A non-finite loss
    stops training there with DivergenceError, naming its step; no checkpoint is written after it.
    On Ctrl-C or SIGTERM the step in progress finishes, the bookkeeping saves a checkpoint, sets
    `bookkeeping.interrupted` and train returns (a second Ctrl-C interrupts at once); under torchrun every
    process stops after the same step.
    """
    device = next(model.parameters()).device
    steps = steps or config.max_steps
    step_model = compiled(ddp_model or model, config, str(device))
    cuda_graphs = config.compile and device.type == "cuda"
    model.train()
    loss_value, pending = None, []  # pending: (step, lr, loss on the device) not yet read
    batches = iter(train_dataloader)
    # At most one redraw every 2 s: in a notebook each redraw is a widget message, and a cell that trains for
    # minutes at several steps a second would otherwise send thousands (more than a kernel's output queue
    # keeps for a reader such as nbval that drains it after the cell).
    progress_bar = tqdm(range(start_step, steps), initial=start_step, total=steps, disable=silent or not shard.is_main,
                        desc="training", mininterval=2.0)

    def read_losses():
        """Bring the pending losses to the host (one sync), check them, record them; returns the last one."""
        values = shard.mean_losses(torch.stack([loss for _, _, loss in pending]))
        for (step, lr, _), value in zip(pending, values):
            if not math.isfinite(value):
                raise DivergenceError(
                    f"the loss became {value} at step {step}: training diverged. The last good checkpoint "
                    f"in {config.checkpoint_dir} was kept. Likely causes: learning_rate={config.learning_rate:g} too "
                    f"high (try half), grad_clip={config.grad_clip:g} too loose, or bad (NaN) input data.")
            if bookkeeping:
                bookkeeping.record(step, value, lr)
        pending.clear()
        if not silent:
            progress_bar.set_postfix(loss=f"{values[-1]:.4f}", lr=f"{lr:.2e}")
        return values[-1]

    with StopOnSignal() as stop:
        for step in progress_bar:
            x0, meta = next(batches)
            x0 = x0.to(device, non_blocking=True)
            with torch.no_grad():
                text_embeddings = text_encoder(meta["text"], device)
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr

            if cuda_graphs:  # a new step: the graph may reuse the last step's output memory
                torch.compiler.cudagraph_mark_step_begin()
            loss = training_step(step_model, optimizer, x0, text_embeddings, noise_schedule, config, shard)

            pending.append((step + 1, lr, loss.detach()))
            final = step + 1 == steps
            if final or (step + 1) % config.log_every == 0 or (bookkeeping and bookkeeping.wants_loss(step + 1)):
                loss_value = read_losses()
            ctx = dict(step=step + 1, loss=None if pending else loss_value, lr=lr, model=model, ema_model=ema_model,
                       optimizer=optimizer, batch_size=x0.shape[0] * shard.world_size, config=config, final=final)
            if bookkeeping:
                bookkeeping.run_callbacks(**ctx)
            if shard.any(stop.requested):  # Ctrl-C / SIGTERM in any process: the step is complete; save it, stop
                stop.requested = stop.requested or "a signal to another process"
                if pending:
                    ctx["loss"] = read_losses()
                if bookkeeping:
                    bookkeeping.save_now(**ctx)
                progress_bar.close()
                if shard.is_main:
                    print(f"\ninterrupted by {stop.requested} after step {step + 1}; " + (
                        f"checkpoint saved in {config.checkpoint_dir} (resume with --resume {config.checkpoint_dir})"
                        if bookkeeping and bookkeeping.callbacks else "no bookkeeping, nothing saved"))
                if bookkeeping:
                    bookkeeping.interrupted = True
                break
    return loss_value


def compiled(model: torch.nn.Module, config: TrainingConfig, device: str) -> torch.nn.Module:
    """`model` itself, or with config.compile, torch.compile(model): on CUDA in mode "reduce-overhead", which
    replays each step's kernels as one CUDA graph (the lesson-size step is launch-bound on a large GPU).
    The weights are shared: checkpoints, EMA and sampling keep using `model`."""
    if not config.compile:
        return model
    return torch.compile(model, mode="reduce-overhead" if device.startswith("cuda") else "default")


class StopOnSignal:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a flag the loop checks between steps, so an interrupt
    always lands on a step boundary and can be saved exactly. A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def make_dataloaders(config: TrainingConfig, train_ds, val_ds, start_step: int = 0, shard: Shard = Shard()):
    """The training loader yields batches for steps start_step, start_step+1, ... (resumable order);
    under torchrun each process gets its rows of every global batch."""
    # Own generators: creating a loader iterator draws a seed, which must not shift the global RNG
    # that the training noise comes from (a resumed run would otherwise diverge).
    # Pinned (page-locked) batches on CUDA: the copy to the GPU runs alongside the step (non_blocking in train).
    pin = resolve_device(config.device).startswith("cuda")
    train_dl = DataLoader(train_ds, batch_sampler=StepBatchSampler(len(train_ds), config.batch_size, config.seed,
                                                                  start_step, shard.rows(
                                                                      shard.per_process(config.batch_size))),
                          generator=torch.Generator().manual_seed(config.seed), pin_memory=pin)
    val_dl = DataLoader(val_ds, batch_size=config.batch_size, shuffle=False,
                        generator=torch.Generator().manual_seed(config.seed))
    return train_dl, val_dl


@dataclass
class TrainingRun:
    """Everything the loop needs, built from one config by `build_training`; `.train()` runs the loop."""
    config: TrainingConfig
    model: torch.nn.Module
    ema_model: Optional[torch.nn.Module]  # the EMA of the weights that sampling uses (None: ema_decay = 0)
    optimizer: torch.optim.Optimizer
    embed: EmbeddingCache  # captions [N] -> embeddings [N x D], each distinct caption encoded once
    noise_schedule: Dict[str, torch.Tensor]
    train_ds: Dataset
    val_ds: Dataset
    train_dataloader: DataLoader  # the batches for steps start_step, start_step + 1, ...
    val_dataloader: DataLoader
    bookkeeping: Bookkeeping  # the callbacks after each step: EMA, logs, validation, samples, checkpoints
    start_step: int = 0  # > 0 when resumed
    shard: Shard = Shard()
    ddp_model: Optional[torch.nn.Module] = None  # the DDP-wrapped model under torchrun

    def train(self, silent: bool = False) -> "TrainingRun":
        """The loop, from start_step to config.max_steps; then this process leaves the process group."""
        try:
            train(self.config, self.model, self.embed, self.train_dataloader, self.val_dataloader,
                  self.noise_schedule, self.optimizer, steps=self.config.max_steps, silent=silent or not self.shard.is_main,
                  bookkeeping=self.bookkeeping, ema_model=self.ema_model, start_step=self.start_step,
                  shard=self.shard, ddp_model=self.ddp_model)
        finally:
            distributed.close(self.shard)
        return self


def build_training(config: TrainingConfig, resume: Optional[str] = None, silent: bool = False,
                   printer=tqdm.write, extra_callbacks=()) -> TrainingRun:
    """Data, text encoder + cache, model, EMA, optimizer and bookkeeping from a config, resumed from
    `resume` (a checkpoint folder or checkpoint_dir made for the same model) when given.
    Under torchrun (WORLD_SIZE > 1) every process runs this; see lib_cfg.distributed."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    shard = distributed.init(device)
    silent = silent or not shard.is_main
    torch.manual_seed(config.seed)  # the same seed in every process: the same initial weights and noise draws
    with shard.main_first():  # process 0 writes the data and embedding caches, the others then read them
        train_ds, val_ds = load_data(config, verbose=not silent)
        embed = EmbeddingCache.for_config(config, device)
        embed.warm(all_captions(train_ds) + all_captions(val_ds))  # each distinct caption encoded once
    noise_schedule = noise_schedule_for(config, device)
    model = create_unet_model(config, device, text_embed_dim=embed.text_embed_dim, verbose=not silent)
    ema_model = copy.deepcopy(model).requires_grad_(False) if config.ema_decay > 0 else None
    optimizer = make_optimizer(model, config)
    # Restoring checks first that the checkpoint was made for this model (check_compatible).
    start_step = restore_training(resume, model, ema_model, optimizer, config) if resume else 0
    if start_step and not silent:
        printer(f"resumed from {resume} at step {start_step}")
    train_dl, val_dl = make_dataloaders(config, train_ds, val_ds, start_step, shard)
    data = labelled_data(config)
    prompts = (data.grid_prompts(config.n_samples) if data and data.grid_prompts
               else all_captions(val_ds)[:config.n_samples])
    bookkeeping = default_bookkeeping(config, val_dl, noise_schedule, embed, prompts, silent, printer)
    bookkeeping.callbacks[-1:-1] = list(extra_callbacks)  # after the EMA update, before the checkpoint
    bookkeeping.active = shard.is_main  # logs, validation, samples and checkpoints are process 0's job
    if start_step:
        bookkeeping.history.update(load_trainer_state(resume).get("history", {}))
    return TrainingRun(config, model, ema_model, optimizer, embed, noise_schedule, train_ds, val_ds, train_dl, val_dl,
                       bookkeeping, start_step, shard, distributed.wrap(model, shard))


def run_training(config: TrainingConfig, resume: Optional[str] = None, silent: bool = False, printer=tqdm.write,
                 extra_callbacks=()):
    """`build_training`, then the loop: what `python -m lib_cfg train` runs.
    Returns (model, ema_model, bookkeeping, embed)."""
    run = build_training(config, resume, silent, printer, extra_callbacks).train(silent)
    return run.model, run.ema_model, run.bookkeeping, run.embed


def make_optimizer(model, config: TrainingConfig) -> torch.optim.Optimizer:
    # The fused kernel updates all parameters in one pass, on CUDA and on the CPU (measured here: 2-6% faster steps)
    fused = resolve_device(config.device).split(":")[0] in ("cuda", "cpu")
    return torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                             **({"fused": True} if fused else {}))
