"""The README's commands: `make lab`, `make run` and `make test` exist, and `make test` does its own set-up
(Chromium for the browser test) or stops before the suite with the one line that says what to do."""
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "ensure_chromium.sh"


def _fake_bin(tmp_path, uid, chromium=False):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    if chromium:
        (bin_dir / "chromium").write_text("#!/bin/sh\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return str(bin_dir)


def test_without_chromium_and_without_root_make_test_stops_with_one_line(tmp_path):
    out = subprocess.run(["/bin/bash", str(SCRIPT)], env={"PATH": _fake_bin(tmp_path, 1000)},
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "apt-get install chromium" in out.stderr and out.stdout == ""


def test_with_chromium_on_the_path_nothing_is_installed(tmp_path):
    out = subprocess.run(["/bin/bash", str(SCRIPT)], env={"PATH": _fake_bin(tmp_path, 0, chromium=True)},
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == out.stderr == ""


def test_the_readme_starts_the_course_with_commands_the_makefile_has():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    first_screen = "\n".join(readme.splitlines()[:40])
    assert "make lab" in first_screen and "notebooks/01_" in first_screen
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    assert {"lab", "run", "test"} <= targets
    assert "ensure_chromium.sh" in (ROOT / "Makefile").read_text()
    for link in re.findall(r"\]\(((?:docs|notebooks)/[^)#]+)\)", readme):
        assert (ROOT / link).exists(), link
