"""Guidance beyond CFG. Each method mixes two predictions of the same x_t into the one the sampler steps with.

    cfg            eps_uncond + s (eps_cond - eps_uncond)                  Ho & Salimans 2022, eq. 6 (s = 1 + w)
    apg            D_cond + (s - 1) (dD_orth + eta dD_par), on x0 = D      Sadat et al. 2024, Algorithm 1
    cfg-zero-star  a* eps_uncond + s (eps_cond - a* eps_uncond),           Fan et al. 2025, eqs. 9-10 and
                   a* = <eps_cond, eps_uncond> / |eps_uncond|^2; the        "zero-init" (section 4.2)
                   first zero_init_steps predict x0 = 0
    autoguidance   eps_bad + s (eps_cond - eps_bad): eps_bad from a weaker  Karras et al. 2024, eq. 1
                   model given the same caption (not the null one)

`tests/test_guidance_methods.py` checks each mix against diffusers' guider of the same name
(`diffusers.guiders`). Where diffusers applies a method differently from its paper, the docstring
says so and the test follows the paper. `sample(..., guidance=Guidance(...))` samples with any of them;
the guidance interval (`sample`'s `guidance_interval`) applies to all of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .diffusion import predict_both

METHODS = ("cfg", "apg", "cfg-zero-star", "autoguidance")


def _per_image(x: torch.Tensor) -> list:
    return list(range(1, x.dim()))  # every dimension but the batch


def apg(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, guidance_scale: float, eta: float = 0.0,
        norm_threshold: float = 0.0, momentum: Optional["Momentum"] = None) -> torch.Tensor:
    """Adaptive projected guidance (Sadat et al. 2024, Algorithm 1) on denoised predictions D [N x C x H x W].

    The update dD = D_cond - D_uncond is (1) averaged with negative momentum over the steps, (2) scaled
    down to norm `norm_threshold` where it is longer (0: off), (3) split into the part parallel to D_cond,
    which mostly raises saturation, and the orthogonal part, which carries the prompt; the parallel part
    is kept with weight eta (the paper's default: 0). Then D = D_cond + (s - 1) update, so eta = 1 with no
    momentum and no threshold is exactly CFG. The paper works on x0 (`sample` converts eps to x0 and back);
    diffusers' `AdaptiveProjectedGuidance` applies the same formula to whatever it is given (the eps
    predictions, in its pipelines) and by default starts from D_uncond with s in place of s - 1.
    """
    diff = pred_cond - pred_uncond
    if momentum is not None:
        diff = momentum(diff)
    dims = _per_image(diff)
    if norm_threshold > 0:
        diff = diff * torch.clamp(norm_threshold / diff.norm(p=2, dim=dims, keepdim=True), max=1.0)
    # Projection in float64: a near-parallel pair would lose the orthogonal part to rounding.
    v0, v1 = diff.double(), torch.nn.functional.normalize(pred_cond.double(), dim=dims)
    parallel = (v0 * v1).sum(dim=dims, keepdim=True) * v1
    update = (v0 - parallel) + eta * parallel
    return pred_cond + (guidance_scale - 1) * update.to(diff.dtype)


class Momentum:
    """APG's running average of the update over the sampling steps: avg <- diff + beta * avg (beta < 0 in the
    paper: it pushes against the direction of the previous steps). One per sampling run."""

    def __init__(self, beta: float):
        self.beta, self.average = beta, None

    def __call__(self, diff: torch.Tensor) -> torch.Tensor:
        self.average = diff if self.average is None else diff + self.beta * self.average
        return self.average


def cfg_zero_star(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """CFG-Zero* (Fan et al. 2025): the unconditional prediction is first scaled by the per-image
    a* = <pred_cond, pred_uncond> / |pred_uncond|^2, the least-squares fit of pred_cond by pred_uncond,
    then mixed as CFG. The paper derives it for flow matching's velocity; this model predicts eps, and
    like diffusers' `ClassifierFreeZeroStarGuidance` we apply it to the model's own output."""
    c, u = pred_cond.flatten(1).float(), pred_uncond.flatten(1).float()
    alpha = ((c * u).sum(1) / ((u * u).sum(1) + 1e-8)).to(pred_cond.dtype)
    scaled = pred_uncond * alpha.reshape(-1, *([1] * (pred_cond.dim() - 1)))
    return scaled + guidance_scale * (pred_cond - scaled)


def autoguidance(pred_cond: torch.Tensor, pred_bad: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Autoguidance (Karras et al. 2024, eq. 1): D_w = w D_1 + (1 - w) D_0 with D_0 a weaker model of the
    same conditioning, i.e. the CFG mix with the weak model's *conditional* prediction in place of the
    unconditional one. The mix is affine with weights summing to 1, so eps and x0 give the same result.
    diffusers' `AutoGuidance` makes the weak model by skipping layers of the main one; here it is a
    smaller or less-trained checkpoint (`--guide_checkpoint`)."""
    return pred_bad + guidance_scale * (pred_cond - pred_bad)


@dataclass
class Guidance:
    """Which guidance `sample` uses, and its options (the defaults are the papers')."""
    method: str = "cfg"  # one of METHODS
    eta: float = 0.0  # apg: weight of the update's part parallel to D_cond (1 with no momentum/threshold: CFG)
    norm_threshold: float = 0.0  # apg: the update is scaled down to this norm per image (0: off)
    momentum: float = 0.0  # apg: beta of the running average of updates (the paper uses negative values; 0: off)
    zero_init_steps: int = 0  # cfg-zero-star: the first sampling steps predict x0 = 0 ("zero-init")
    guide_model: Optional[torch.nn.Module] = None  # autoguidance: the weaker model, same text encoder

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown guidance {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.method == "autoguidance" and self.guide_model is None:
            raise ValueError("autoguidance needs a guide model: a weaker checkpoint trained with the same text "
                             "encoder (--guide_checkpoint DIR)")

    def eps_fn(self, model, text_embeddings: torch.Tensor, sampler) -> Callable:
        """A fresh (x_t, t [N], s) -> eps for one sampling run (APG's momentum and the step count start over).
        For apg, cfg-zero-star and autoguidance; `sample` runs plain cfg through `guided_eps`."""
        if self.guide_model is not None:
            self.guide_model.eval()
        momentum = Momentum(self.momentum) if self.momentum else None
        steps = {"done": 0}
        schedule = sampler.schedule

        def eps(x_t: torch.Tensor, t: torch.Tensor, s: float) -> torch.Tensor:
            a = schedule["alphas_cumprod"].to(x_t.device, x_t.dtype)[t].reshape(-1, *([1] * (x_t.dim() - 1)))
            to_x0 = lambda e: (x_t - (1 - a).sqrt() * e) / a.sqrt()  # noqa: E731
            to_eps = lambda x0: (x_t - a.sqrt() * x0) / (1 - a).sqrt()  # noqa: E731
            step, steps["done"] = steps["done"], steps["done"] + 1
            if self.method == "cfg-zero-star" and step < self.zero_init_steps:
                return to_eps(torch.zeros_like(x_t))  # x0 = 0: the step leaves x_t (nearly) where it is
            if s == 1:
                return model(x_t, t, text_embeddings)
            if self.method == "autoguidance":
                return autoguidance(model(x_t, t, text_embeddings), self.guide_model(x_t, t, text_embeddings), s)
            uncond, cond = predict_both(model, x_t, t, text_embeddings)
            if self.method == "apg":
                return to_eps(apg(to_x0(cond), to_x0(uncond), s, self.eta, self.norm_threshold, momentum))
            return cfg_zero_star(cond, uncond, s)

        return eps
