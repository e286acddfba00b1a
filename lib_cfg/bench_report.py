"""The benchmark report: where results live, the machine they were measured on, and the markdown table.

`python -m lib_cfg.bench` writes benchmarks/results.json and results.md; `--quick` writes
results-quick.json and results-quick.md, so a quick check never replaces the full record.
"""
from __future__ import annotations

import datetime
import json
import os
import platform

import torch


def result_paths(out: str, quick: bool):
    """(json path, markdown path) for a full or a --quick run."""
    name = "results-quick" if quick else "results"
    return os.path.join(out, f"{name}.json"), os.path.join(out, f"{name}.md")


def read_results(out: str, quick: bool) -> dict:
    """The results written before ({} if none): `--only` re-measures some parts and keeps the others."""
    path = result_paths(out, quick)[0]
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_results(results: dict, out: str, quick: bool) -> None:
    json_path, md_path = result_paths(out, quick)
    os.makedirs(out, exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1)
    with open(md_path, "w") as f:
        f.write(to_markdown(results))


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def to_markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# lib_cfg benchmarks\n", f"Written by `python -m lib_cfg.bench` on {m['date']}; {m['platform']}; "
             f"{m['processor']}, {m['cpu_count']} CPUs, {m['threads']} torch threads; torch {m['torch']}; "
             f"CUDA: {m['cuda']}. When each part was measured: {results.get('measured', {})}\n"]
    if "train" in results:
        lines += ["## Training step: lib_cfg vs diffusers UNet2DModel (same loop, same optimizer, same precision)\n",
                  "| size | precision | res | batch | lib_cfg img/s | diffusers img/s | speedup (rounds: min-max) "
                  "| peak memory MiB (lib_cfg / diffusers) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in results["train"].items():
            mem = r.get("peak_memory_mib")
            mem = f"{mem['lib_cfg']} / {mem['diffusers']}" if isinstance(mem, dict) else mem
            rng = "-".join(str(v) for v in r.get("speedup_rounds_min_max", []))
            lines.append(f"| {name} ({r['size']}) | {r['precision']} | {r['resolution']} | {r['batch']} | "
                         f"{r['images_per_s']['lib_cfg']} | {r['images_per_s']['diffusers']} | {r['speedup']}x ({rng}) "
                         f"| {mem} |")
        lines += ["", "img/s and speedup: medians over interleaved rounds (who goes first alternates). Peak memory: "
                  "the most a step needed above what was resident when the timed steps began (weights, optimizer "
                  "state, data), i.e. activations and gradients: on a CPU the process's peak resident set (Linux), "
                  "on CUDA the allocator's peak.\n"]
    if "text_cache" in results:
        c = results["text_cache"]
        lines += ["", f"## Text-embedding cache\n\nstep with the cache {c['step_s_cached']} s, re-encoding every "
                  f"batch {c['step_s_reencoded']} s: **{c['reencode_over_cache']}x**\n"]
    if "cfg" in results:
        g = results["cfg"]
        lines += [f"## CFG: one batched pass vs two\n\n{g['s_per_image_step_batched'] * 1e3:.3f} vs "
                  f"{g['s_per_image_step_two_passes'] * 1e3:.3f} ms per image per step: **{g['speedup']}x**\n"]
    if isinstance(results.get("samplers"), dict):
        t = results["samplers"]
        rows, real = t["rows"], t["real"]
        lines += [f"## Samplers (trained quick model, s = 3, {rows[0]['images']} images x {rows[-1]['seeds']} seeds; "
                  f"DDPM 1000: {rows[0]['seeds']})\n",
                  "| sampler | s/image | speedup | colour | shape | fid (per seed) | speckle | speckled |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['sampler']} | {r['s_per_image']} | {r['speedup_vs_ddpm1000']}x | {r['color']:.1%} | "
                  f"{r['shape']:.1%} | {r['fid']:.2f} ({', '.join(f'{v:.2f}' for v in r['fid_per_seed'])}) | "
                  f"{r['speckle']:.4f} | {r['speckled']:.0%} |" for r in rows]
        lines += [f"| real images | | | | | {real['fid']:.2f} | {real['speckle']:.4f} | |"]
    if "time_to_bar" in results:
        b = results["time_to_bar"]
        lines += ["", "## Time for the quick preset to reach the bar (s = 3: colour >= 95%, shape >= 85%)\n",
                  f"reached: {b['reached']}, after **{b['steps']} steps, {b['train_s']} s** of training (setup and "
                  f"first step {b['setup_and_first_step_s']} s included; judging time excluded; "
                  f"{b['images_per_check']} images per check)\n", "| step | train s | colour | shape | all |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {c['step']} | {c['train_s']} | {c['color']:.1%} | {c['shape']:.1%} | {c['all']:.1%} |"
                  for c in b["checks"]]
    for precision, b in results.get("animal_faces", {}).items():
        lines += ["", f"## Time for the animal-faces preset to reach its bar, {precision} "
                  "(s = 3: animal >= 95%, background >= 98%)\n",
                  f"reached: {b['reached']}, after **{b['steps']} steps ({b['steps'] and b['steps'] * b['images_per_step']}"
                  f" images), {b['train_s']} s** of training (setup and first step {b['setup_and_first_step_s']} s "
                  f"included; judging time excluded; {b['images_per_check']} images per check)\n",
                  "| step | images seen | train s | animal | background | all | heldout_all | copy rate | fid | fid real |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {c['step']} | {c['step'] * b['images_per_step']} | {c['train_s']} | {c['animal']:.1%} | "
                  f"{c['background']:.1%} | {c['all']:.1%} | {c['heldout_all']:.1%} | {c['copy_rate']:.1%} | "
                  f"{c['fid']:.1f} | {c['fid_real']:.1f} |" for c in b["checks"]]
    if "loop" in results:
        r = results["loop"]
        lines += ["", "## The whole training loop (quick preset: data, cached embeddings, step, EMA, logging)\n",
                  f"{r['parameters_M']}M parameters, {r['resolution']}x{r['resolution']}, batch {r['batch']}, "
                  f"{r['precision']} on {r['device']}: **{r['steps_per_s']} steps/s** ({r['images_per_s']} img/s) over "
                  f"{r['timed_steps']} timed steps\n"]
    if "lesson_run" in results:
        r = results["lesson_run"]
        lines += ["", "## The lesson-sized run (tools/gpu_bench.sh)\n", f"data {r['data']}, text encoder {r['text_encoder']} "
                  "(images and embeddings read from data/image_cache and data/text_cache)\n",
                  "| loop | parameters | precision | steps/s | img/s | 20k steps projected | peak MiB |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {name} | {v['parameters_M']}M | {v['precision']} | {v['steps_per_s']} | {v['images_per_s']} | "
                  f"{v['projected_20k_steps_s']} s | {v['peak_memory_mib']} |" for name, v in r.items()
                  if isinstance(v, dict) and "error" not in v]
        lines += [f"\n{name} failed: {v['error']}" for name, v in r.items() if isinstance(v, dict) and "error" in v]
    return "\n".join(lines) + "\n"
