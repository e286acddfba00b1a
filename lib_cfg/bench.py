"""Benchmarks, measured on the machine they run on: `python -m lib_cfg.bench [--quick]`.

Writes benchmarks/results.json and results.md (machine, torch version, threads, date; lib_cfg.bench_report):
- training images/s of a lib_cfg step versus a diffusers UNet2DModel of (nearly) the same size,
  fed the same text projection through its "identity" class embedding, in the same loop, interleaved;
- the text-embedding cache versus re-encoding every batch (the lesson's way): step time ratio;
- sampling: batched cond+uncond (one 2N-row pass) versus two passes; DDIM 25/50/100 versus DDPM 1000,
  with the judge's adherence when a trained `quick` checkpoint exists.
--quick: the `quick`-size comparisons only (a few minutes on 2 CPU cores), written to results-quick.json
and results-quick.md, so the full record stays.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from typing import Optional

import torch

from .bench_report import machine, read_results, write_results
from .bookkeeping import Callback, sampling_model
from .config import get_preset, resolve_device, use_bf16
from .data import all_captions, image_cache_path, load_data
from .diffusion import cfg_eps, guided_eps, noise_schedule_for, sampler_for
from .evaluation import adherence_sweep, attribute_accuracy, evaluation_prompts, judge, real_fidelity
from .fidelity import Fidelity, speckle_stats
from .model import UNetModel, count_parameters, create_unet_model
from .sampling import load_pipeline
from .stand_ins import AFHQ_LIKE, CLIP_TEXT_768
from .text_encoder import EmbeddingCache, TextEncoder
from .train import compiled, make_optimizer, run_training, training_step


def diffusers_unet(config, text_embed_dim: int):
    """A diffusers UNet2DModel laid out like ours (same widths, depth, attention levels, scale-shift norm),
    plus the same text projection, whose output enters through class_embed_type='identity'."""
    from diffusers import UNet2DModel  # the benchmarks' extra, not the library's

    chans = tuple(config.model_channels * m for m in config.channel_mult)
    attn = [2 ** i in config.attention_resolutions for i in range(len(chans))]
    unet = UNet2DModel(sample_size=config.resolution, block_out_channels=chans, layers_per_block=config.num_res_blocks,
                       down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
                       up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
                       class_embed_type="identity", resnet_time_scale_shift="scale_shift",
                       norm_num_groups=min(32, config.model_channels // 4), attention_head_dim=chans[-1] // config.num_heads)
    ted = 4 * config.model_channels
    text_proj = torch.nn.Sequential(torch.nn.Linear(text_embed_dim, ted), torch.nn.SiLU(), torch.nn.Linear(ted, ted))

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet, self.text_proj = unet, text_proj
            self.null_text_embed = torch.nn.Parameter(torch.randn(1, text_embed_dim) * 0.02)

        swap_in_null = UNetModel.swap_in_null  # the same null-caption swap as ours

        def forward(self, x, t, text_embeddings, uncond_mask=None):
            text_embeddings = self.swap_in_null(text_embeddings, x.shape[0], uncond_mask)
            return self.unet(x, t, class_labels=self.text_proj(text_embeddings)).sample

    return Wrapped()


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(names, rounds: int):
    """`names` over `rounds` rounds, who goes first alternating from round to round, so a drift of the machine
    (or the cost of going first or second) hits every contender alike. Callers report medians over rounds:
    a burst of load from elsewhere on a shared machine spoils one round, not the figure."""
    names = list(names)
    for i in range(rounds):
        yield from (names if i % 2 == 0 else names[::-1])


class PeakMemory:
    """Peak memory of what runs between `start()` and `mib()`, in MiB: CUDA's allocator peak, or on Linux
    the process's peak resident set above its size at `start()` (freed heap handed back to the system
    first, and the kernel's high-water mark reset through /proc/self/clear_refs). None where neither works."""

    def __init__(self, device):
        self.cuda, self.base = str(device).startswith("cuda"), None

    @staticmethod
    def _status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field))

    def start(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current resident size
            self.base = self._status_kib("VmRSS:") * 1024
        except (OSError, StopIteration, AttributeError):
            self.base = None

    def mib(self):
        if self.base is None:
            return None
        peak = torch.cuda.max_memory_allocated() if self.cuda else self._status_kib("VmHWM:") * 1024
        return (peak - self.base) / 2 ** 20


def train_speed(config, text_embed_dim: int, steps: int, rounds: int = 3) -> dict:
    """images/s of lib_cfg's `training_step` (forward, MSE, backward, clip, AdamW) on both models, interleaved,
    with the same optimizer and config.mixed_precision for both."""
    device = resolve_device(config.device)
    schedule = noise_schedule_for(config, device)
    torch.manual_seed(0)
    models = {"lib_cfg": create_unet_model(config, device, text_embed_dim, verbose=False),
              "diffusers": diffusers_unet(config, text_embed_dim).to(device)}
    opts = {k: make_optimizer(m, config) for k, m in models.items()}
    stepped = {k: compiled(m, config, device) for k, m in models.items()}  # config.compile: both, the same way
    b, r = config.batch_size, config.resolution
    x0, te = torch.randn(b, 3, r, r, device=device), torch.randn(b, text_embed_dim, device=device)

    def step(name):
        if config.compile and device.startswith("cuda"):
            torch.compiler.cudagraph_mark_step_begin()
        training_step(stepped[name], opts[name], x0, te, schedule, config)

    seconds = {k: [] for k in models}  # per round
    peak, memory = {}, PeakMemory(device)
    for name in models:  # warm-up (allocator, kernels)
        for _ in range(3):
            step(name)
    for name in interleaved(models, rounds):
        memory.start()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(name)
        _sync(device)
        seconds[name].append(time.perf_counter() - t0)
        used = memory.mib()
        if used is not None:
            peak[name] = round(max(peak.get(name, 0), used), 1)
    ips = {k: statistics.median(steps * b / t for t in ts) for k, ts in seconds.items()}
    ratios = [d / lib for lib, d in zip(seconds["lib_cfg"], seconds["diffusers"])]
    return {"size": f"{count_parameters(models['lib_cfg']) / 1e6:.2f}M vs {count_parameters(models['diffusers']) / 1e6:.2f}M",
            "precision": "bf16 autocast" if use_bf16(device, config.mixed_precision) else "fp32", "resolution": r,
            "batch": b, "rounds": rounds, "steps_per_round": steps,
            "images_per_s": {k: round(v, 1) for k, v in ips.items()}, "peak_memory_mib": peak or "not measured",
            "speedup": round(statistics.median(ratios), 3),
            "speedup_rounds_min_max": [round(min(ratios), 3), round(max(ratios), 3)]}


def cache_speed(config, steps: int = 10) -> dict:
    """A training step with the embedding cache versus encoding the batch's captions every step."""
    device = resolve_device(config.device)
    train_ds, _ = load_data(config, verbose=False)
    encoder = TextEncoder(config.text_encoder, device)
    cache = EmbeddingCache(encoder)
    cache.warm(train_ds.captions)
    model = create_unet_model(config, device, encoder.text_embed_dim, verbose=False)
    opt = make_optimizer(model, config)
    schedule = noise_schedule_for(config, device)
    captions = [train_ds.captions[i * config.batch_size:(i + 1) * config.batch_size] for i in range(steps)]
    x0 = torch.randn(config.batch_size, 3, config.resolution, config.resolution, device=device)

    def run(embed):
        _sync(device)
        t0 = time.perf_counter()
        for texts in captions:
            with torch.no_grad():
                te = embed(texts).to(device)
            training_step(model, opt, x0, te, schedule, config)
        _sync(device)
        return (time.perf_counter() - t0) / steps

    run(cache)  # warm-up
    cached, encoded = run(cache), run(encoder)
    return {"step_s_cached": round(cached, 4), "step_s_reencoded": round(encoded, 4),
            "reencode_over_cache": round(encoded / cached, 3)}


@torch.inference_mode()
def cfg_speed(config, n: int = 16, steps: int = 10, rounds: int = 4, scale: float = 3.0) -> dict:
    """Seconds per image for CFG at scale s with one batched 2N-row pass (`guided_eps`) versus the lesson's
    two N-row passes (`cfg_eps`)."""
    device = resolve_device(config.device)
    model = create_unet_model(config, device, 384, verbose=False).eval()
    x, te = torch.randn(n, 3, config.resolution, config.resolution, device=device), torch.randn(n, 384, device=device)

    def timed(fn):
        _sync(device)
        t0 = time.perf_counter()
        for k in range(steps):
            fn(x, torch.full((n,), 999 - k, device=device))
        _sync(device)
        return (time.perf_counter() - t0) / steps / n

    fns = {"batched": lambda x_t, t: guided_eps(model, x_t, t, te, scale),
           "two_passes": lambda x_t, t: cfg_eps(model, x_t, t, te, scale)}
    for fn in fns.values():  # warm-up
        fn(x, torch.full((n,), 500, device=device))
    times = {k: [] for k in fns}
    for name in interleaved(fns, rounds):
        times[name].append(timed(fns[name]))
    return {"s_per_image_step_batched": statistics.median(times["batched"]),
            "s_per_image_step_two_passes": statistics.median(times["two_passes"]),
            "speedup": round(statistics.median(t / b for b, t in zip(times["batched"], times["two_passes"])), 3)}


class _BarReached(Exception):
    pass


def time_to_bar(config, every: int = 50, first: int = 100, n_per_prompt: Optional[int] = None,
                limit: Optional[int] = None, past_bar: bool = False) -> dict:
    """Train `config` from scratch (in a temporary folder) and judge the EMA model at s = 3 with the config's
    sampler and steps (n_per_prompt x every prompt of its labelled data; default: the data's bar_n_per_prompt)
    every `every` steps from step `first`, until it first meets its data's bar (`LabelledData.bar`) (or reaches
    `limit` steps, default max_steps; with past_bar, judge on to `limit`). Each check also gives the Fréchet
    distance and speckle of the judged images; "fid_real" is the floor for that many real images.
    Time counts from the start of `run_training` (data, encoder, model, steps, the usual bookkeeping),
    without the time spent judging."""
    fidelity = Fidelity(config, progress=False)  # before the clock starts: its features are trained once
    bar, n_per_prompt = fidelity.data.bar, n_per_prompt or fidelity.data.bar_n_per_prompt
    checks, clock = [], {"start": time.perf_counter(), "judging": 0.0, "first_step": None}
    limit = limit or config.max_steps

    class Bar(Callback):
        def due(self, step):
            return True

        def wants_loss(self, step):
            return False  # judges the weights, not the loss: no reason to wait for the device

        def __call__(self, ctx):
            if clock["first_step"] is None:
                clock["first_step"] = time.perf_counter() - clock["start"]
            if ctx["step"] % every or ctx["step"] < first:
                return
            t0 = time.perf_counter()
            model = sampling_model(ctx)
            device = str(next(model.parameters()).device)
            if not hasattr(self, "embed"):
                self.embed = EmbeddingCache.for_config(config, device)
                self.schedule = noise_schedule_for(config, device)
            acc = adherence_sweep(model, self.embed, [3.0], sampler_for(config, self.schedule), n_per_prompt, config.num_inference_steps,
                                  progress=False, fidelity=fidelity)["3"]
            checks.append({"step": ctx["step"], "train_s": round(t0 - clock["start"] - clock["judging"], 1),
                           **{k: round(v, 4 if "speckle" in k else 3) for k, v in acc.items()}})
            h = ctx["history"]
            if h.get("caption_step") and h["caption_step"][-1] == ctx["step"]:  # validated at this step too
                checks[-1].update(caption_accuracy=round(h["caption_accuracy"][-1], 3),
                                  caption_chance=round(h["caption_chance"][-1], 3))
            print(f"time to bar: {checks[-1]}", flush=True)
            clock["judging"] += time.perf_counter() - t0
            if (all(acc[k] >= v for k, v in bar.items()) and not past_bar) or ctx["step"] >= limit:
                raise _BarReached

    with tempfile.TemporaryDirectory() as tmp:
        try:
            run_training(replace(config, checkpoint_dir=tmp), silent=True, extra_callbacks=[Bar()])
        except _BarReached:
            pass
    first_met = next((c for c in checks if all(c[k] >= v for k, v in bar.items())), None)
    reached = first_met is not None
    judge = {} if fidelity.data.judge else {"judge_accuracy": fidelity.judge_accuracy()}  # a learnt judge, checked
    return {"bar": bar, **judge, "reached": reached, "steps": first_met["step"] if reached else None,
            "train_s": first_met["train_s"] if reached else None, "setup_and_first_step_s": round(
                clock["first_step"], 1), "judged_every": every,
            "images_per_check": len(fidelity.data.prompts()) * n_per_prompt, "images_per_step": config.batch_size,
            "sampler": f"{config.sampler} {config.num_inference_steps}", "checks": checks}


def caption_vs_judge(config, every: int = 50) -> dict:
    """`caption_accuracy` beside the judge, step by step: `time_to_bar` judged every `every` steps to
    max_steps, with validation (and so caption_accuracy, `lib_cfg.caption_accuracy`) at the same steps."""
    return time_to_bar(replace(config, validate_every=every), every=every, first=every, past_bar=True)


# The recipe levers measured one at a time against `quick` as it was (the lesson's linear betas, uniform t,
# unweighted MSE, p_uncond 0.2, peak learning rate 1e-3, EMA 0.999), each with the fields it changes.
LEVERS = {
    "baseline": {},
    "cosine schedule": {"beta_schedule": "cosine"},
    "Min-SNR-5": {"snr_gamma": 5.0},
    "logit-normal t": {"timestep_sampling": "logit_normal"},
    "p_uncond 0.1": {"text_drop_prob": 0.1},
    "peak lr 2e-3": {"learning_rate": 2e-3},
    "EMA 0.995": {"ema_decay": 0.995},
}
BEFORE = dict(beta_schedule="linear", snr_gamma=0.0, timestep_sampling="uniform", text_drop_prob=0.2,
              learning_rate=1e-3, ema_decay=0.999, max_steps=1500, warmup_steps=100)


# The kept lever stacked with the next best ones, with the learning rate decaying over 500 steps.
STACKS = {
    "Min-SNR-5 @500": {"snr_gamma": 5.0},
    "Min-SNR-5 + logit-normal @500": {"snr_gamma": 5.0, "timestep_sampling": "logit_normal"},
    "Min-SNR-5 + logit-normal + lr 2e-3 @500": {"snr_gamma": 5.0, "timestep_sampling": "logit_normal",
                                                "learning_rate": 2e-3},
    "baseline @500": {},
}


def recipe_stacks(config) -> dict:
    """`recipe_levers` for STACKS, with max_steps 500."""
    return recipe_levers(config, {name: {"max_steps": 500, **o} for name, o in STACKS.items()}, limit=500)


def bar_before_after(config) -> dict:
    """Time to the bar of BEFORE's recipe and of `config`, one after the other; and `config` judged on to
    its last step (the plateau `max_steps` was chosen by)."""
    return {"before": time_to_bar(replace(config, **BEFORE), limit=600), "after": time_to_bar(config, limit=600),
            "after_to_the_end": time_to_bar(config, first=200, past_bar=True)}


def recipe_levers(config, levers=None, limit: int = 600) -> dict:
    """`time_to_bar` for each lever (name -> field overrides) on top of `config` with BEFORE's recipe."""
    out = {}
    for name, overrides in (levers or LEVERS).items():
        print(f"recipe lever: {name} {overrides}", flush=True)
        out[name] = {"overrides": overrides,
                     **time_to_bar(replace(config, **{**BEFORE, **overrides}), limit=limit)}
    return out


def loop_speed(config, steps: int, warmup: int) -> dict:
    """Steps/s of the whole training loop (`run_training`: data, embedding lookup, step, EMA, logging) on
    `config` for `steps` steps in a temporary folder, timed from step `warmup` to the step before the last
    (which validates, samples and saves)."""
    if steps < warmup + 2:
        raise ValueError(f"loop_speed needs steps >= warmup + 2 to time anything (steps={steps}, warmup={warmup})")
    device = resolve_device(config.device)
    marks = {}

    class Clock(Callback):
        def due(self, step):
            return step in (warmup, steps - 1)

        def __call__(self, ctx):
            _sync(device)  # this step's kernels are done
            marks[ctx["step"]] = time.perf_counter()

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # validation, sample grids and the checkpoint only after the last step, outside the timed window
        timed = replace(config, max_steps=steps, validate_every=steps, sample_every=steps, save_every=steps,
                        checkpoint_dir=tmp)
        model, _, bookkeeping, _ = run_training(timed, silent=True, extra_callbacks=[Clock()])
    total = time.perf_counter() - start
    rate = (steps - 1 - warmup) / (marks[steps - 1] - marks[warmup])
    return {"device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
            "precision": "bf16 autocast" if use_bf16(device, config.mixed_precision) else "fp32",
            "compile": getattr(config, "compile", False),
            "parameters_M": round(count_parameters(model) / 1e6, 2), "resolution": config.resolution,
            "batch": config.batch_size, "steps": steps, "timed_steps": steps - 1 - warmup,
            "steps_per_s": round(rate, 2), "images_per_s": round(rate * config.batch_size, 1),
            "wall_s": round(total, 1), "setup_s": round(total - steps / rate, 1),
            "last_loss": round(bookkeeping.history["loss"][-1], 4),
            "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2 ** 20) if device.startswith("cuda")
            else None}


def gpu_bench_config(device: str = "auto", data_dir: str = "data"):
    """The `lesson` preset as tools/gpu_bench.sh trains it: on the lesson's own data and CLIP embeddings when
    `make gpu-prep LESSON=1` could fetch and cache them, else on the offline stand-ins (AFHQ-shaped images,
    a 768-d CLIP-architecture encoder). Either way the images come decoded from data_dir/image_cache and the
    embeddings from data_dir/text_cache."""
    lesson = get_preset("lesson", device=device, data_dir=data_dir)
    if os.path.exists(image_cache_path(lesson)) and os.path.exists(EmbeddingCache.for_config(lesson).path):
        return lesson
    return replace(lesson, dataset=AFHQ_LIKE, text_encoder=CLIP_TEXT_768)


def prepare(config) -> None:
    """Decode config's images into data_dir/image_cache and encode its captions into data_dir/text_cache, so
    a machine without the dataset, the encoder, `datasets` or `transformers` can train from those files."""
    train_ds, val_ds = load_data(config)
    cache = EmbeddingCache.for_config(config)
    cache.warm(all_captions(train_ds) + all_captions(val_ds))
    print(f"{config.dataset}: {len(train_ds) + len(val_ds)} images in {image_cache_path(config)}; "
          f"{len(cache.table)} captions in {cache.path}")


def lesson_run(steps: int = 3000, device: str = "auto", warmup: int = 100, data_dir: str = "data",
               variants=("eager", "compiled")) -> dict:
    """The lesson-sized model (14.6M parameters, 32x32, batch 16, 768-d embeddings) in the whole loop, eager and
    compiled (`compile`: CUDA graphs on CUDA), and each one's projection to the lesson's 20 000 steps.
    Meant for a CUDA machine (tools/gpu_bench.sh); runs anywhere."""
    config = gpu_bench_config(device, data_dir)
    out = {"data": config.dataset, "text_encoder": config.text_encoder}
    for name in variants:
        try:
            result = loop_speed(replace(config, compile=name == "compiled"), steps, warmup)
        except Exception as e:  # a compiler missing on the GPU machine must not lose the eager numbers
            out[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(f"lesson_run {name}: {out[name]['error']}", flush=True)
            continue
        result["projected_20k_steps_s"] = round(config.max_steps / result["steps_per_s"] + result["setup_s"], 1)
        out[name] = result
    return out


SAMPLER_ROWS = [("ddpm", 1000, 0.0), ("ddpm", 100, 0.0), ("ddpm", 50, 0.0), ("ddpm", 25, 0.0), ("ddpm", 15, 0.0),
                ("ddpm", 10, 0.0), ("ddim", 50, 0.0), ("ddim", 25, 0.0), ("ddim", 10, 0.0), ("ddim", 50, 0.5),
                ("ddim", 25, 0.5)]


def sampler_table(checkpoint: str, n_per_prompt: int = 2, seeds=(0, 1)) -> dict:
    """Each sampler of SAMPLER_ROWS on the trained model at s = 3: seconds per image, adherence, the Fréchet
    distance and speckle (share `speckled` above SPECKLED), over n_per_prompt x 18 prompts, from the noise of
    each seed (the spread between seeds is the measurement's noise); "real": the floor for as many real images."""
    pipe = load_pipeline(checkpoint)
    fidelity = Fidelity(pipe.config, progress=False)
    texts, targets = evaluation_prompts(n_per_prompt)
    rows = []
    for kind, steps, eta in SAMPLER_ROWS:
        name = f"{kind.upper()} {steps}" + (f" eta {eta:g}" if kind == "ddim" else "")
        print(f"sampler table: {name}", flush=True)
        per_seed = []
        for seed in (seeds if steps < 1000 else seeds[:1]):  # 1000 steps: one seed (3 s an image on 2 CPU cores)
            t0 = time.perf_counter()
            images = pipe(texts, 3.0, steps, seed=seed, sampler=kind, eta=eta)
            seconds = time.perf_counter() - t0
            per_seed.append({"s_per_image": seconds / len(texts), **attribute_accuracy(judge(images), targets),
                             "fid": fidelity.fid(images), **speckle_stats(images)})
        mean = {k: sum(r[k] for r in per_seed) / len(per_seed) for k in per_seed[0]}
        rows.append({"sampler": name, "images": len(texts), "seeds": len(per_seed),
                     **{k: round(v, 4) for k, v in mean.items()},
                     "fid_per_seed": [round(r["fid"], 3) for r in per_seed]})
    base = rows[0]["s_per_image"]
    for row in rows:
        row["speedup_vs_ddpm1000"] = round(base / row["s_per_image"], 1)
    real = real_fidelity(fidelity, targets)
    return {"rows": rows, "real": {"fid": round(real["fid_real"], 4), "speckle": round(real["speckle_real"], 4)},
            "guidance_scale": 3.0}


PARTS = ("train", "cache", "cfg", "samplers", "loop", "time_to_bar", "lesson_run", "recipe", "recipe_stacks",
         "bar_before_after", "animal_faces", "caption_accuracy")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lib_cfg.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="quick-size training and sampling comparisons only")
    p.add_argument("--only", nargs="+", choices=PARTS, help="measure these parts, keep the others from results.json")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per round")
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds of the training comparison")
    p.add_argument("--device", default="auto")
    p.add_argument("--checkpoint", default="checkpoints/quick", help="trained model for the sampler table")
    p.add_argument("--lesson_steps", type=int, default=3000, help="steps of the lesson_run part")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--prepare", action="store_true", help="only write the image and text caches lesson_run reads "
                   "(`make gpu-prep`), for the stand-ins, and with --lesson for the lesson's own data too")
    p.add_argument("--lesson", action="store_true", help="with --prepare: also the lesson's dataset and CLIP (hub)")
    args = p.parse_args(argv)
    if args.prepare:
        prepare(replace(get_preset("lesson"), dataset=AFHQ_LIKE, text_encoder=CLIP_TEXT_768))
        if args.lesson:
            prepare(get_preset("lesson", device=args.device))
        return
    # lesson_run (a GPU job), recipe (about 30 min: seven trainings), recipe_stacks and bar_before_after (10-15 min
    # each) run only when asked for with --only
    parts = args.only or (PARTS[:5] if args.quick else PARTS[:6])
    results = read_results(args.out, args.quick) if args.only else {}
    results["machine"] = machine()
    quick = get_preset("quick", device=args.device)
    for part in parts:
        if part == "train":
            results["train"] = {"quick": train_speed(quick, 384, args.steps, args.rounds),
                                "quick_fp32": train_speed(replace(quick, mixed_precision="no"), 384, args.steps,
                                                          args.rounds)}
            if not args.quick:
                lesson = get_preset("lesson", device=args.device)  # fp32, as the lesson trains
                results["train"]["lesson"] = train_speed(lesson, 768, args.steps, 4)
                results["train"]["lesson_bf16"] = train_speed(replace(lesson, mixed_precision="bf16"), 768,
                                                              args.steps, 4)
                if resolve_device(args.device).startswith("cuda"):  # both networks compiled (CUDA graphs)
                    try:
                        results["train"]["lesson_compiled"] = train_speed(replace(lesson, compile=True), 768,
                                                                          args.steps, 4)
                    except Exception as e:  # a compiler missing on the GPU machine must not lose the rest
                        print(f"lesson_compiled: {type(e).__name__}: {e}", flush=True)
            results["train_speedup_vs_diffusers"] = results["train"]["quick"]["speedup"]
        elif part == "cache":
            results["text_cache"] = cache_speed(quick)
        elif part == "cfg":
            results["cfg"] = cfg_speed(quick, rounds=max(1, args.rounds // 2))
            results["cfg_batched_speedup"] = results["cfg"]["speedup"]
        elif part == "samplers":
            if not os.path.exists(os.path.join(args.checkpoint, "latest")):
                print(f"no trained model in {args.checkpoint} (make train): sampler table skipped")
                continue
            results["samplers"] = sampler_table(args.checkpoint, 1 if args.quick else 6)
        elif part == "loop":
            results["loop"] = loop_speed(quick, 120, 20)
        elif part == "time_to_bar":
            results["time_to_bar"] = time_to_bar(quick)
        elif part == "recipe":
            results["recipe"] = recipe_levers(quick)
        elif part == "recipe_stacks":
            results["recipe_stacks"] = recipe_stacks(quick)
        elif part == "bar_before_after":
            results["time_to_bar_before_after"] = bar_before_after(quick)
        elif part == "animal_faces":  # under the key of the precision it trained in (bf16, or fp32 where capped)
            af = get_preset("animal-faces", device=args.device)
            precision = "bf16" if use_bf16(resolve_device(args.device), af.mixed_precision) else "fp32"
            results.setdefault("animal_faces", {})[precision] = time_to_bar(af, every=100, first=700)
        elif part == "caption_accuracy":
            results["caption_accuracy"] = {name: caption_vs_judge(get_preset(name, device=args.device), every)
                                           for name, every in (("quick", 50), ("ci", 50), ("animal-faces", 250))}
        elif part == "lesson_run":
            results["lesson_run"] = lesson_run(args.lesson_steps, args.device)
        results.setdefault("measured", {})[part] = results["machine"]["date"]
        write_results(results, args.out, args.quick)  # after each part: a later failure keeps the earlier ones
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
