"""What a dataset with known labels declares, so that judging it needs no special case.

A labelled dataset names the attributes its captions state ("color" and "shape"; "animal" and
"background"), gives every canonical prompt with its targets, and can render fresh labelled images that
no diffusion model trains on. From that alone follow:
- the evaluation prompts and their chance levels (`lib_cfg.evaluation`);
- the fidelity features, a small network trained on the fresh images to read each attribute, and the real
  images a Fréchet distance is measured against (`lib_cfg.fidelity`);
- the judge: the dataset's own hand-written one where it has one (the shapes: transparent, nothing for
  guidance to fool), otherwise the feature network's attribute heads (the animal faces).

    >>> from lib_cfg.labelled import labelled_data
    >>> labelled_data(get_preset("animal-faces")).labels["background"]
    ['red', 'yellow', 'green', 'blue', 'purple', 'gray']
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from . import animal_faces, judge, synthetic
from .config import ANIMAL_FACES_DATASET, SYNTHETIC_BG_DATASET, SYNTHETIC_DATASET, TrainingConfig

Prompt = Tuple[str, Dict[str, str]]  # (caption, {attribute: class name})


@dataclass(frozen=True)
class LabelledData:
    name: str  # names the cached fidelity features: one per labelled dataset, resolution and styles
    labels: Dict[str, List[str]]  # attribute -> class names, in the order the feature net's heads use
    prompts: Callable[[], List[Prompt]]  # every canonical evaluation prompt and its targets
    render: Callable[[int, int], object]  # (n, seed) -> n fresh images: .images uint8 [n x 3 x H x W], .labels
    bar: Dict[str, float]  # adherence at s = 3 that a trained preset is measured against (bench.time_to_bar)
    bar_n_per_prompt: int  # samples per prompt when judging the bar (at least 200 images in all)
    judge: Optional[Callable[[torch.Tensor], List[Dict[str, Optional[str]]]]] = None  # hand-written, or None
    # (images, groups, verdicts) -> variety within a prompt (groups: the prompt of each image)
    variety: Callable[[torch.Tensor, List[int], List[Dict]], float] = lambda images, groups, verdicts: float("nan")
    # attributes the judge also reads that captions do not name (the animal faces' art style)
    unprompted: Dict[str, List[str]] = field(default_factory=dict)
    layout: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # images -> [N x 3] more feature targets
    grid_prompts: Optional[Callable[[int], List[str]]] = None  # n -> prompts of the sample grids (else captions)
    heldout: Dict[str, str] = field(default_factory=dict)  # attribute pairs training never shows: first -> second
    # the distinct images [M x 3 x H x W] uint8 the diffusion model trained on (a mirrored pair once), where few
    # enough to be copied (copy rate)
    training_images: Optional[Callable[[], torch.Tensor]] = None

    @property
    def all_labels(self) -> Dict[str, List[str]]:
        """Every attribute the judge reads: those the captions name, then the unprompted ones."""
        return {**self.labels, **self.unprompted}

    def is_heldout(self, target: Dict[str, str]) -> bool:
        """Whether a prompt's targets are one of the pairs training never shows."""
        if not self.heldout:
            return False
        first, second = list(self.labels)[:2]
        return self.heldout.get(target[first]) == target[second]


def _shapes(config: TrainingConfig, backgrounds: bool) -> LabelledData:
    labels = {"color": list(synthetic.COLORS), "shape": synthetic.SHAPES}
    if backgrounds:
        labels["background"] = list(synthetic.COLORS)
    return LabelledData(
        name="shapes-bg" if backgrounds else "shapes", labels=labels,
        prompts=synthetic.bg_prompts if backgrounds else synthetic.all_prompts,
        render=lambda n, seed: synthetic.load_synthetic(n, config.resolution, seed, config.data_dir, verbose=False,
                                                        backgrounds=backgrounds),
        bar={"color": 0.95, "shape": 0.85}, bar_n_per_prompt=12,
        judge=lambda images: judge.judge(images, backgrounds),
        grid_prompts=None if backgrounds else synthetic.sample_prompts,
        variety=lambda images, groups, verdicts: judge.layout_variety(images, groups, backgrounds),
        layout=lambda images: judge.layout(images, backgrounds))


def _animal_faces(config: TrainingConfig) -> LabelledData:
    styles = config.styles
    return LabelledData(
        name=f"animal-faces-v{animal_faces.VERSION}-{'-'.join(styles)}", labels=animal_faces.LABELS, prompts=animal_faces.all_prompts,
        render=lambda n, seed: animal_faces.render_jittered(n, config.resolution, seed, styles, config.data_dir),
        bar={"animal": 0.95, "background": 0.98}, bar_n_per_prompt=2, heldout=animal_faces.HELDOUT,
        unprompted={"style": list(animal_faces.STYLES)}, grid_prompts=animal_faces.sample_prompts, variety=lambda images, groups, verdicts:
        animal_faces.both_styles([v["style"] for v in verdicts], groups),
        training_images=functools.lru_cache(maxsize=1)(  # read once, not at every scale of a sweep
            lambda: animal_faces.distinct_training_images(config.resolution, styles, config.data_dir)))


def labelled_data(config: TrainingConfig) -> Optional[LabelledData]:
    """The labels config.dataset declares, or None for data without known labels (photos, your own folder)."""
    if config.dataset in (SYNTHETIC_DATASET, SYNTHETIC_BG_DATASET):
        return _shapes(config, config.dataset == SYNTHETIC_BG_DATASET)
    if config.dataset == ANIMAL_FACES_DATASET:
        return _animal_faces(config)
    return None
