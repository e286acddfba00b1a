"""caption_accuracy: the conditional model read as a classifier of its own captions."""
import pytest
import torch

from lib_cfg.caption_accuracy import caption_accuracy, caption_errors, candidate_captions, one_label_apart, wins
from lib_cfg.config import get_preset
from lib_cfg.diffusion import add_noise, noise_schedule_for
from lib_cfg.model import create_unet_model


def tiny_model(dim=8):
    """The `ci` network with every weight random (a fresh one predicts exactly 0: its last layer starts at
    zero), so its output depends on the image, t and the caption."""
    torch.manual_seed(0)
    model = create_unet_model(get_preset("ci"), "cpu", text_embed_dim=dim, verbose=False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.05)
    return model


def test_candidates_put_the_own_caption_first_and_draw_distinct_others():
    pool = [f"caption {i}" for i in range(5)] * 3
    rows = candidate_captions(["caption 0", "caption 3"], pool, 4, torch.Generator().manual_seed(0))
    for own, row in zip(["caption 0", "caption 3"], rows):
        assert row[0] == own and len(row) == 4 and len(set(row)) == 4 and set(row) <= set(pool)
    assert len(candidate_captions(["a", "b"], ["a", "b"], 8)[0]) == 2  # k capped at the distinct captions


def test_labelled_candidates_are_the_canonical_caption_and_rivals_one_label_away():
    from lib_cfg import animal_faces, synthetic

    prompts = synthetic.all_prompts()
    labels = dict((c, t) for c, t in prompts)
    rows = one_label_apart([{"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}], prompts, 8,
                           torch.Generator().manual_seed(0))
    for own, row in zip(({"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}), rows):
        assert labels[row[0]] == own and len(row) == len(set(row)) == 8  # 5 other colours + 2 other shapes
        assert all(sum(labels[c][a] != own[a] for a in own) == 1 for c in row[1:])
    # unprompted labels (the art style) are ignored; 24 rivals one label away, 7 drawn
    row, = one_label_apart([{"animal": "fox", "background": "blue", "style": "noto"}], animal_faces.all_prompts(), 8)
    assert row[0] == animal_faces.caption("fox", "blue") and len(set(row)) == 8
    assert len(one_label_apart([{"color": "red", "shape": "circle"}], prompts, 20)[0]) == 8  # capped at 7 rivals
    with pytest.raises(ValueError, match="no canonical prompt"):
        one_label_apart([{"color": "red", "shape": "hexagon"}], prompts, 8)


def test_wins_share_ties_so_a_blind_model_scores_chance():
    errors = torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.1, 0.2], [0.2, 0.2, 0.2], [0.1, 0.1, 0.5]])
    assert wins(errors).tolist() == pytest.approx([1.0, 0.0, 1 / 3, 0.5])


def test_batched_errors_match_a_brute_force_loop():
    model, schedule = tiny_model(), noise_schedule_for(get_preset("ci"))
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    emb = torch.randn(3, 4, 8) * 20  # large, so the caption moves the prediction well above the tolerance
    timesteps = [100, 500, 900]
    batched = caption_errors(model, schedule, images, emb, timesteps, torch.Generator().manual_seed(0), batch_size=7)
    eps = torch.randn((3, 3, 3, 16, 16), generator=torch.Generator().manual_seed(0))  # the same draw
    brute = torch.zeros(3, 4)
    with torch.no_grad():
        for i in range(3):
            for j in range(4):
                for k, t in enumerate(timesteps):
                    t_ = torch.tensor([t])
                    x_t = add_noise(images[i:i + 1], eps[i, k:k + 1], t_, schedule)
                    brute[i, j] += (model(x_t, t_, emb[i, j:j + 1]) - eps[i, k:k + 1]).pow(2).mean() / 3
    assert torch.allclose(batched, brute, rtol=0, atol=2e-6)
    assert batched.std(dim=1).min() > 1e-4  # the captions change the errors: rows were not mixed up unseen


def test_a_model_that_ignores_the_text_scores_chance_and_a_trained_one_more(ci_run, tmp_path, data_dir):
    from lib_cfg import synthetic
    from lib_cfg.data import all_captions, load_data
    from lib_cfg.sampling import load_pipeline
    from lib_cfg.train import run_training

    config, _, ckpt = ci_run
    _, val = load_data(config, verbose=False)
    images = torch.stack([val[i][0] for i in range(128)])
    captions = [val[i][1]["text"] for i in range(128)]
    pool = all_captions(val)

    targets = [{a: val[i][1][a] for a in ("color", "shape")} for i in range(128)]

    def score(pipe, **labelled):
        return caption_accuracy(pipe.model, pipe.noise_schedule, images, captions,
                                lambda c: pipe.embed(c, "cpu"), pool=pool, **labelled)

    trained = score(load_pipeline(ckpt, "cpu"))
    hard = dict(targets=targets, prompts=synthetic.all_prompts())  # rivals one label away
    # the same run with every caption dropped: the network never learns to read the text
    blind_dir = str(tmp_path / "blind")
    run_training(get_preset("ci", checkpoint_dir=blind_dir, data_dir=data_dir, text_drop_prob=1.0), silent=True)
    blind = score(load_pipeline(blind_dir, "cpu"))
    assert trained["caption_chance"] == blind["caption_chance"] == 1 / 8
    assert abs(blind["caption_accuracy"] - 1 / 8) < 0.1, blind  # 128 images: chance +- about 3 standard errors
    assert trained["caption_accuracy"] > 0.4, trained
    blind_hard = score(load_pipeline(blind_dir, "cpu"), **hard)
    assert blind_hard["caption_chance"] == 1 / 8 and abs(blind_hard["caption_accuracy"] - 1 / 8) < 0.1, blind_hard
    # `ci` reads the colour and not the shape: above chance, below the random rivals' score
    assert 1 / 8 + 0.1 < score(load_pipeline(ckpt, "cpu"), **hard)["caption_accuracy"] < trained["caption_accuracy"]


def test_training_logs_caption_accuracy_and_a_finished_run_trains_on_to_more_steps(ci_run, tmp_path, capsys):
    import shutil

    from lib_cfg.bookkeeping import read_log
    from lib_cfg.caption_accuracy import caption_verdict
    from lib_cfg.checkpoint import load_trainer_state
    from lib_cfg.cli import main

    config, bookkeeping, ckpt = ci_run
    h = bookkeeping.history
    assert h["caption_step"] == h["val_step"] == [100, 200, 300]  # measured at each validation
    assert all(0 <= a <= 1 for a in h["caption_accuracy"]) and h["caption_chance"] == [1 / 8] * 3
    logged = [line for line in read_log(ckpt) if "caption_accuracy" in line]
    assert [line["step"] for line in logged] == [100, 200, 300] and logged[-1]["caption_chance"] == 0.125

    low = {"caption_step": [300], "caption_accuracy": [0.3], "caption_chance": [0.125]}
    assert "does not follow its captions yet" in caption_verdict(low, "DIR")
    assert "python -m lib_cfg train --resume DIR --max_steps 600" in caption_verdict(low, "DIR")
    high = caption_verdict({**low, "caption_accuracy": [0.9]}, "DIR")
    assert high.endswith(": the model follows its captions") and "does not" not in high
    assert caption_verdict({"caption_step": []}, "DIR") is None

    run = str(tmp_path / "run")
    shutil.copytree(ckpt, run)
    capsys.readouterr()
    assert main(["train", "--resume", run, "--max_steps", "400", "--checkpoint_dir", run]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {run} at step 300" in out and "caption accuracy" in out
    state = load_trainer_state(run)
    assert state["step"] == 400 and state["history"]["caption_step"] == [100, 200, 300, 400]
