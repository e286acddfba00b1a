"""The guidance panel, driven headlessly: changing a control redraws, and shows what the library samples."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from lib_cfg.sampling import load_pipeline
from lib_cfg.widgets import GuidancePanel, images_to_png


@pytest.fixture(scope="module")
def pipe(ci_run):
    _, _, ckpt = ci_run
    return load_pipeline(ckpt, "cpu")


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_controls_redraw_with_what_the_library_samples(pipe):
    panel = GuidancePanel(pipe, prompt="a red circle on a black background", steps=10)
    first = panel.image.value
    assert decode(first).shape == (16 * 8, (16 + 1) * 4 * 8, 3)  # 4 images, 8x upscaled, 1-px gaps

    panel.scale.value = 7.5  # as if the slider was moved
    assert panel.image.value != first
    expected = pipe(["a red circle on a black background"] * 4, 7.5, 10, seed=0)
    assert torch.equal(panel.images, expected)
    assert panel.image.value == images_to_png(expected)

    panel.prompt.value = "a blue square on a black background"  # as if typed
    expected = pipe(["a blue square on a black background"] * 4, 7.5, 10, seed=0)
    assert torch.equal(panel.images, expected) and panel.image.value == images_to_png(expected)

    before = panel.image.value
    panel.seed.value = 3
    panel.steps.value = 20
    assert panel.image.value != before
    assert torch.equal(panel.images, pipe(["a blue square on a black background"] * 4, 7.5, 20, seed=3))
    assert "s = 7.5, seed 3, 20 steps" in panel.status.value
