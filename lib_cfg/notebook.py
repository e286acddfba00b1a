"""Helpers the notebooks share: where to run, which preset, a trained model when one is needed."""
from __future__ import annotations

import inspect
import os
from dataclasses import replace
from pathlib import Path
from typing import Optional

from .bookkeeping import SnapshotCallback
from .checkpoint import load_trainer_state, resolve_checkpoint
from .config import SYNTHETIC_BG_DATASET, SYNTHETIC_DATASET, TrainingConfig, get_preset
from .train import TrainingRun, build_training

ROOT = Path(__file__).resolve().parent.parent  # the repository (lib_cfg is installed editable)


# The course trains `quick` for fewer steps than `make run` (450): adherence at s = 3 first meets the bar
# (colour >= 95%, shape >= 85%) at about 300 steps; 400 meet it with a margin (at 300, with the learning rate
# decayed by then, shape came out at 77%). Its own folder,
# so `make run` never resumes (or is mistaken for) the shorter run.
COURSE_STEPS = {"quick": 400}

# The first line of a cell that needs the synthetic shapes' known colour and shape (the judge, the attribute
# classifier). On other data (the lesson's photos, `lesson-smoke`) such a cell prints why it is skipped.
SYNTHETIC_ONLY = "# synthetic data only"


def setup(name: str = "quick", **overrides) -> TrainingConfig:
    """Run from the repository root (so data/ and checkpoints/ are shared with the command line) and
    return the preset `name` as the course runs it (the notebooks read it from $LIB_CFG_PRESET; CI sets `ci`)."""
    if (ROOT / "lib_cfg").is_dir() and (ROOT / "notebooks").is_dir():
        os.chdir(ROOT)
    config = get_preset(name, **overrides)
    note = ""
    if name in COURSE_STEPS and "max_steps" not in overrides:
        note = f" (the course's budget; `make run` trains all {config.max_steps})"
        config = replace(config, max_steps=COURSE_STEPS[name], checkpoint_dir=f"{config.checkpoint_dir}-course")
    print(f"preset {name!r}: {config.dataset}, {config.text_encoder}, {config.resolution}x{config.resolution}, "
          f"{config.max_steps} steps{note} -> {config.checkpoint_dir}")
    skip_synthetic_only_cells(not has_attributes(config), config.dataset)
    return config


def has_attributes(config: TrainingConfig) -> bool:
    """Whether every image of config's data has a known colour and shape (the synthetic shapes)."""
    return config.dataset in (SYNTHETIC_DATASET, SYNTHETIC_BG_DATASET)


def skip_synthetic_only_cells(skip: bool, dataset: str) -> None:
    """In a notebook kernel: from now on, run each cell whose first line is SYNTHETIC_ONLY as a note saying it
    was skipped (skip=True), or as written (skip=False)."""
    try:
        shell = get_ipython()  # noqa: F821 (defined in IPython kernels only)
    except NameError:
        return
    transforms = shell.input_transformers_cleanup
    transforms[:] = [f for f in transforms if getattr(f, "__name__", "") != "_skip_synthetic_only"]
    if not skip:
        return
    note = f"skipped: this cell needs the synthetic shapes' colour and shape labels, and the data is {dataset}"

    def _skip_synthetic_only(lines):
        first = next((line.strip() for line in lines if line.strip() and not line.startswith(("%", "# NBVAL"))), "")
        return [f"print({note!r})\n"] if first.startswith(SYNTHETIC_ONLY) else lines

    transforms.append(_skip_synthetic_only)


def show(*objects) -> None:
    """Print the whole source of library functions or classes: how a notebook shows lib_cfg's code
    (tests/test_notebooks.py checks each such cell's stored output against the source)."""
    for obj in objects:
        print(inspect.getsource(obj))


def is_finished(config: TrainingConfig) -> bool:
    try:
        return load_trainer_state(resolve_checkpoint(config.checkpoint_dir))["step"] >= config.max_steps
    except (FileNotFoundError, ValueError, KeyError):
        return False


def shorter_guide(config: TrainingConfig) -> TrainingConfig:
    """Autoguidance's weaker model for `config` (notebook 06): the same run stopped at a quarter of its steps.
    `ensure_trained` saves it on the way, so it costs no training of its own."""
    return replace(config, max_steps=max(1, config.max_steps // 4), checkpoint_dir=config.checkpoint_dir + "-guide-shorter")


def ensure_trained(config: TrainingConfig, run: Optional[TrainingRun] = None, silent: bool = False,
                   save_guide: bool = True) -> str:
    """The finished checkpoint for `config`: loaded if it exists, otherwise trained now: a partial run is
    resumed, else `run` (a fresh `build_training(config)`, if the caller already has one) or a new build is trained.
    With save_guide, training also saves `shorter_guide(config)`, the run at a quarter of its steps, if that is
    not there yet."""
    if is_finished(config):
        print(f"using the trained model in {config.checkpoint_dir}")
        return config.checkpoint_dir
    if os.path.exists(os.path.join(config.checkpoint_dir, "latest")):
        run = build_training(config, resume=config.checkpoint_dir, silent=silent)
    elif run is None or run.start_step or run.config != config:
        run = build_training(config, silent=silent)
    guide = shorter_guide(config)
    if save_guide and run.start_step < guide.max_steps and not is_finished(guide):
        run.bookkeeping.callbacks.insert(-1, SnapshotCallback(guide.max_steps, guide.checkpoint_dir, config))
    print(f"no finished model in {config.checkpoint_dir}: training steps {run.start_step + 1}-{config.max_steps} now")
    run.train(silent)
    return config.checkpoint_dir
