"""Benchmarks, measured on the machine they run on: `python -m lib_cfg.bench [--quick]`.

Writes benchmarks/results.json and benchmarks/results.md (machine, torch version, threads, date):
- training images/s of a lib_cfg step versus a diffusers UNet2DModel of (nearly) the same size,
  fed the same text projection through its "identity" class embedding, in the same loop, interleaved;
- the text-embedding cache versus re-encoding every batch (the lesson's way): step time ratio;
- sampling: batched cond+uncond (one 2N-row pass) versus two passes; DDIM 25/50/100 versus DDPM 1000,
  with the judge's adherence when a trained `quick` checkpoint exists.
--quick: the `quick`-size comparisons only (a few minutes on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import torch
import torch.nn.functional as F

from .config import get_preset, resolve_device
from .diffusion import add_noise, create_noise_schedule, guided_eps
from .model import count_parameters, create_unet_model


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def diffusers_unet(config, text_embed_dim: int):
    """A diffusers UNet2DModel laid out like ours (same widths, depth, attention levels, scale-shift norm),
    plus the same text projection, whose output enters through class_embed_type='identity'."""
    from diffusers import UNet2DModel

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

        def forward(self, x, t, text_embeddings):
            return self.unet(x, t, class_labels=self.text_proj(text_embeddings)).sample

    return Wrapped()


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def train_speed(config, text_embed_dim: int, steps: int, rounds: int = 3) -> dict:
    """images/s of one training step (forward, MSE, backward, clip, AdamW) for both models, interleaved."""
    device = resolve_device(config.device)
    schedule = create_noise_schedule(config.num_denoising_steps, device)
    models = {"lib_cfg": create_unet_model(config, device, text_embed_dim, verbose=False),
              "diffusers": diffusers_unet(config, text_embed_dim).to(device)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    b, r = config.batch_size, config.resolution
    x0, te = torch.randn(b, 3, r, r, device=device), torch.randn(b, text_embed_dim, device=device)

    def step(name):
        model, opt = models[name], opts[name]
        t = torch.randint(0, config.num_denoising_steps, (b,), device=device)
        eps = torch.randn_like(x0)
        loss = F.mse_loss(model(add_noise(x0, eps, t, schedule), t, te), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    seconds = {k: 0.0 for k in models}
    peak = {}
    for name in models:  # warm-up (allocator, kernels)
        for _ in range(3):
            step(name)
    for _ in range(rounds):  # interleaved rounds: drift of the machine hits both alike
        for name in models:
            if str(device).startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step(name)
            _sync(device)
            seconds[name] += time.perf_counter() - t0
            if str(device).startswith("cuda"):
                peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated() / 2 ** 20)
    ips = {k: rounds * steps * b / s for k, s in seconds.items()}
    return {"size": f"{count_parameters(models['lib_cfg']) / 1e6:.2f}M vs {count_parameters(models['diffusers']) / 1e6:.2f}M",
            "resolution": r, "batch": b, "images_per_s": {k: round(v, 1) for k, v in ips.items()},
            "peak_memory_mib": peak or "not measured on CPU", "speedup": round(ips["lib_cfg"] / ips["diffusers"], 3)}


def cache_speed(config, steps: int = 10) -> dict:
    """A training step with the embedding cache versus encoding the batch's captions every step."""
    from .data import load_data
    from .text_encoder import EmbeddingCache, TextEncoder

    device = resolve_device(config.device)
    train_ds, _ = load_data(config, verbose=False)
    encoder = TextEncoder(config.text_encoder, device)
    cache = EmbeddingCache(encoder)
    cache.warm(train_ds.captions)
    model = create_unet_model(config, device, encoder.text_embed_dim, verbose=False)
    opt = torch.optim.AdamW(model.parameters())
    schedule = create_noise_schedule(config.num_denoising_steps, device)
    captions = [train_ds.captions[i * config.batch_size:(i + 1) * config.batch_size] for i in range(steps)]
    x0 = torch.randn(config.batch_size, 3, config.resolution, config.resolution, device=device)

    def run(embed):
        _sync(device)
        t0 = time.perf_counter()
        for texts in captions:
            with torch.no_grad():
                te = embed(texts).to(device)
            t = torch.randint(0, config.num_denoising_steps, (len(texts),), device=device)
            eps = torch.randn_like(x0)
            loss = F.mse_loss(model(add_noise(x0, eps, t, schedule), t, te), eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        return (time.perf_counter() - t0) / steps

    run(cache)  # warm-up
    cached, encoded = run(cache), run(encoder)
    return {"step_s_cached": round(cached, 4), "step_s_reencoded": round(encoded, 4),
            "reencode_over_cache": round(encoded / cached, 3)}


@torch.inference_mode()
def cfg_speed(config, n: int = 16, steps: int = 20) -> dict:
    """Seconds per image for CFG with one batched 2N-row pass versus two N-row passes."""
    device = resolve_device(config.device)
    model = create_unet_model(config, device, 384, verbose=False).eval()
    x, te = torch.randn(n, 3, config.resolution, config.resolution, device=device), torch.randn(n, 384, device=device)

    def two_passes(x_t, t):
        u, c = model(x_t, t, None), model(x_t, t, te)
        return u + 3.0 * (c - u)

    def timed(fn):
        fn(x, torch.full((n,), 500, device=device))
        _sync(device)
        t0 = time.perf_counter()
        for k in range(steps):
            fn(x, torch.full((n,), 999 - k, device=device))
        _sync(device)
        return (time.perf_counter() - t0) / steps / n

    batched = timed(lambda x_t, t: guided_eps(model, x_t, t, te, 3.0))
    separate = timed(two_passes)
    return {"s_per_image_step_batched": batched, "s_per_image_step_two_passes": separate,
            "speedup": round(separate / batched, 3)}


def sampler_table(checkpoint: str, n_per_prompt: int = 2) -> list:
    """DDIM 25/50/100 versus DDPM 1000 on the trained model: seconds per image and adherence at s = 3."""
    from .evaluation import attribute_accuracy, evaluation_prompts, judge
    from .sampling import load_pipeline

    pipe = load_pipeline(checkpoint)
    texts, targets = evaluation_prompts(n_per_prompt)
    rows = []
    for kind, steps in [("ddpm", 1000), ("ddim", 100), ("ddim", 50), ("ddim", 25)]:
        t0 = time.perf_counter()
        images = pipe(texts, 3.0, steps, seed=0, sampler=kind)
        seconds = time.perf_counter() - t0
        rows.append({"sampler": f"{kind.upper()} {steps}", "s_per_image": round(seconds / len(texts), 4),
                     **{k: round(v, 3) for k, v in attribute_accuracy(judge(images), targets).items()}})
    base = rows[0]["s_per_image"]
    for row in rows:
        row["speedup_vs_ddpm1000"] = round(base / row["s_per_image"], 1)
    return rows


def to_markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# lib_cfg benchmarks\n", f"{m['date']}; {m['platform']}; {m['cpu_count']} CPUs, {m['threads']} torch "
             f"threads; torch {m['torch']}; CUDA: {m['cuda']}\n", "## Training step: lib_cfg vs diffusers UNet2DModel\n",
             "| size | res | batch | lib_cfg img/s | diffusers img/s | speedup |", "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results["train"].items():
        lines.append(f"| {name} ({r['size']}) | {r['resolution']} | {r['batch']} | {r['images_per_s']['lib_cfg']} | "
                     f"{r['images_per_s']['diffusers']} | {r['speedup']}x |")
    c = results["text_cache"]
    lines += ["", f"## Text-embedding cache\n\nstep with the cache {c['step_s_cached']} s, re-encoding every batch "
              f"{c['step_s_reencoded']} s: **{c['reencode_over_cache']}x**\n"]
    g = results["cfg"]
    lines += [f"## CFG: one batched pass vs two\n\n{g['s_per_image_step_batched'] * 1e3:.3f} vs "
              f"{g['s_per_image_step_two_passes'] * 1e3:.3f} ms per image per step: **{g['speedup']}x**\n"]
    if results.get("samplers"):
        lines += ["## Samplers (trained quick model, s = 3)\n", "| sampler | s/image | speedup | colour | shape | all |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['sampler']} | {r['s_per_image']} | {r['speedup_vs_ddpm1000']}x | {r['color']:.1%} | "
                  f"{r['shape']:.1%} | {r['all']:.1%} |" for r in results["samplers"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lib_cfg.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="quick-size comparisons only")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per round")
    p.add_argument("--device", default="auto")
    p.add_argument("--checkpoint", default="checkpoints/quick", help="trained model for the sampler table")
    p.add_argument("--out", default="benchmarks")
    args = p.parse_args(argv)
    quick = get_preset("quick", device=args.device)
    results = {"machine": machine(), "train": {"quick": train_speed(quick, 384, args.steps)}}
    if not args.quick:
        results["train"]["lesson"] = train_speed(get_preset("lesson", device=args.device), 768, max(2, args.steps // 3))
    results["text_cache"] = cache_speed(quick)
    results["cfg"] = cfg_speed(quick)
    if os.path.exists(os.path.join(args.checkpoint, "latest")):
        results["samplers"] = sampler_table(args.checkpoint, 1 if args.quick else 2)
    results["train_speedup_vs_diffusers"] = results["train"]["quick"]["speedup"]
    results["cfg_batched_speedup"] = results["cfg"]["speedup"]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(to_markdown(results))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
