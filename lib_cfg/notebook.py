"""Helpers the notebooks share: which preset, a trained model when one is needed, library code shown whole.

Nothing here changes the kernel behind a learner's back: the notebooks change directory in a cell of their own,
and a cell that needs the synthetic shapes' labels says so in plain Python (`if has_attributes(config):`)."""
from __future__ import annotations

import copy
import inspect
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from .bookkeeping import SnapshotCallback
from .checkpoint import load_config, load_trainer_state, resolve_checkpoint
from .config import RUNTIME_FIELDS, TRAINED_FIELDS, TrainingConfig, differing_fields, get_preset
from .labelled import labelled_data
from .train import TrainingRun, build_training, make_optimizer, training_step

ROOT = Path(__file__).resolve().parent.parent  # the repository (lib_cfg is installed editable)


# The course trains `quick` for fewer steps than `make run` (450): adherence at s = 3 first meets the bar
# (colour >= 95%, shape >= 85%) at about 300 steps; 400 meet it with a margin (at 300, with the learning rate
# decayed by then, shape came out at 77%). Its own folder,
# so `make run` never resumes (or is mistaken for) the shorter run.
COURSE_STEPS = {"quick": 400}


def setup(name: str = "quick", **overrides) -> TrainingConfig:
    """The preset `name` as the course runs it (the notebooks read it from $LIB_CFG_PRESET; CI sets `ci`).

    An override that changes what is trained (any field but where, how long and how visibly) names the
    folder: `setup("quick", text_drop_prob=0.5)` trains into checkpoints/quick-course-text_drop_prob=0.5, so
    the course's own model is never mistaken for it (or overwritten)."""
    config = get_preset(name, **overrides)
    note = ""
    if name in COURSE_STEPS and "max_steps" not in overrides:
        note = f" (the course's budget; `make run` trains all {config.max_steps})"
        # validation every 50 steps: notebook 03 plots how the caption accuracy grows over the run
        config = replace(config, max_steps=COURSE_STEPS[name], validate_every=50,
                         checkpoint_dir=f"{config.checkpoint_dir}-course")
    changed = {k: v for k, v in overrides.items() if k not in RUNTIME_FIELDS}
    if changed and "checkpoint_dir" not in overrides:
        suffix = "-".join(f"{k}={_slug(v)}" for k, v in sorted(changed.items()))
        config = replace(config, checkpoint_dir=f"{config.checkpoint_dir}-{suffix}")
    print(f"preset {name!r}: {config.dataset}, {config.text_encoder}, {config.resolution}x{config.resolution}, "
          f"{config.max_steps} steps{note} -> {config.checkpoint_dir}")
    return config


def _slug(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value).replace("/", "_")


def has_attributes(config: TrainingConfig) -> bool:
    """Whether every image of config's data has known labels (the synthetic shapes' colour and shape, the animal
    faces' animal and background: `lib_cfg.labelled`): the cells that judge samples need them. When not (the
    lesson's photos, `lesson-smoke`), prints that the cell's work is skipped and why."""
    if labelled_data(config) is not None:
        return True
    print(f"skipped: this cell needs the labels of a labelled dataset (colour and shape, or animal and "
          f"background), and the data is {config.dataset}")
    return False


def show(*objects) -> None:
    """Print the whole source of library functions or classes: how a notebook shows lib_cfg's code
    (tests/test_notebooks.py checks each such cell's stored output against the source)."""
    for obj in objects:
        print(inspect.getsource(obj))


def differences(config: TrainingConfig) -> dict:
    """{field: (saved, wanted)} for each model or recipe field where the run saved in config.checkpoint_dir
    differs from `config` ({} when it agrees or there is none). Where, how long and how visibly (RUNTIME
    fields) do not count."""
    try:
        saved = load_config(config.checkpoint_dir)
    except FileNotFoundError:
        return {}
    return differing_fields(saved, config, TRAINED_FIELDS)


def check_folder(config: TrainingConfig) -> None:
    """Stop with a message if config.checkpoint_dir holds a run trained with other model or recipe fields."""
    diff = differences(config)
    if diff:
        fields = ", ".join(f"{k}={saved!r} (you asked for {wanted!r})" for k, (saved, wanted) in diff.items())
        raise ValueError(f"{config.checkpoint_dir} holds a model trained with {fields}: pass the change to "
                         f"setup() (it names a folder for it), set checkpoint_dir, or delete the folder")


def is_finished(config: TrainingConfig) -> bool:
    """Whether config.checkpoint_dir holds a run of `config` trained for all its steps (other fields: an error)."""
    check_folder(config)
    try:
        return load_trainer_state(resolve_checkpoint(config.checkpoint_dir))["step"] >= config.max_steps
    except (FileNotFoundError, ValueError, KeyError):
        return False


def shorter_guide(config: TrainingConfig) -> TrainingConfig:
    """Autoguidance's weaker model for `config` (notebook 06): the same run stopped at a quarter of its steps.
    `ensure_trained` saves it on the way, so it costs no training of its own."""
    return replace(config, max_steps=max(1, config.max_steps // 4), checkpoint_dir=config.checkpoint_dir + "-guide-shorter")


def remove_run(config: TrainingConfig) -> None:
    """Delete config's checkpoints and the guide snapshot saved with them (RETRAIN in notebook 03)."""
    for folder in (config.checkpoint_dir, shorter_guide(config).checkpoint_dir):
        if os.path.isdir(folder):
            shutil.rmtree(folder)
            print(f"deleted {folder}")


def seconds_per_step(run: TrainingRun, steps: int = 2) -> float:
    """The time of one training step of `run` on this machine: `steps` steps timed on a copy of the model after
    one untimed step, with the random state restored, so `run` itself is untouched."""
    model = copy.deepcopy(run.model)
    optimizer = make_optimizer(model, run.config)
    with torch.random.fork_rng():
        x0, meta = next(iter(run.train_dataloader))
        x0, text = x0.to(next(model.parameters()).device), run.embed(meta["text"])
        training_step(model, optimizer, x0, text, run.noise_schedule, run.config)
        start = time.perf_counter()
        for _ in range(steps):
            training_step(model, optimizer, x0, text, run.noise_schedule, run.config)
    return (time.perf_counter() - start) / steps


def ensure_trained(config: TrainingConfig, run: Optional[TrainingRun] = None, silent: bool = False,
                   save_guide: bool = True) -> str:
    """The finished checkpoint for `config`: loaded if it exists, otherwise trained now, with an estimate of
    the time and a progress bar: a partial run is resumed, else `run` (a fresh `build_training(config)`, if the
    caller already has one) or a new build is trained. A folder that holds a run of other model or recipe
    fields is an error (`check_folder`), never silently reused. With save_guide, a run that passes a quarter of
    its steps also saves `shorter_guide(config)` there, replacing any older one."""
    if is_finished(config):
        print(f"using the trained model in {config.checkpoint_dir} (delete that folder to train it again)")
        return config.checkpoint_dir
    if os.path.exists(os.path.join(config.checkpoint_dir, "latest")):
        run = build_training(config, resume=config.checkpoint_dir, silent=silent)
    elif run is None or run.start_step or run.config != config or run.bookkeeping.history["step"]:
        run = build_training(config, silent=silent)  # (a run that has trained already is not fresh)
    guide = shorter_guide(config)
    if save_guide and run.start_step < guide.max_steps:
        run.bookkeeping.callbacks.insert(-1, SnapshotCallback(guide.max_steps, guide.checkpoint_dir, config))
    todo = config.max_steps - run.start_step
    minutes = todo * seconds_per_step(run) / 60
    print(f"no finished model in {config.checkpoint_dir}: training steps {run.start_step + 1}-{config.max_steps} "
          f"now ({todo} steps of {config.batch_size} images: about {minutes:.1f} min of steps on this machine, timed "
          f"on two, plus validation and checkpoints; the bar below shows the time left)")
    run.train(silent)
    return config.checkpoint_dir
