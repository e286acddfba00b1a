"""Checkpoints: a folder per save, written atomically, no pickle anywhere.

    checkpoint_dir/
      latest                 <- name of the newest complete checkpoint (replaced atomically)
      step_001000/
        config.json          <- the TrainingConfig
        model.safetensors    <- UNet weights
        ema.safetensors      <- EMA weights (what sampling uses)
        optimizer.safetensors + trainer_state.json  <- what resuming needs: AdamW moments, step, RNG state

A folder is written under a temporary name and renamed into place only when complete,
so a crash mid-save never damages the previous checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Optional

import torch
from safetensors.torch import load_file, save_file

from .config import MODEL_FIELDS, TrainingConfig, differing_fields
from .model import create_unet_model

FORMAT = "lib_cfg-checkpoint-v1"


def _flatten_optimizer(optimizer: torch.optim.Optimizer):
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: Dict[str, torch.Tensor], meta: Dict) -> Dict:
    state: Dict[int, Dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(checkpoint_dir: str, config: TrainingConfig, model, ema_model=None, optimizer=None,
                    step: int = 0, loss: Optional[float] = None, extra: Optional[Dict] = None, keep: int = 2) -> str:
    """Write checkpoint_dir/step_XXXXXX atomically and point `latest` at it. Returns its path."""
    name = f"step_{step:06d}"
    final = os.path.join(checkpoint_dir, name)
    tmp = os.path.join(checkpoint_dir, f".tmp_{name}_{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        f.write(config.to_json())
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              os.path.join(tmp, "model.safetensors"))
    if ema_model is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema_model.state_dict().items()},
                  os.path.join(tmp, "ema.safetensors"))
    state = {"format": FORMAT, "step": step, "loss": loss, "text_embed_dim": model.text_embed_dim,
             **(extra or {})}
    if optimizer is not None:
        tensors, meta = _flatten_optimizer(optimizer)
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
        state["optimizer"] = meta
    with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
        json.dump(state, f, indent=1)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(os.path.join(checkpoint_dir, "latest"), name)
    _prune(checkpoint_dir, keep, name)
    return final


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prune(checkpoint_dir: str, keep: int, newest: str) -> None:
    steps = sorted(d for d in os.listdir(checkpoint_dir) if d.startswith("step_") and d != newest)
    for d in steps[:max(0, len(steps) - (keep - 1))]:
        shutil.rmtree(os.path.join(checkpoint_dir, d), ignore_errors=True)


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder, or a checkpoint_dir whose `latest` names one."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    latest = os.path.join(path, "latest")
    if os.path.exists(latest):
        with open(latest) as f:
            return os.path.join(path, f.read().strip())
    raise FileNotFoundError(f"no checkpoint at {path!r}: expected a folder with config.json, or a checkpoint_dir "
                            f"with a 'latest' file (train one with: python -m lib_cfg train)")


def load_config(path: str) -> TrainingConfig:
    path = resolve_checkpoint(path)
    try:
        with open(os.path.join(path, "config.json")) as f:
            return TrainingConfig.from_dict(json.load(f))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}/config.json is not valid JSON ({e}): the checkpoint is damaged") from e


def load_trainer_state(path: str) -> Dict:
    path = resolve_checkpoint(path)
    try:
        with open(os.path.join(path, "trainer_state.json")) as f:
            state = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable lib_cfg checkpoint (trainer_state.json: {e})") from e
    if state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a lib_cfg checkpoint (format {state.get('format')!r}, expected {FORMAT!r})")
    return state


def check_compatible(saved: TrainingConfig, config: TrainingConfig, path: str) -> None:
    """Refuse a checkpoint whose model-defining fields differ from `config`, naming each difference."""
    diff = differing_fields(saved, config, MODEL_FIELDS)
    if diff:
        raise ValueError(f"the checkpoint {path} does not fit this config: "
                         + "; ".join(f"{f}: checkpoint {a!r}, config {b!r}" for f, (a, b) in diff.items())
                         + ". Use the checkpoint's own config (load_config), or train a new model.")


def _load_state(model, weights: Dict[str, torch.Tensor], path: str) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"the weights in {path} do not match its config.json (a foreign or edited checkpoint?): "
                         f"{' '.join(str(e).split())[:300]} ...") from e


def load_weights(path: str, ema: bool = True) -> Dict[str, torch.Tensor]:
    """The EMA weights if present (and asked for), else the raw ones. safetensors only: no code runs."""
    path = resolve_checkpoint(path)
    file = os.path.join(path, "ema.safetensors" if ema and os.path.exists(os.path.join(path, "ema.safetensors"))
                        else "model.safetensors")
    try:
        return load_file(file)
    except Exception as e:
        raise ValueError(f"could not read {file} ({type(e).__name__}: {e}): truncated or not a safetensors file") from e


def load_model(path: str, device: Optional[str] = None, ema: bool = True):
    """(model in eval mode, config) from a checkpoint."""
    config = load_config(path)
    state = load_trainer_state(path)
    model = create_unet_model(config, device, text_embed_dim=state["text_embed_dim"], verbose=False)
    _load_state(model, load_weights(path, ema), path)
    return model.eval(), config


def restore_training(path: str, model, ema_model, optimizer, config: Optional[TrainingConfig] = None) -> int:
    """Load weights, EMA, optimizer and RNG state into the given objects; returns the step to resume from.
    With `config`, first check that the checkpoint was made for the same model."""
    path = resolve_checkpoint(path)
    if config is not None:
        check_compatible(load_config(path), config, path)
    _load_state(model, load_weights(path, ema=False), path)
    if ema_model is not None:
        _load_state(ema_model, load_weights(path, ema=True), path)
    state = load_trainer_state(path)
    tensors = load_file(os.path.join(path, "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("rng.cpu"))
    cuda_rng = tensors.pop("rng.cuda", None)
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_rng)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    return int(state["step"])
