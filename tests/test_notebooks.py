"""The course as its own source: each stored notebook is in sync with its jupytext pair, shows library code
whole (and the code it shows is the library's current code), and ends as a lesson should.

These read the stored, executed notebooks (what a learner opens); nbval runs them (`make test`)."""
import ast
import importlib
import inspect
import json
import re
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
IPYNBS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def test_every_notebook_has_its_pair_and_nothing_else_is_there():
    assert len(IPYNBS) >= 5
    assert {p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.py")} == {p.stem for p in IPYNBS}


@pytest.mark.parametrize("path", IPYNBS, ids=lambda p: p.stem)
def test_pair_in_sync(path):
    """The .py (reviewed in diffs) and the .ipynb (stored executed) hold the same cells, in the same order."""
    stored = jupytext.read(path)
    source = jupytext.read(path.with_suffix(".py"))

    def cells(nb):
        return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]

    assert cells(stored) == cells(source), (
        f"{path.name} and {path.with_suffix('.py').name} differ: run `jupytext --sync {path}` "
        "(or edit in Jupyter, which saves both)")


def _parse(code: str) -> ast.Module:
    """A code cell as Python (IPython magics such as %%time dropped)."""
    return ast.parse("\n".join(l for l in code.splitlines() if not l.lstrip().startswith("%")))


def _imports(nb):
    """{name: object} for every `from lib_cfg... import name` in the notebook's code cells."""
    names = {}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for node in ast.walk(_parse("".join(cell["source"]))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lib_cfg"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    names[alias.asname or alias.name] = getattr(module, alias.name)
    return names


def _resolve(expr: ast.expr, names):
    if isinstance(expr, ast.Name):
        return names[expr.id]
    if isinstance(expr, ast.Attribute):
        return getattr(_resolve(expr.value, names), expr.attr)
    raise AssertionError(f"show() takes names of library objects, got {ast.unparse(expr)}")


def _show_calls(code: str):
    return [n for n in ast.walk(_parse(code)) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "show"]


def _stdout(cell) -> str:
    return "".join("".join(o["text"]) for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def shown_source_problems(nb) -> list:
    """Why any cell that shows library source is wrong: it prints nothing, prints other code than the
    objects it names (or an older version of them), or the prose before it does not name them."""
    names, problems, prose = _imports(nb), [], ""
    for i, cell in enumerate(nb["cells"]):
        code = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            prose = code
            continue
        if "getsource" in code:
            problems.append(f"cell {i}: slices inspect.getsource; show whole objects with lib_cfg.notebook.show")
        for call in _show_calls(code):
            objects = [_resolve(a, names) for a in call.args]
            expected = "".join(inspect.getsource(o) + "\n" for o in objects)
            printed = _stdout(cell)
            if not printed.strip():
                problems.append(f"cell {i}: shows {ast.unparse(call)} but its stored output is empty")
            elif printed != expected:
                problems.append(f"cell {i}: the stored output of {ast.unparse(call)} is not that code as it is now")
            for a in call.args:
                name = ast.unparse(a).split(".")[-1]
                if f"`{name}`" not in prose and f"`{ast.unparse(a)}`" not in prose:
                    problems.append(f"cell {i}: the prose before it does not name `{name}`")
    return problems


@pytest.mark.parametrize("path", IPYNBS, ids=lambda p: p.stem)
def test_shown_library_source_is_whole_current_and_named(path):
    nb = json.loads(path.read_text())
    assert shown_source_problems(nb) == []


def test_the_source_check_catches_an_emptied_cell():
    nb = json.loads((NOTEBOOKS / "03_cfg_training.ipynb").read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and _show_calls("".join(c["source"])))
    assert shown_source_problems(nb) == []
    cell["outputs"] = []
    assert any("empty" in p for p in shown_source_problems(nb))


@pytest.mark.parametrize("path", IPYNBS, ids=lambda p: p.stem)
def test_opens_with_a_goal_and_ends_with_summary_exercises_and_next_step(path):
    cells = json.loads(path.read_text())["cells"]
    markdown = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    assert markdown[0].startswith("# ") and "**Goal" in markdown[0], "the first cell states the notebook's goal"
    text = "\n".join(markdown)
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert "Summary" in headings and "Exercises" in headings
    assert headings.index("Summary") < headings.index("Exercises")
    exercises = text[text.index("## Exercises"):]
    assert len(re.findall(r"^\d+\. ", exercises, flags=re.M)) >= 3, "at least three exercises"
    assert exercises.count("*Check:*") >= 3, "each exercise says how to check the answer"
    number = int(path.name[:2])
    following = [p.name for p in IPYNBS if int(p.name[:2]) == number + 1]
    if following:
        assert f"({following[0]})" in exercises, f"ends with a link to {following[0]}"


@pytest.mark.parametrize("path", IPYNBS, ids=lambda p: p.stem)
def test_cells_that_judge_say_so_in_python(path):
    """A cell that needs a labelled dataset's labels (the judge, the fidelity features, the attribute
    classifier) runs under a visible `if has_attributes(config):`, and the working directory changes in a
    cell the learner sees."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    needs = re.compile(r"\b(judge|Fidelity|tradeoff|adherence_sweep|classifier_adherence_sweep|train_classifier)\(")
    for i, cell in enumerate(cells):
        code = "".join(cell["source"])
        assert not code.lstrip().startswith("# synthetic data only"), f"code cell {i}: an old marker comment"
        # 05's comparison always trains on the coloured-background shapes (`backgrounds=True`): labelled everywhere
        if needs.search(code) and "def " not in code and "backgrounds=True" not in code:
            assert "if has_attributes(config)" in code, f"code cell {i} needs the labels but does not check for them"
    setup_cell = next("".join(c["source"]) for c in cells if re.search(r"\bsetup\(.*PRESET", "".join(c["source"])))
    assert "os.chdir(ROOT)" in setup_cell


def misaligned_tables(nb) -> list:
    """Printed tables whose rows put a column bar '|' where the header has none: (cell index, header, row).
    A table is two or more consecutive printed lines that contain '|'."""
    problems = []
    for i, cell in enumerate(nb["cells"]):
        group = []
        for line in _stdout(cell).split("\n") + [""]:
            if "|" in line:
                group.append(line)
                continue
            if len(group) >= 2:
                header = {k for k, ch in enumerate(group[0]) if ch == "|"}
                problems += [(i, group[0], row) for row in group[1:]
                             if not {k for k, ch in enumerate(row) if ch == "|"} <= header]
            group = []
    return problems


@pytest.mark.parametrize("path", IPYNBS, ids=lambda p: p.stem)
def test_stored_tables_put_each_column_under_its_header(path):
    problems = misaligned_tables(json.load(open(path)))
    assert not problems, "\n".join(f"cell {i}:\n  {h}\n  {r}" for i, h, r in problems[:3])


def test_the_table_check_catches_a_header_narrower_than_its_data():
    cell = {"outputs": [{"output_type": "stream", "name": "stdout",
                         "text": ["method |  s = 1  |\n", "cfg    |  77.8%  1.11px |\n"]}]}
    assert len(misaligned_tables({"cells": [cell]})) == 1


# The cells a learner writes, the lesson's pieces and the exercises to complete: each defines its function or class
# with a stub that raises NotImplementedError, and the next cell, collapsed and tagged `solution`, holds the worked
# answer. (04's and 07's exercises compute values, not functions: their stubs set them to None.)
WRITE_IT = {"01_classifier_guidance": ["my_classifier_guided_eps", "low_noise_eps"], "02_text_encoder": ["cosine"],
            "03_cfg_training": ["TextConditioning", "lesson_training_step", "min_snr_training_step"],
            "04_guidance_sampling": ["my_cfg_eps"], "05_conditioning_architectures": ["my_rescale"],
            "06_guidance_methods": ["auto_plus_cfg"]}


@pytest.mark.parametrize("stem, names", WRITE_IT.items())
def test_write_it_cells_are_empty_with_the_answer_collapsed_after_them(stem, names):
    cells = json.load(open(NOTEBOOKS / f"{stem}.ipynb"))["cells"]
    for name in names:
        defining = [i for i, c in enumerate(cells) if c["cell_type"] == "code"
                    and re.search(rf"^(def|class) {name}\b", "".join(c["source"]), re.M)]
        stub, answer = defining[0], defining[1]
        assert "NotImplementedError" in "".join(cells[stub]["source"]), (stem, name)
        assert "solution" not in cells[stub]["metadata"].get("tags", [])
        assert answer == stub + 1 and "solution" in cells[answer]["metadata"].get("tags", []), (stem, name)
        assert cells[answer]["metadata"].get("jupyter", {}).get("source_hidden"), (stem, name)
        assert "NotImplementedError" not in "".join(cells[answer]["source"])


@pytest.mark.parametrize("path", IPYNBS, ids=lambda p: p.stem)
def test_checked_cells_store_no_warnings(path):
    """nbval compares a checked cell's stderr too, and a warning there names this machine's path: CI fails."""
    cells = json.load(open(path))["cells"]
    noisy = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and "NBVAL_CHECK_OUTPUT" in "".join(c["source"])
             and any(o.get("name") == "stderr" for o in c.get("outputs", []))]
    assert not noisy, f"{path.name}: checked cells {noisy} store stderr output"
