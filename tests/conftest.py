"""Shared fixtures. No test reaches the network: hub libraries are put in offline mode and any
socket connection to a non-local address fails loudly."""
import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

_connect = socket.socket.connect


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
        raise OSError(f"tests must not use the network (tried to connect to {address!r})")
    return _connect(self, address)


socket.socket.connect = _guarded_connect
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One data folder per test session (synthetic renders and text-embedding caches)."""
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def encoder():
    from lib_cfg.text_encoder import TextEncoder
    return TextEncoder("all-MiniLM-L6-v2", "cpu")


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory, data_dir):
    """The `ci` preset trained once for the session: (config, bookkeeping, checkpoint_dir)."""
    from lib_cfg.config import get_preset
    from lib_cfg.train import run_training

    ckpt = str(tmp_path_factory.mktemp("ci_checkpoint"))
    config = get_preset("ci", checkpoint_dir=ckpt, data_dir=data_dir)
    _, _, bookkeeping, _ = run_training(config, silent=True)
    return config, bookkeeping, ckpt
