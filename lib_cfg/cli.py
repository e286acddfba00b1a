"""`python -m lib_cfg train | sample | evaluate`.

    python -m lib_cfg train --preset quick                     # the offline default (~10 min on 2 CPU cores)
    python -m lib_cfg train --preset quick --batch_size 32     # any TrainingConfig field, spelled as the field
    python -m lib_cfg train --resume checkpoints/quick         # continue an interrupted run
    torchrun --standalone --nproc_per_node 2 -m lib_cfg train  # the same run on 2 processes (DDP; CPU: gloo)
    python -m lib_cfg sample --checkpoint checkpoints/quick --prompt "a red circle on a black background" \\
        --scales 0 1 3 7.5 --out grid.png
    python -m lib_cfg sample --checkpoint checkpoints/quick --scales 10 --guidance_rescale 0.7 \\
        --negative_prompt "a red circle on a black background"   # the large-guidance fixes (notebook 05)
    python -m lib_cfg evaluate --checkpoint checkpoints/quick --scales 0 1 3 5 --json
    python -m lib_cfg evaluate --checkpoint checkpoints/quick --guidance apg --scales 1 3 7.5 --json
    python -m lib_cfg evaluate --checkpoint checkpoints/quick --guidance autoguidance --guide_checkpoint checkpoints/ci
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from dataclasses import fields, replace

from .caption_accuracy import caption_verdict
from .checkpoint import load_config, load_trainer_state
from .config import PRESETS, TrainingConfig, field_names, get_preset, preset_of
from .diffusion import SAMPLERS
from .evaluation import adherence_sweep, format_table
from .fidelity import SPECKLED, Fidelity
from .guidance import METHODS
from .labelled import labelled_data
from .plotting import guidance_grid_figure
from .sampling import guidance_for, guidance_grid, load_pipeline
from .train import run_training

DEFAULT_SCALES = [0.0, 1.0, 3.0, 5.0, 7.5]


def _convert(name: str, value: str):
    """A command-line string -> the type of TrainingConfig.<name>."""
    kind = {f.name: f.type for f in fields(TrainingConfig)}[name]
    kind = typing.get_type_hints(TrainingConfig)[name] if isinstance(kind, str) else kind
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        if typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            return tuple(item(v.strip()) for v in value.replace("(", "").replace(")", "").split(",") if v.strip())
        return value
    except ValueError:
        raise SystemExit(f"error: --{name} expects {getattr(kind, '__name__', kind)}, got {value!r}")


def parse_overrides(rest):
    """['--batch_size', '32', ...] -> {'batch_size': 32}; unknown names list the valid ones."""
    overrides, i = {}, 0
    while i < len(rest):
        key = rest[i]
        if not key.startswith("--"):
            raise SystemExit(f"error: unexpected argument {key!r}")
        name, _, value = key[2:].partition("=")
        if name not in field_names():
            raise SystemExit(f"error: unknown option --{name}. Config fields you can set: "
                             + ", ".join(f"--{n}" for n in field_names()))
        if not value:
            if i + 1 >= len(rest):
                raise SystemExit(f"error: --{name} needs a value")
            value, i = rest[i + 1], i + 1
        overrides[name] = _convert(name, value)
        i += 1
    return overrides


def cmd_train(args, overrides):
    if args.resume:  # the checkpoint's own config, with any fields given here (say a larger --max_steps)
        config = replace(load_config(args.resume), **overrides)
    else:
        config = get_preset(args.preset, **overrides)
    if not args.resume and not args.overwrite and os.path.exists(os.path.join(config.checkpoint_dir, "latest")):
        raise SystemExit(f"error: {config.checkpoint_dir} already holds a checkpoint. Continue it with "
                         f"--resume {config.checkpoint_dir}, or start over with --overwrite "
                         f"(or choose another --checkpoint_dir)")
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun, process 0 speaks for all
    if main_process:
        world = os.environ.get("WORLD_SIZE", "1")
        print(f"training preset={args.preset!r} on {config.device}" + (f" x {world} processes" if world != "1" else "")
              + f"; checkpoints -> {config.checkpoint_dir}")
        os.makedirs(config.checkpoint_dir, exist_ok=True)
    _, _, bookkeeping, _ = run_training(config, resume=args.resume)
    if bookkeeping.interrupted:
        return 130  # 128 + SIGINT: stopped by the user, progress saved
    if main_process:
        print(f"done: {config.checkpoint_dir}")
        verdict = caption_verdict(bookkeeping.history, config.checkpoint_dir)
        if verdict:
            print(verdict)
    return 0


def cmd_sample(args, overrides):
    _describe(args.checkpoint)
    pipe = load_pipeline(args.checkpoint, args.device)
    _check_eta(pipe, args)
    prompts = args.prompt or _default_prompts(pipe.config)
    options = dict(negative_prompt=args.negative_prompt, guidance_rescale=args.guidance_rescale,
                   guidance_interval=tuple(args.guidance_interval) if args.guidance_interval else None,
                   dynamic_thresholding_ratio=args.dynamic_thresholding_ratio, guidance=_guidance(pipe, args))
    images = guidance_grid(pipe, prompts, args.scales, args.steps, args.seed, args.sampler, eta=args.eta, **options)
    fig = guidance_grid_figure(images, prompts, args.scales, suptitle=f"{_sampler_name(pipe, args)}, seed {args.seed}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({len(prompts)} prompts x {len(args.scales)} guidance scales)")
    return 0


def cmd_evaluate(args, overrides):
    pipe = load_pipeline(args.checkpoint, args.device)
    data = labelled_data(pipe.config)
    if data is None:
        raise SystemExit(f"error: the adherence judge knows labelled datasets only (the synthetic shapes, "
                         f"animal-faces); this checkpoint was trained on {pipe.config.dataset!r}. Use `sample` to "
                         f"look at its images instead.")
    _check_eta(pipe, args)
    fidelity = Fidelity(pipe.config, progress=not args.json)
    if data.judge is None and not args.json:
        accuracy = ", ".join(f"{k} {100 * v:.1f}%" for k, v in fidelity.judge_accuracy().items())
        print(f"the judge (the fidelity network's heads) on 2000 renders it never saw: {accuracy}")
    results = adherence_sweep(pipe.model, pipe.embed, args.scales, pipe.sampler(args.sampler, eta=args.eta),
                              args.n_per_prompt, args.steps or pipe.config.num_inference_steps, args.seed,
                              progress=not args.json, guidance=_guidance(pipe, args), fidelity=fidelity)
    if args.json:
        print(json.dumps(results))
    else:
        n_prompts = len(data.prompts())
        print(f"adherence and fidelity of {args.checkpoint}: {args.n_per_prompt} samples per prompt x {n_prompts} "
              f"prompts, {_sampler_name(pipe, args)}, guidance {args.guidance}")
        print(format_table(results, data))
        print(f"fid: Frechet distance from held-out real images (lower is closer; 'real' is the floor for "
              f"{args.n_per_prompt * n_prompts} real images); speckle: pixel noise (images above {SPECKLED} look "
              f"like noise)")
    return 0


def _check_eta(pipe, args):
    kind = args.sampler or pipe.config.sampler
    if args.eta is not None and kind != "ddim":
        raise SystemExit(f"error: --eta sets the DDIM sampler's noise, and this run samples with {kind.upper()}; "
                         f"add --sampler ddim")


def _sampler_name(pipe, args) -> str:
    kind, steps = args.sampler or pipe.config.sampler, args.steps or pipe.config.num_inference_steps
    eta = pipe.config.eta if args.eta is None else args.eta
    return f"{kind.upper()} {steps} steps" + (f", eta {eta:g}" if kind == "ddim" else "")


def _guidance(pipe, args):
    return guidance_for(pipe, args.guidance, args.guide_checkpoint, eta=args.apg_eta,
                        norm_threshold=args.apg_norm_threshold, momentum=args.apg_momentum,
                        zero_init_steps=args.zero_init_steps)


def _default_prompts(config):
    data = labelled_data(config)
    return data.grid_prompts(config.n_samples) if data and data.grid_prompts else ["a photo of a cat"]


def _describe(checkpoint):
    """Say what a checkpoint is before loading it (a lesson checkpoint needs CLIP, for instance)."""
    config, state = load_config(checkpoint), load_trainer_state(checkpoint)
    name = preset_of(config)
    what = {"lesson": "the `lesson` preset (CLIP ViT-L/14 text encoder, AFHQ captions, 32x32)",
            "quick": "the `quick` preset (synthetic shapes, offline MiniLM encoder, 16x16)",
            "ci": "the `ci` preset (short test run)",
            "animal-faces": "the `animal-faces` preset (emoji animal faces, offline MiniLM encoder, 32x32)",
            "animal-faces-ci": "the `animal-faces-ci` preset (emoji animal faces, short test run)",
            "lesson-smoke": "the `lesson-smoke` preset (the lesson's path at toy size: a local CLIP-architecture "
                            "encoder, AFHQ-shaped data, 32x32)"}.get(name, "a custom config")
    print(f"checkpoint {checkpoint}: {what}, step {state['step']}, text encoder {config.text_encoder}")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m lib_cfg", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model (any TrainingConfig field: --NAME VALUE)")
    t.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="named config (default: quick)")
    t.add_argument("--resume", metavar="CHECKPOINT_DIR", help="continue from a checkpoint")
    t.add_argument("--overwrite", action="store_true", help="start over even if checkpoint_dir has a checkpoint")
    for name in ("sample", "evaluate"):
        s = sub.add_parser(name)
        s.add_argument("--checkpoint", required=True, metavar="CHECKPOINT_DIR")
        s.add_argument("--scales", type=float, nargs="+", default=DEFAULT_SCALES, help="guidance scales s")
        s.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's "
                       "num_inference_steps)")
        s.add_argument("--sampler", default=None, choices=SAMPLERS,
                       help="ddpm (ancestral, respaced to --steps) or ddim (default: the checkpoint's sampler)")
        s.add_argument("--eta", type=float, default=None, help="ddim: noise per step, 0 (deterministic) to 1 "
                       "(DDPM's); default: the checkpoint's eta")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--device", default=None, help="default: the checkpoint's config device")
        s.add_argument("--guidance", default="cfg", choices=METHODS,
                       help="how the two predictions are mixed (default: cfg; see lib_cfg/guidance.py)")
        s.add_argument("--guide_checkpoint", metavar="DIR", help="autoguidance: the weaker model (same text encoder)")
        s.add_argument("--apg_eta", type=float, default=0.0, help="apg: weight of the update's parallel part")
        s.add_argument("--apg_norm_threshold", type=float, default=0.0, help="apg: cap on the update's norm (0: off)")
        s.add_argument("--apg_momentum", type=float, default=0.0, help="apg: momentum beta, e.g. -0.5 (0: off)")
        s.add_argument("--zero_init_steps", type=int, default=0, help="cfg-zero-star: first steps that predict x0 = 0")
    sub.choices["sample"].add_argument("--prompt", action="append", help="a prompt (repeat for more rows)")
    sub.choices["sample"].add_argument("--out", default="samples/guidance_grid.png")
    sub.choices["sample"].add_argument("--negative_prompt", help="guide away from this prompt (replaces the null one)")
    sub.choices["sample"].add_argument("--guidance_rescale", type=float, default=0.0, metavar="PHI",
                                       help="rescale the guided eps to the conditional one's std, mixed by PHI")
    sub.choices["sample"].add_argument("--guidance_interval", type=int, nargs=2, metavar=("LO", "HI"),
                                       help="guide only at timesteps LO <= t <= HI")
    sub.choices["sample"].add_argument("--dynamic_thresholding_ratio", type=float, metavar="P",
                                       help="Imagen's dynamic thresholding of x0 at quantile P (e.g. 0.995)")
    sub.choices["evaluate"].add_argument("--n_per_prompt", type=int, default=6)
    sub.choices["evaluate"].add_argument("--json", action="store_true", help="print {scale: {attr: acc}} as JSON")
    return p


def main(argv=None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    overrides = parse_overrides(rest) if args.command == "train" else {}
    if rest and args.command != "train":
        raise SystemExit(f"error: unrecognized arguments: {' '.join(rest)}")
    try:
        return {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate}[args.command](args, overrides)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
