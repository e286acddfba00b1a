"""The benchmark's premises and outputs (not a speed claim: the numbers are in benchmarks/results.md)."""
import json

import pytest

from lib_cfg import bench
from lib_cfg.config import get_preset
from lib_cfg.model import count_parameters, create_unet_model


@pytest.mark.parametrize("preset, text_dim", [("quick", 384), ("lesson", 768)])
def test_diffusers_twin_has_the_same_size(preset, text_dim):
    config = get_preset(preset, device="cpu")
    ours = count_parameters(create_unet_model(config, text_embed_dim=text_dim, verbose=False))
    theirs = count_parameters(bench.diffusers_unet(config, text_dim))
    assert abs(theirs - ours) / ours < 0.02, (ours, theirs)


def test_bench_entry_point_writes_results(tmp_path, monkeypatch, data_dir):
    tiny = get_preset("ci", device="cpu", data_dir=data_dir, synthetic_size=600, batch_size=8)
    monkeypatch.setattr(bench, "get_preset", lambda name, **kw: tiny)  # the ci-sized model, for speed
    bench.main(["--quick", "--steps", "1", "--rounds", "1", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "none")])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["train_speedup_vs_diffusers"] > 0 and results["cfg_batched_speedup"] > 0
    assert set(results["machine"]) >= {"torch", "threads", "date"}
    assert results["text_cache"]["reencode_over_cache"] > 0
    assert "lib_cfg vs diffusers" in (tmp_path / "results.md").read_text()
