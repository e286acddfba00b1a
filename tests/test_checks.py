"""The write-it cells' checks (lib_cfg/checks.py) pass every correct answer and fail wrong ones: the notebooks'
worked answers, the same step written as the lesson writes it, and steps with one thing wrong."""
import json
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from lib_cfg.checks import check_cfg_eps, check_training_step
from lib_cfg.config import get_preset
from lib_cfg.diffusion import add_noise, noise_schedule_for
from lib_cfg.model import create_unet_model

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def solution(notebook: str, name: str):
    """The function `name` as the notebook's collapsed `solution` cell defines it."""
    cells = json.load(open(NOTEBOOKS / notebook))["cells"]
    source = next("".join(c["source"]) for c in cells if c["cell_type"] == "code"
                  and "solution" in c["metadata"].get("tags", []) and f"def {name}(" in "".join(c["source"]))
    namespace = {"torch": torch, "F": F, "add_noise": add_noise}
    exec(source, namespace)
    return namespace[name]


def lesson_order_step(model, optimizer, x0, text_embeddings, t, eps, uncond_mask, noise_schedule, config):
    """The lesson's own statement order and style: zero the gradients first, the criterion as a module."""
    optimizer.zero_grad()
    x_t = add_noise(x0, eps, t, noise_schedule)
    predicted_noise = model(x_t, t, text_embeddings, uncond_mask=uncond_mask)
    loss = torch.nn.MSELoss()(predicted_noise, eps)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return loss.item()


def dropout_off(model, optimizer, x0, text_embeddings, t, eps, uncond_mask, noise_schedule, config):
    """Wrong: every caption kept, the mask ignored."""
    return lesson_order_step(model, optimizer, x0, text_embeddings, t, eps, torch.zeros_like(uncond_mask),
                             noise_schedule, config)


def no_clipping(model, optimizer, x0, text_embeddings, t, eps, uncond_mask, noise_schedule, config):
    """Wrong: the gradient norm is not clipped."""
    optimizer.zero_grad()
    loss = F.mse_loss(model(add_noise(x0, eps, t, noise_schedule), t, text_embeddings, uncond_mask=uncond_mask), eps)
    loss.backward()
    optimizer.step()
    return loss


def setup_step(snr_gamma=0.0):
    config = replace(get_preset("ci"), snr_gamma=snr_gamma, mixed_precision="no", grad_clip=0.01)  # below the norm: the clip acts
    model = create_unet_model(config, "cpu", text_embed_dim=8, verbose=False)
    g = torch.Generator().manual_seed(0)
    x0, text = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1, torch.randn(8, 8, generator=g)
    return model, x0, text, noise_schedule_for(config), config


def test_the_training_step_check_passes_the_worked_answer_and_the_lessons_order_and_fails_wrong_steps():
    model, x0, text, schedule, config = setup_step()
    results = {name: check_training_step(step, model, x0, text, schedule, config)
               for name, step in [("worked answer", solution("03_cfg_training.ipynb", "lesson_training_step")),
                                  ("lesson's order", lesson_order_step), ("dropout off", dropout_off),
                                  ("no clipping", no_clipping)]}
    assert all(results["worked answer"].values()) and all(results["lesson's order"].values()), results
    assert not results["dropout off"]["weights"], results
    assert results["no clipping"]["loss"] and not results["no clipping"]["weights"], results  # same loss, other step


def test_the_min_snr_check_passes_the_worked_answer_and_fails_the_unweighted_step():
    model, x0, text, schedule, config = setup_step(snr_gamma=5.0)
    worked = solution("03_cfg_training.ipynb", "min_snr_training_step")
    assert all(check_training_step(worked, model, x0, text, schedule, config, seed=2).values())
    assert not check_training_step(lesson_order_step, model, x0, text, schedule, config, seed=2)["loss"]


def cfg_sign_flipped(model, x_t, t, text_embeddings, s):
    eps_uncond, eps_cond = model(x_t, t, None), model(x_t, t, text_embeddings)
    return eps_uncond - s * (eps_cond - eps_uncond)


def cfg_ho_salimans(model, x_t, t, text_embeddings, s):
    """Correct, written as Ho & Salimans do: (1 + w) eps_cond - w eps_uncond with w = s - 1."""
    w = s - 1
    return (1 + w) * model(x_t, t, text_embeddings) - w * model(x_t, t, None)


def test_the_cfg_check_passes_correct_forms_and_fails_a_flipped_sign():
    config = get_preset("ci")
    torch.manual_seed(0)
    model = create_unet_model(config, "cpu", text_embed_dim=8, verbose=False)
    with torch.no_grad():
        for p in model.parameters():  # a fresh model predicts 0 whatever the caption: give it random weights
            p.normal_(std=0.05)
    x_t, t, cond = torch.randn(4, 3, 16, 16), torch.full((4,), 500), torch.randn(4, 8) * 5
    assert check_cfg_eps(solution("04_guidance_sampling.ipynb", "my_cfg_eps"), model, x_t, t, cond)
    assert check_cfg_eps(cfg_ho_salimans, model, x_t, t, cond)
    assert not check_cfg_eps(cfg_sign_flipped, model, x_t, t, cond)
