"""A CLIP score, for image-caption data where no judge knows the truth (the lesson's AFHQ photos).

CLIPScore (Hessel et al. 2021), as torchmetrics reports it: max(100 * cos(image embedding, caption embedding), 0)
under a full CLIP model (text and image towers), e.g. `openai/clip-vit-large-patch14`. Higher: the image fits
the caption better. It needs the image tower, so a text-only model (the `lesson-smoke` stand-in, MiniLM) has none:
`clip_scorer` then returns None and says why.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from .plotting import to_unit
from .text_encoder import model_path

# CLIP's image normalisation (its preprocessor's image_mean and image_std)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


class ClipScorer:
    def __init__(self, model, tokenizer, device: str = "cpu"):
        self.model, self.tokenizer, self.device = model.to(device).eval(), tokenizer, device
        self.size = model.config.vision_config.image_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, captions: List[str]) -> torch.Tensor:
        """images [N x 3 x H x W] in [-1, 1], N captions -> scores [N] in [0, 100]."""
        x = F.interpolate(to_unit(images).float().to(self.device), size=(self.size, self.size), mode="bicubic",
                          align_corners=False, antialias=True).clamp(0, 1)
        x = (x - torch.tensor(MEAN, device=self.device)[:, None, None]) / torch.tensor(STD, device=self.device)[:, None, None]
        tokens = self.tokenizer(list(captions), padding=True, truncation=True,
                                max_length=self.model.config.text_config.max_position_embeddings,
                                return_tensors="pt").to(self.device)
        image = F.normalize(_features(self.model.get_image_features(pixel_values=x)), dim=-1)
        text = F.normalize(_features(self.model.get_text_features(**tokens)), dim=-1)
        return (100 * (image * text).sum(-1)).clamp(min=0).cpu()


def _features(out) -> torch.Tensor:
    # transformers 4 returns the projected features; 5 returns an output whose pooler_output holds them
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_scorer(model_name: str, device: str = "cpu", verbose: bool = True) -> Optional[ClipScorer]:
    """A ClipScorer when `model_name` (hub id or folder) is a full CLIP model, else None (printing why)."""
    from transformers import AutoConfig, CLIPModel, CLIPTokenizer  # here: seconds to import, rarely needed

    try:
        kind = AutoConfig.from_pretrained(model_path(model_name)).model_type
    except (OSError, ValueError) as e:
        kind = f"not loadable ({type(e).__name__})"
    if kind != "clip":
        if verbose:
            print(f"no CLIP score: {model_name} is {kind!r}, not a CLIP model with an image tower")
        return None
    return ClipScorer(CLIPModel.from_pretrained(model_name), CLIPTokenizer.from_pretrained(model_name), device)
