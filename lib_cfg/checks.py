"""The checks behind the notebooks' write-it cells: any correct answer passes, a wrong one fails.

A check never depends on the order in which a learner draws random numbers: the draws are made here and
handed to the learner's function and to the library's alike, and the results are compared with a tolerance
(`allclose`), so a different but equivalent way of writing the arithmetic passes too. tests/test_checks.py
runs each check on the notebook's worked answer, on an answer written the lesson's way, and on wrong answers.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict

import torch

from .diffusion import guided_eps
from .train import training_step


def lesson_draws(x0: torch.Tensor, config, seed: int = 0):
    """(t [N], eps [N x C x H x W], uncond_mask [N]) for a batch x0 [N x C x H x W], in the lesson's order (the
    noise first, then t, then the dropout coins), from a generator of their own. At least one row is dropped
    and one kept, so a step that ignores the mask cannot pass by luck."""
    g = torch.Generator().manual_seed(seed)
    n = x0.shape[0]
    eps = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, config.num_denoising_steps, (n,), generator=g)
    mask = torch.rand(n, generator=g) < config.text_drop_prob
    mask[0], mask[-1] = True, False
    return t.to(x0.device), eps.to(x0.device), mask.to(x0.device)


def check_training_step(step: Callable, model: torch.nn.Module, x0: torch.Tensor, text_embeddings: torch.Tensor,
                        noise_schedule: Dict, config, seed: int = 0, atol: float = 1e-5,
                        rtol: float = 1e-3) -> Dict[str, bool]:
    """Run `step(model, optimizer, x0, text_embeddings, t, eps, uncond_mask, noise_schedule, config)` (the
    learner's) and the library's `training_step` with the same draws (`lesson_draws`), each on its own copy of
    `model`. Returns {"loss": same loss (to atol), "weights": the same step taken (every weight's change within
    rtol of the largest change), "moved": the step changed them}.

    The copies' weights get small random values first: a fresh UNet's output layer starts at zero, so its
    prediction would not depend on the caption (or the mask) and a step that ignores them would pass. The
    optimizer is plain SGD: AdamW's first step is about lr * sign(gradient), which turns the rounding of an
    equivalent formula into differences of 2 lr on the gradients that are nearly zero."""
    draws = lesson_draws(x0, config, seed)
    base = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in base.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    yours, library = copy.deepcopy(base), copy.deepcopy(base)
    loss_yours = step(yours, torch.optim.SGD(yours.parameters(), lr=0.1), x0, text_embeddings, *draws,
                      noise_schedule, config)
    loss_library = training_step(library, torch.optim.SGD(library.parameters(), lr=0.1), x0, text_embeddings,
                                 noise_schedule, config, draws=draws)
    # the steps taken, compared against the size of the library's: tight enough to see a missing clip
    with torch.no_grad():
        step_yours = torch.cat([(a - b).flatten() for a, b in zip(yours.parameters(), base.parameters())])
        step_library = torch.cat([(a - b).flatten() for a, b in zip(library.parameters(), base.parameters())])
    return {"loss": bool(torch.allclose(torch.as_tensor(loss_yours).detach().float(), loss_library.detach().float(),
                                        atol=atol)),
            "weights": bool(torch.allclose(step_yours, step_library, rtol=0, atol=rtol * float(step_library.abs().max()))),
            "moved": bool(step_yours.abs().max() > 0)}


def check_cfg_eps(fn: Callable, model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor,
                  text_embeddings: torch.Tensor, scales=(0.0, 1.0, 3.0, 7.5), atol: float = 1e-4) -> bool:
    """Whether `fn(model, x_t, t, text_embeddings, s)` (the learner's classifier-free guidance) agrees with the
    library's `guided_eps` at every scale in `scales`. x_t: [N x C x H x W], t: [N], text_embeddings: [N x D]."""
    with torch.no_grad():
        return all(torch.allclose(fn(model, x_t, t, text_embeddings, s), guided_eps(model, x_t, t, text_embeddings, s),
                                  atol=atol) for s in scales)
