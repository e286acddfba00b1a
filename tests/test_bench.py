"""The benchmark's premises and outputs (not a speed claim: the numbers are in benchmarks/results.md)."""
import json
import os
import subprocess
from dataclasses import replace

import pytest
import torch

from lib_cfg import bench
from lib_cfg.config import get_preset
from lib_cfg.model import count_parameters, create_unet_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_bench_quick_reports_what_it_timed_and_keeps_the_full_results(tmp_path, monkeypatch, data_dir):
    tiny = get_preset("ci", device="cpu", data_dir=data_dir, synthetic_size=600, batch_size=8)
    monkeypatch.setattr(bench, "get_preset", lambda name, **kw: tiny)  # the ci-sized model, for speed
    full = '{"machine": {"date": "earlier"}, "train_speedup_vs_diffusers": 1.5}'
    (tmp_path / "results.json").write_text(full)
    bench.main(["--quick", "--steps", "2", "--rounds", "1", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "none")])
    assert (tmp_path / "results.json").read_text() == full  # --quick never replaces the full record
    results = json.loads((tmp_path / "results-quick.json").read_text())
    # One round each: the speedups are the ratios of the measured times, the right way round.
    train = results["train"]["quick"]
    ips = train["images_per_s"]
    # (both are rounded: the speedup to 3 decimals, images/s to 1)
    assert train["speedup"] == pytest.approx(ips["lib_cfg"] / ips["diffusers"], rel=0.02, abs=2e-3)
    assert train["steps_per_round"] == 2 and train["batch"] == 8
    cfg = results["cfg"]
    assert cfg["speedup"] == pytest.approx(cfg["s_per_image_step_two_passes"] / cfg["s_per_image_step_batched"], rel=1e-3)
    cache = results["text_cache"]
    assert cache["reencode_over_cache"] == pytest.approx(cache["step_s_reencoded"] / cache["step_s_cached"], rel=0.05)
    assert set(results["machine"]) >= {"torch", "threads", "date"} and results["machine"]["date"] != "earlier"
    report = (tmp_path / "results-quick.md").read_text()
    assert f"{ips['lib_cfg']} | {ips['diffusers']} | {train['speedup']}x" in report  # the table shows these numbers


def test_cfg_speed_compares_two_functions_that_agree():
    # The two contenders must compute the same eps, else the timing compares different work.
    config = get_preset("ci", device="cpu")
    torch.manual_seed(0)
    model = create_unet_model(config, "cpu", 384, verbose=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        x, t, te = torch.randn(4, 3, 16, 16), torch.full((4,), 500), torch.randn(4, 384)
        torch.testing.assert_close(bench.guided_eps(model, x, t, te, 3.0), bench.cfg_eps(model, x, t, te, 3.0),
                                   rtol=0, atol=1e-4)


def test_lesson_run_trains_from_the_prepared_caches_alone(tmp_path, monkeypatch):
    """What tools/gpu_bench.sh runs, at toy size: `make gpu-prep` (bench.prepare) decodes the images and encodes
    the captions with the 768-d stand-in; then a machine without `datasets` and `transformers` trains from them."""
    import sys

    from lib_cfg.config import get_preset as real_get_preset

    data_dir = str(tmp_path / "data")
    small = real_get_preset("lesson", data_dir=data_dir, model_channels=16, num_heads=2, device="cpu")
    monkeypatch.setattr(bench, "get_preset", lambda name, **kw: replace(small, **kw))
    config = bench.gpu_bench_config("cpu", data_dir)
    assert config.text_encoder.endswith("clip-text-768") and config.resolution == 32 and config.batch_size == 16
    bench.prepare(config)
    for name in ("datasets", "transformers"):
        monkeypatch.setitem(sys.modules, name, None)  # `import datasets` now fails: the caches must suffice
    r = bench.lesson_run(steps=6, device="cpu", warmup=2, data_dir=data_dir, variants=("eager",))
    eager = r["eager"]
    assert eager["steps"] == 6 and eager["images_per_s"] == pytest.approx(eager["steps_per_s"] * 16, rel=0.01)
    # 20 000 steps at the measured rate, plus this run's fixed cost (data, model, the last step's bookkeeping)
    assert eager["projected_20k_steps_s"] == pytest.approx(20000 / eager["steps_per_s"] + eager["setup_s"], abs=0.2)
    assert 0 < eager["last_loss"] < 2 and eager["precision"] == "fp32"


def test_gpu_bench_refuses_without_cuda_naming_it():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, on any machine
    out = subprocess.run(["bash", "tools/gpu_bench.sh", "5"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "CUDA" in out.stderr and "README" in out.stderr, out
