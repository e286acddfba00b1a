"""Sampling from a trained checkpoint: load it with its text encoder, draw guidance-scale grids."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from .checkpoint import load_model
from .config import TrainingConfig
from .diffusion import DDPMSampler, noise_schedule_for, randn, sample, sampler_for
from .guidance import Guidance
from .text_encoder import EmbeddingCache


@dataclass
class Pipeline:
    """What sampling needs, loaded from one checkpoint."""
    model: torch.nn.Module
    config: TrainingConfig
    embed: object  # captions [N] -> [N x D] (EmbeddingCache)
    noise_schedule: dict

    def sampler(self, kind: Optional[str] = None, dynamic_thresholding_ratio: Optional[float] = None,
                eta: Optional[float] = None) -> DDPMSampler:
        """The sampler `kind` ("ddpm" or "ddim"; default: the config's) on this model's noise schedule."""
        return sampler_for(self.config, self.noise_schedule, kind, eta, dynamic_thresholding_ratio)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def __call__(self, prompts: Sequence[str], guidance_scale: float = 3.0, num_inference_steps: Optional[int] = None,
                 seed: int = 0, sampler: Optional[str] = None, progress: bool = False,
                 negative_prompt: Optional[str] = None, guidance_rescale: float = 0.0, guidance_interval=None,
                 dynamic_thresholding_ratio: Optional[float] = None, guidance: Optional[Guidance] = None,
                 eta: Optional[float] = None) -> torch.Tensor:
        """Images [N x 3 x H x W] in [-1, 1] for N prompts. A prompt of None means unconditional (null).
        sampler, num_inference_steps, eta: default to the config's (`sampler`, `num_inference_steps`, `eta`).
        The guidance options (all off by default) are `sample`'s and the sampler's; `guidance` picks APG,
        CFG-Zero* or autoguidance (`guidance_for`) in place of plain CFG."""
        r = self.config.resolution
        g = torch.Generator().manual_seed(seed)
        x_T = randn((len(prompts), 3, r, r), g, self.device)
        # A prompt of None gets the learned null embedding itself, and still goes through the CFG
        # mix: so "the null prompt at any s equals s = 0" is shown, not assumed.
        null = torch.tensor([p is None for p in prompts], device=self.device)
        with torch.no_grad():
            cond = self.model.swap_in_null(self.embed(["" if p is None else p for p in prompts], self.device),
                                           len(prompts), uncond_mask=null)
        negative = None if negative_prompt is None else self.embed([negative_prompt] * len(prompts), self.device)
        return sample(self.model, cond, self.sampler(sampler, dynamic_thresholding_ratio, eta), guidance_scale,
                      num_inference_steps or self.config.num_inference_steps, x_T=x_T, generator=g,
                      progress=progress, negative_embeddings=negative, guidance_rescale=guidance_rescale,
                      guidance_interval=guidance_interval, guidance=guidance)


def load_pipeline(checkpoint: str, device: Optional[str] = None, ema: bool = True) -> Pipeline:
    model, config = load_model(checkpoint, device, ema)
    device = str(next(model.parameters()).device)
    embed = EmbeddingCache.for_config(config, device)
    schedule = noise_schedule_for(config, device)
    return Pipeline(model, config, embed, schedule)


def guidance_for(pipe: Pipeline, method: str = "cfg", guide_checkpoint: Optional[str] = None,
                 **options) -> Optional[Guidance]:
    """The `Guidance` for `method` (None for plain cfg). options: Guidance's (eta, norm_threshold, momentum,
    zero_init_steps). autoguidance loads its weaker model from guide_checkpoint, which must read the same
    text embeddings and draw the same image size as the main model."""
    if method == "cfg":
        return None
    guide = None
    if method == "autoguidance":
        if guide_checkpoint is None:
            raise ValueError("autoguidance needs --guide_checkpoint DIR: a weaker model (a smaller or shorter "
                             "run) trained with the same text encoder")
        guide, config = load_model(guide_checkpoint, str(pipe.device))
        same = {f: (getattr(config, f), getattr(pipe.config, f)) for f in ("text_encoder", "resolution",
                                                                          "conditioning", "max_text_tokens")}
        diff = {f: v for f, v in same.items() if v[0] != v[1]}
        if diff or guide.text_embed_dim != pipe.model.text_embed_dim:
            raise ValueError(f"the guide {guide_checkpoint} does not fit the model it would guide: "
                             + "; ".join(f"{f}: guide {a!r}, model {b!r}" for f, (a, b) in diff.items())
                             + ". Train the guide with the model's text encoder, resolution and conditioning.")
    return Guidance(method, guide_model=guide, **options)


def guidance_grid(pipe: Pipeline, prompts: List[str], scales: Sequence[float],
                  num_inference_steps: Optional[int] = None, seed: int = 0, sampler: Optional[str] = None,
                  **options) -> torch.Tensor:
    """[len(prompts) * len(scales) x 3 x H x W], prompt-major. Each prompt keeps its starting noise across
    scales, so a row shows what guidance alone changes. options: the Pipeline's guidance and sampler options."""
    per_scale = [pipe(prompts, s, num_inference_steps, seed=seed, sampler=sampler, **options)
                 for s in scales]  # [P x 3 x H x W] each
    return torch.stack(per_scale, dim=1).flatten(0, 1)
