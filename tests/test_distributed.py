"""Multi-process training on torch's own engine: `torchrun --nproc_per_node 2 -m lib_cfg train`, 2 CPU
processes over gloo, takes the same steps as one process with the same global batch (the losses read
every 4 steps, averaged over the processes, recorded for every step)."""
import os
import subprocess
import sys

import pytest
import torch

from lib_cfg.checkpoint import load_trainer_state, load_weights
from lib_cfg.distributed import Shard


def _train(cmd, checkpoint_dir, data_dir):
    args = ["train", "--preset", "ci", "--data_dir", data_dir, "--checkpoint_dir", str(checkpoint_dir),
            "--synthetic_size", "1000", "--max_steps", "12", "--log_every", "4", "--validate_every", "1000",
            "--sample_every", "1000", "--save_every", "1000", "--mixed_precision", "no"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, *cmd, "-m", "lib_cfg", *args], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return load_trainer_state(str(checkpoint_dir))["history"]["loss"], load_weights(str(checkpoint_dir))


def test_two_gloo_processes_follow_the_single_process_loss_curve(tmp_path, data_dir):
    one_loss, one_weights = _train([], tmp_path / "one", data_dir)
    two_loss, two_weights = _train(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                                   tmp_path / "two", data_dir)
    assert len(one_loss) == len(two_loss) == 12
    # Same global batch, same draws of t, eps and dropout: only the order of float sums differs.
    assert torch.allclose(torch.tensor(two_loss), torch.tensor(one_loss), rtol=1e-3), (one_loss, two_loss)
    assert one_loss[0] != one_loss[-1]  # it did train
    for name, w in one_weights.items():
        assert torch.allclose(two_weights[name], w, atol=1e-4), name


def test_shard_rows_split_a_global_batch():
    shards = [Shard(r, 4) for r in range(4)]
    rows = [torch.arange(32)[s.rows(s.per_process(32))] for s in shards]
    assert torch.equal(torch.cat(rows), torch.arange(32))
    with pytest.raises(ValueError, match="multiple of 4"):
        shards[0].per_process(30)
