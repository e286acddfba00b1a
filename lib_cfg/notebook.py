"""Helpers the notebooks share: where to run, which preset, a trained model when one is needed."""
from __future__ import annotations

import os
from pathlib import Path

from .config import TrainingConfig, get_preset

ROOT = Path(__file__).resolve().parent.parent  # the repository (lib_cfg is installed editable)


def setup(name: str = "quick", **overrides) -> TrainingConfig:
    """Run from the repository root (so data/ and checkpoints/ are shared with the command line) and
    return the preset `name` (the notebooks read it from $LIB_CFG_PRESET; CI sets `ci`)."""
    if (ROOT / "lib_cfg").is_dir() and (ROOT / "notebooks").is_dir():
        os.chdir(ROOT)
    config = get_preset(name, **overrides)
    print(f"preset {name!r}: {config.dataset}, {config.text_encoder}, {config.resolution}x{config.resolution}, "
          f"{config.max_steps} steps -> {config.checkpoint_dir}")
    return config


def is_finished(config: TrainingConfig) -> bool:
    from .checkpoint import load_trainer_state, resolve_checkpoint

    try:
        return load_trainer_state(resolve_checkpoint(config.checkpoint_dir))["step"] >= config.max_steps
    except (FileNotFoundError, ValueError, KeyError):
        return False


def ensure_trained(config: TrainingConfig, silent: bool = False) -> str:
    """The finished checkpoint for `config`: loaded if it exists, otherwise trained now (resuming a partial one)."""
    from .train import run_training

    if is_finished(config):
        print(f"using the trained model in {config.checkpoint_dir}")
    else:
        partial = os.path.exists(os.path.join(config.checkpoint_dir, "latest"))
        print(f"no finished model in {config.checkpoint_dir}: training it now ({config.max_steps} steps)")
        run_training(config, resume=config.checkpoint_dir if partial else None, silent=silent)
    return config.checkpoint_dir
