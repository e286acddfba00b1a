"""TrainingConfig validation, presets, and the command line."""
import json
import os
import subprocess
import sys

import pytest

from lib_cfg.cli import main, parse_overrides
from lib_cfg.config import PRESETS, TrainingConfig, get_preset, resolve_device


def test_presets():
    lesson = PRESETS["lesson"]
    assert (lesson.dataset, lesson.caption_column, lesson.text_encoder) == \
        ("reese-green/afhq64_captions_64k", "caption_blip2-opt-2.7b", "openai/clip-vit-large-patch14")
    assert (lesson.resolution, lesson.batch_size, lesson.max_steps, lesson.device) == (32, 16, 20000, "cuda")
    assert PRESETS["quick"].dataset == "synthetic-shapes" and PRESETS["quick"].text_encoder == "all-MiniLM-L6-v2"
    assert PRESETS["ci"].max_steps < PRESETS["quick"].max_steps
    assert get_preset("quick", batch_size=32).batch_size == 32


def test_config_json_round_trip():
    c = get_preset("lesson")
    assert TrainingConfig.from_dict(json.loads(c.to_json())) == c


@pytest.mark.parametrize("field, value", [("max_steps", -5), ("text_drop_prob", 1.5), ("text_drop_prob", -0.1),
                                          ("resolution", 18), ("guidance_scale", float("nan")),
                                          ("batch_size", 0), ("learning_rate", 0.0), ("lr_schedule", "linear")])
def test_bad_values_are_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainingConfig.{field}="):
        get_preset("quick", **{field: value})


def test_unknown_preset_and_field_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"valid presets: \['animal-faces', 'animal-faces-ci', 'ci', 'lesson', 'lesson-smoke', 'quick'\]"):
        get_preset("fast")
    with pytest.raises(ValueError, match="valid fields:.*batch_size"):
        get_preset("quick", batchsize=3)


def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    import torch

    for cuda, mps, expected in [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        assert resolve_device("auto") == expected
    with pytest.raises(RuntimeError, match="CUDA is not available.*--device auto"):
        resolve_device("cuda")


def test_override_parsing_uses_field_types():
    o = parse_overrides(["--batch_size", "32", "--learning_rate=3e-4", "--channel_mult", "1,2,4",
                         "--dataset", "my/data"])
    assert o == {"batch_size": 32, "learning_rate": 3e-4, "channel_mult": (1, 2, 4), "dataset": "my/data"}
    with pytest.raises(SystemExit, match="unknown option --batchsize.*--batch_size"):
        parse_overrides(["--batchsize", "32"])
    with pytest.raises(SystemExit, match="expects int"):
        parse_overrides(["--batch_size", "many"])
    assert parse_overrides(["--compile", "true"]) == {"compile": True}
    assert parse_overrides(["--compile=0"]) == {"compile": False}
    with pytest.raises(SystemExit, match="--compile expects bool, got 'maybe'"):
        parse_overrides(["--compile", "maybe"])


def test_cli_rejects_bad_values_with_the_field_named(capsys):
    assert main(["train", "--preset", "ci", "--text_drop_prob", "2"]) == 2
    assert "TrainingConfig.text_drop_prob=2.0" in capsys.readouterr().err


def test_cli_refuses_to_overwrite_a_checkpoint(ci_run):
    _, _, ckpt = ci_run
    with pytest.raises(SystemExit, match="already holds a checkpoint.*--resume"):
        main(["train", "--preset", "ci", "--checkpoint_dir", ckpt])


def test_cli_sample_writes_a_grid(ci_run, tmp_path, capsys):
    _, _, ckpt = ci_run
    out = str(tmp_path / "grid.png")
    assert main(["sample", "--checkpoint", ckpt, "--prompt", "a red circle on a black background",
                 "--prompt", "a blue square on a black background", "--scales", "0", "3", "--steps", "5",
                 "--out", out]) == 0
    assert os.path.getsize(out) > 1000 and "2 prompts x 2 guidance scales" in capsys.readouterr().out


def test_cli_evaluate_json(ci_run, capsys):
    _, _, ckpt = ci_run
    assert main(["evaluate", "--checkpoint", ckpt, "--scales", "0", "3", "--steps", "5", "--n_per_prompt", "1",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"0", "3"}
    assert set(result["3"]) == {"color", "shape", "all", "fid", "speckle", "fid_real", "speckle_real"}
    assert all(0 <= acc[k] <= 1 for acc in result.values() for k in ("color", "shape", "all"))
    # fidelity: a distance and a pixel-noise level, both positive; the floor is the same at every scale
    assert all(acc["fid"] > 0 and 0 < acc["speckle"] < 1 for acc in result.values())
    assert result["0"]["fid_real"] == result["3"]["fid_real"] and result["3"]["speckle_real"] < 0.02


def test_cli_evaluate_with_each_guidance_method_keeps_the_json_format(ci_run, capsys):
    _, _, ckpt = ci_run
    common = ["evaluate", "--checkpoint", ckpt, "--scales", "1", "4", "--steps", "5", "--n_per_prompt", "1", "--json"]
    runs = {"cfg": [], "apg": ["--apg_momentum", "-0.5", "--apg_norm_threshold", "15"],
            "cfg-zero-star": ["--zero_init_steps", "1"], "autoguidance": ["--guide_checkpoint", ckpt]}
    results = {}
    for method, options in runs.items():
        assert main(common + ["--guidance", method] + options) == 0, capsys.readouterr().err
        results[method] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert set(results[method]) == {"1", "4"} and {"color", "shape", "all", "fid"} <= set(results[method]["4"])
    # s = 1 is the conditional model under every method but zero-init, which changes the first step
    assert results["apg"]["1"] == results["autoguidance"]["1"] == results["cfg"]["1"]
    # the model guiding itself: eps_bad = eps_cond, so s does nothing
    assert results["autoguidance"]["4"] == results["cfg"]["1"]


def test_cli_guidance_errors_are_one_line(ci_run, capsys):
    _, _, ckpt = ci_run
    assert main(["evaluate", "--checkpoint", ckpt, "--guidance", "autoguidance"]) == 2
    assert "--guide_checkpoint" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", ckpt, "--guidance", "apg", "--negative_prompt", "a red circle",
                 "--steps", "2", "--out", "/dev/null"]) == 2
    assert "no negative prompt or guidance rescale" in capsys.readouterr().err


def test_cli_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_cli_rejects_a_nan_guidance_scale(ci_run, capsys):
    _, _, ckpt = ci_run
    assert main(["sample", "--checkpoint", ckpt, "--scales", "nan", "--steps", "2", "--out", "/dev/null"]) == 2
    assert "guidance_scale must be a finite number" in capsys.readouterr().err


def test_lib_cfg_console_script_is_the_same_cli():
    # pyproject.toml declares it; `pip install -e .` (make) puts it beside this environment's python.
    script = os.path.join(os.path.dirname(sys.executable), "lib-cfg")
    assert os.path.exists(script), f"{script} missing: pip install -e . (make does)"
    theirs = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    ours = subprocess.run([sys.executable, "-m", "lib_cfg", "--help"], capture_output=True, text=True, timeout=120)
    assert theirs.returncode == ours.returncode == 0, theirs.stderr
    assert theirs.stdout == ours.stdout and "{train,sample,evaluate}" in ours.stdout
    bad = subprocess.run([script, "train", "--text_drop_prob", "2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "TrainingConfig.text_drop_prob=2.0" in bad.stderr


def test_cli_eta_needs_the_ddim_sampler(ci_run, capsys):
    _, _, ckpt = ci_run
    common = ["evaluate", "--checkpoint", ckpt, "--scales", "3", "--steps", "5", "--n_per_prompt", "1", "--json"]
    with pytest.raises(SystemExit, match="--eta sets the DDIM sampler's noise.*--sampler ddim"):
        main(common + ["--eta", "0.5"])
    runs = {}
    for name, options in {"ddim": ["--sampler", "ddim"], "ddim eta 1": ["--sampler", "ddim", "--eta", "1"],
                          "default": []}.items():
        assert main(common + options) == 0
        runs[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["3"]
    # the ci preset samples with DDPM by default; DDIM with eta 1 is the same step with the same noise
    assert runs["ddim"] != runs["default"] and runs["ddim eta 1"]["speckle"] == pytest.approx(runs["default"]["speckle"], rel=1e-3)


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU that /proc/cpuinfo says has AVX512-BF16, whatever this machine has; no cap set."""
    from lib_cfg import config
    monkeypatch.setattr(config, "_cpu_flags", lambda: "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    config.cpu_has_native_bf16.cache_clear()
    yield config
    config.cpu_has_native_bf16.cache_clear()  # before monkeypatch restores the real flags


@pytest.mark.parametrize("name,value", [("ONEDNN_MAX_CPU_ISA", "AVX2"), ("ONEDNN_MAX_CPU_ISA", "avx2_vnni"),
                                        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI"), ("DNNL_MAX_CPU_ISA", "avx512_core")])
def test_a_cap_below_bf16_means_fp32_on_a_bf16_cpu(bf16_cpu, monkeypatch, name, value):
    """Imitating an AVX2-only CPU this way must make mixed_precision="auto" train in fp32."""
    monkeypatch.setenv(name, value)
    assert not bf16_cpu.cpu_has_native_bf16()
    assert not bf16_cpu.use_bf16("cpu", "auto")
    assert bf16_cpu.use_bf16("cpu", "bf16")  # asking for bf16 outright still gets it


@pytest.mark.parametrize("value", ["ALL", "", "AVX512_CORE_BF16", "avx512_core_fp16", "AVX10_1_512", "AVX512_CORE_AMX"])
def test_no_cap_or_a_cap_with_bf16_keeps_bf16(bf16_cpu, monkeypatch, value):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", value)
    assert bf16_cpu.cpu_has_native_bf16()
    assert bf16_cpu.use_bf16("cpu", "auto")


def test_a_cpu_without_bf16_flags_gets_fp32(bf16_cpu, monkeypatch):
    monkeypatch.setattr(bf16_cpu, "_cpu_flags", lambda: "flags\t\t: fpu avx2 fma\n")
    assert not bf16_cpu.cpu_has_native_bf16()
