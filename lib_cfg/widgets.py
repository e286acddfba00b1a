"""An ipywidgets panel: guidance scale, seed and steps sliders, a prompt box, and the samples they give."""
from __future__ import annotations

import io
import time
from typing import Optional

import numpy as np
import torch
from PIL import Image

from .plotting import to_numpy_images


def images_to_png(images: torch.Tensor, scale: int = 8) -> bytes:
    """[N x 3 x H x W] in [-1, 1] -> one PNG row, each pixel drawn as a scale x scale block."""
    arr = (to_numpy_images(images) * 255).round().astype(np.uint8)
    row = np.concatenate([np.pad(a, ((0, 0), (0, 1), (0, 0))) for a in arr], axis=1)  # 1-px gaps
    img = Image.fromarray(row).resize((row.shape[1] * scale, row.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class GuidancePanel:
    """Redraws `n_images` samples for the prompt whenever a control changes.

        panel = GuidancePanel(pipe); display(panel.widget)
    """

    def __init__(self, pipe, prompt: str = "a red triangle on a black background", n_images: int = 4,
                 guidance_scale: float = 3.0, seed: int = 0, steps: Optional[int] = None):
        import ipywidgets as w  # the notebooks' extra: the library works without it

        self.pipe, self.n_images = pipe, n_images
        steps = steps or pipe.config.num_inference_steps  # the checkpoint's sampler and step count
        style = {"description_width": "110px"}
        layout = w.Layout(width="420px")
        self.prompt = w.Text(value=prompt, description="prompt", style=style, layout=layout, continuous_update=False)
        self.scale = w.FloatSlider(value=guidance_scale, min=0, max=10, step=0.5, description="guidance scale s",
                                   style=style, layout=layout, continuous_update=False)
        self.seed = w.IntSlider(value=seed, min=0, max=99, description="seed", style=style, layout=layout,
                                continuous_update=False)
        self.steps = w.IntSlider(value=steps, min=5, max=100, step=5, description=f"{pipe.config.sampler.upper()} steps", style=style,
                                 layout=layout, continuous_update=False)
        self.image = w.Image(format="png")
        self.status = w.Label()
        for control in (self.prompt, self.scale, self.seed, self.steps):
            control.observe(lambda change: self.render(), names="value")
        self.widget = w.VBox([self.prompt, self.scale, self.seed, self.steps, self.image, self.status])
        self.render()

    def settings(self):
        return dict(prompt=self.prompt.value, guidance_scale=self.scale.value, seed=self.seed.value,
                    steps=self.steps.value)

    def sample(self, prompt: str, guidance_scale: float, seed: int, steps: int) -> torch.Tensor:
        return self.pipe([prompt] * self.n_images, guidance_scale, steps, seed=seed)

    def render(self) -> None:

        t0 = time.perf_counter()
        self.images = self.sample(**self.settings())
        self.image.value = images_to_png(self.images)
        s = self.settings()
        self.status.value = (f"s = {s['guidance_scale']:g}, seed {s['seed']}, {s['steps']} steps: "
                             f"{time.perf_counter() - t0:.2f} s")
