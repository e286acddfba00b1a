"""A short `ci`-preset run learns: the loss falls and guidance makes colours follow the prompt."""

from lib_cfg.checkpoint import load_model
from lib_cfg.config import get_preset
from lib_cfg.data import load_data
from lib_cfg.diffusion import DDIMSampler, create_noise_schedule, noise_schedule_for
from lib_cfg.evaluation import adherence_sweep, chance_accuracy, judge_accuracy
from lib_cfg.text_encoder import EmbeddingCache


def test_judge_is_near_perfect_on_real_images(data_dir):
    train, _ = load_data(get_preset("quick", data_dir=data_dir, synthetic_size=2000), verbose=False)
    acc = judge_accuracy(train, n=1500)
    assert acc["color"] >= 0.99 and acc["shape"] >= 0.97, acc


def test_ci_training_loss_falls(ci_run):
    _, bookkeeping, _ = ci_run
    loss, val = bookkeeping.history["loss"], bookkeeping.history["val_loss"]
    assert len(loss) == get_preset("ci").max_steps
    first, last = sum(loss[:20]) / 20, sum(loss[-50:]) / 50
    assert last < 0.25 * first, (first, last)
    assert val[-1] < val[0]


def test_ci_model_follows_colour_with_guidance(ci_run, encoder):
    config, _, ckpt = ci_run
    model, _ = load_model(ckpt, "cpu")
    sampler = DDIMSampler(noise_schedule_for(config))
    acc = adherence_sweep(model, EmbeddingCache(encoder), [0, 3], sampler, n_per_prompt=3,
                          num_inference_steps=config.num_inference_steps, progress=False)
    chance = chance_accuracy()["color"]
    assert acc["3"]["color"] >= 0.6, acc  # chance is 1/6
    assert acc["3"]["color"] > acc["0"]["color"] + 0.25, acc
    assert acc["0"]["color"] < chance + 0.2, acc  # unguided: near chance


def test_ema_callback_averages_the_weights():
    import torch

    from lib_cfg.bookkeeping import EMACallback, default_bookkeeping

    model, ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(1.0), ema.weight.fill_(0.0)
    EMACallback(0.9)({"model": model, "ema_model": ema, "step": 1000})  # d = 0.9 once past the warm-up
    torch.testing.assert_close(ema.weight, torch.full((2, 2), 0.1))
    EMACallback(0.9)({"model": model, "ema_model": None, "step": 1})  # no EMA kept: nothing to do
    callbacks = default_bookkeeping(get_preset("ci"), None, create_noise_schedule(), None, [], silent=True).callbacks
    assert isinstance(callbacks[0], EMACallback)  # first, so the others see this step's average
