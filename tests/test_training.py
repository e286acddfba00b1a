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


def test_ema_update_equals_one_lerp_per_tensor():
    import copy

    import torch

    from lib_cfg.bookkeeping import update_ema
    from lib_cfg.model import create_unet_model

    model = create_unet_model(get_preset("ci"), "cpu", 384, verbose=False)
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    expected = [e.detach().clone().lerp_(p, 1 - 0.99) for e, p in zip(ema.parameters(), model.parameters())]
    update_ema(ema, model, 0.99, step=10_000)
    assert all(torch.equal(e, x) for e, x in zip(ema.parameters(), expected))


def test_the_loop_reads_the_losses_once_per_log_interval(tmp_path, data_dir, monkeypatch):
    """Reading a loss waits for the device: the loop does it at the steps that log, validate, sample or save
    (here every 10th), a batch of steps at a time, and the history still has every step's loss."""
    import torch

    from lib_cfg.distributed import Shard
    from lib_cfg.train import run_training

    reads, mean_losses = [], Shard.mean_losses

    def counting(self, losses):
        reads.append(len(losses))
        return mean_losses(self, losses)

    monkeypatch.setattr(Shard, "mean_losses", counting)
    config = get_preset("ci", checkpoint_dir=str(tmp_path / "c"), data_dir=data_dir, synthetic_size=600, batch_size=16,
                        max_steps=30, log_every=10, validate_every=20, sample_every=30, save_every=30, n_samples=2,
                        num_inference_steps=2)
    _, _, bookkeeping, _ = run_training(config, silent=True)
    assert reads == [10, 10, 10]  # steps 1-10, 11-20 (also validates), 21-30
    assert bookkeeping.history["step"] == list(range(1, 31))
    assert all(torch.isfinite(torch.tensor(bookkeeping.history["loss"])))


def test_compile_field_compiles_the_step_with_cuda_graphs_on_cuda(monkeypatch):
    import torch

    from lib_cfg import train

    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: seen.append(kw) or model)
    net = torch.nn.Linear(1, 1)
    assert train.compiled(net, get_preset("ci"), "cuda") is net and seen == []  # compile off: the model itself
    train.compiled(net, get_preset("ci", compile=True), "cuda:0")
    train.compiled(net, get_preset("ci", compile=True), "cpu")
    assert seen == [{"mode": "reduce-overhead"}, {"mode": "default"}]


def test_batches_are_pinned_for_cuda_only(monkeypatch, data_dir):
    from lib_cfg import train

    config = get_preset("ci", data_dir=data_dir, synthetic_size=300, batch_size=8)
    train_ds, val_ds = load_data(config, verbose=False)
    assert not train.make_dataloaders(config, train_ds, val_ds)[0].pin_memory
    monkeypatch.setattr(train, "resolve_device", lambda device: "cuda")
    assert train.make_dataloaders(config, train_ds, val_ds)[0].pin_memory
