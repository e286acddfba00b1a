"""The instructor's path, proven offline: the CLIP code path on a local CLIP-architecture model, the
AFHQ-shaped dataset decoded once, and the `lesson-smoke` preset through train, resume and sample."""
import os
import subprocess
import sys

import pytest
import torch

from lib_cfg.checkpoint import load_config, load_trainer_state
from lib_cfg.config import get_preset
from lib_cfg.data import image_cache_path, load_data, to_tensor
from lib_cfg.stand_ins import AFHQ_LIKE, CAPTION_COLUMN, LABELS, build_afhq_like_dataset, build_clip_text_model
from lib_cfg.text_encoder import TextEncoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_clip_text_model(str(tmp_path_factory.mktemp("clip") / "clip-text"))


def test_clip_path_encodes_with_pooler_output_and_truncates_at_the_models_maximum(clip_dir):
    from transformers import CLIPTextModel, CLIPTokenizer

    encoder = TextEncoder(clip_dir, "cpu")
    assert encoder.is_clip and encoder.max_length == 77 == encoder.model.config.max_position_embeddings
    short = "a close up of an orange cat"
    model, tokenizer = CLIPTextModel.from_pretrained(clip_dir).eval(), CLIPTokenizer.from_pretrained(clip_dir)
    with torch.no_grad():
        reference = model(**tokenizer([short], return_tensors="pt")).pooler_output
        hidden = model(**tokenizer([short], return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(encoder([short]), reference)
    # pooler_output is the state at the end token, not a mean: it differs from the mean of the token states
    assert not torch.allclose(reference, hidden.mean(1), atol=1e-3)

    # One token per character here: a 120-character caption is cut to 77 tokens (start + 75 + end), with a
    # warning; what lies beyond the cut cannot change the embedding, what lies before it does.
    long_a, long_b = "x" * 75 + "a" * 45, "x" * 75 + "b" * 45
    with pytest.warns(UserWarning, match="longer than 77 tokens were truncated"):
        a, b = encoder([long_a]), encoder([long_b])
    torch.testing.assert_close(a, b)
    assert not torch.allclose(encoder(["y" + "x" * 74 + "a" * 45]), a)
    with torch.no_grad():
        cut = model(**tokenizer([long_a], truncation=True, max_length=77, return_tensors="pt")).pooler_output
    torch.testing.assert_close(a, cut)


def test_the_afhq_shaped_dataset_has_the_lessons_columns_and_is_decoded_once(tmp_path, monkeypatch):
    import datasets

    path = build_afhq_like_dataset(str(tmp_path / "afhq"), n=40)
    ds = datasets.load_from_disk(path)
    assert set(ds.column_names) == {"image", CAPTION_COLUMN, "label"}
    assert ds.features["label"].names == LABELS and ds[0]["image"].size == (64, 64)

    config = get_preset("lesson-smoke", dataset=path, data_dir=str(tmp_path / "data"), val_fraction=0.1)
    train_ds, val_ds = load_data(config, verbose=False)
    cache = image_cache_path(config)
    assert os.path.exists(cache) and len(train_ds) + len(val_ds) == 40
    assert train_ds.images.dtype == torch.uint8 and train_ds.images.shape[1:] == (3, 32, 32)
    # Items are what decoding each file would give, with the caption and the label
    x, meta = val_ds[0]
    row = next(r for r in ds if r[CAPTION_COLUMN] == meta["text"] and r["label"] == meta["label"])
    torch.testing.assert_close(x, to_tensor(row["image"], 32), rtol=0, atol=0)
    # The second load reads the decoded file and never opens the dataset
    import lib_cfg.data

    def no_dataset(config):
        raise AssertionError("the dataset was opened again")

    monkeypatch.setattr(lib_cfg.data, "_load_hf", no_dataset)
    train2, val2 = load_data(config, verbose=False)
    assert torch.equal(train2.images, train_ds.images) and train2.captions == train_ds.captions
    assert train2.extra["label"] == train_ds.extra["label"]


def test_lesson_preset_uses_the_lessons_optimizer():
    from lib_cfg.train import lr_at, make_optimizer
    from lib_cfg.model import create_unet_model

    lesson = get_preset("lesson", device="cpu")
    assert (lesson.learning_rate, lesson.weight_decay, lesson.val_fraction, lesson.text_drop_prob) == (5e-4, 1e-6, 0.1, 0.2)
    assert {lr_at(s, lesson) for s in (0, 1, 999, 10000, 19999)} == {5e-4}  # constant, no warm-up
    opt = make_optimizer(create_unet_model(get_preset("lesson-smoke", device="cpu"), "cpu", 64, verbose=False), lesson)
    assert opt.param_groups[0]["weight_decay"] == 1e-6 and opt.param_groups[0]["lr"] == 5e-4


def run_cli(*args, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lib_cfg", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_lesson_smoke_trains_resumes_and_samples_through_the_cli(tmp_path):
    """The preset as an instructor would run the lesson's, offline: the stand-ins under data/lesson-smoke are
    built on first use (a fresh clone has none), the checkpoint records the CLIP-architecture encoder's path,
    and `sample` reloads that encoder to embed a prompt the training never saw."""
    ckpt = str(tmp_path / "lesson-smoke")
    first = run_cli("train", "--preset", "lesson-smoke", "--checkpoint_dir", ckpt, "--max_steps", "20")
    assert first.returncode == 0, first.stderr[-3000:]
    assert load_trainer_state(ckpt)["step"] == 20
    config = load_config(ckpt)
    assert config.text_encoder == "data/lesson-smoke/clip-text" and config.dataset == AFHQ_LIKE
    assert os.path.exists(os.path.join(ROOT, "data/lesson-smoke/clip-text/config.json"))

    resumed = run_cli("train", "--resume", ckpt, "--max_steps", "40")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {ckpt} at step 20" in resumed.stdout + resumed.stderr
    state = load_trainer_state(ckpt)
    assert state["step"] == 40 and state["history"]["step"] == list(range(1, 41))
    # the one adherence measure the lesson's own data has without CLIP or a judge: logged, and said at the end
    assert state["history"]["caption_step"] == [20, 40] and "caption accuracy" in resumed.stdout

    out = str(tmp_path / "grid.png")
    prompt = "a grey wild animal that no caption in the training set describes"
    sampled = run_cli("sample", "--checkpoint", ckpt, "--prompt", prompt, "--scales", "0", "3", "--steps", "5",
                      "--out", out)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert "lesson-smoke" in sampled.stdout and os.path.getsize(out) > 1000


def test_clip_score_on_a_full_clip_model_and_none_on_a_text_only_one(clip_dir, tmp_path):
    """The notebooks' measure on image-caption data: a local CLIP model with both towers scores each pair with
    100 x the cosine of its image and caption features; the text-only stand-in has no image tower."""
    import shutil

    import torch.nn.functional as F
    from transformers import CLIPConfig, CLIPModel

    from lib_cfg.clip_score import MEAN, STD, clip_scorer

    assert clip_scorer(clip_dir) is None
    full = str(tmp_path / "clip-full")
    shutil.copytree(clip_dir, full)
    torch.manual_seed(0)
    text = {"vocab_size": 514, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 512, "eos_token_id": 513,
            "pad_token_id": 513}  # the stand-in tokenizer's vocabulary: 512 byte symbols, start, end
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    CLIPModel(config).save_pretrained(full)
    scorer = clip_scorer(full)
    images, captions = torch.rand(3, 3, 16, 16) * 2 - 1, ["a cat", "a dog", "a wild animal"]
    scores = scorer(images, captions)
    assert scores.shape == (3,) and ((0 <= scores) & (scores <= 100)).all()
    # the same numbers by hand: upsample to 32, CLIP's normalisation, cosine of the projected features
    x = F.interpolate((images + 1) / 2, size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        tokens = scorer.tokenizer(captions, padding=True, return_tensors="pt")
        m = scorer.model
        cos = F.cosine_similarity(m.visual_projection(m.vision_model(pixel_values=x).pooler_output),
                                  m.text_projection(m.text_model(**tokens).pooler_output), dim=-1)
    torch.testing.assert_close(scores, (100 * cos).clamp(min=0))
    # each pair is scored on its own: permuting the pairs permutes the scores
    perm = [2, 0, 1]
    torch.testing.assert_close(scorer(images[perm], [captions[i] for i in perm]), scores[perm])


def test_every_notebook_runs_top_to_bottom_on_lesson_smoke():
    """The course on the lesson's path (a CLIP-architecture encoder, AFHQ-shaped photos): nbval runs every notebook
    from a fresh kernel with LIB_CFG_PRESET=lesson-smoke. Cells that need the synthetic shapes' colour and shape
    print that they are skipped; every other cell must run, and the NBVAL_CHECK_OUTPUT cells must print what
    the stored (quick) run printed."""
    env = {**os.environ, "LIB_CFG_PRESET": "lesson-smoke", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                          "--nbval-cell-timeout=600", "notebooks"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stdout[-6000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
