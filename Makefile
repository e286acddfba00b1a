# On a fresh machine with python3:
#   make lab    creates .venv and opens JupyterLab on notebooks/ (the course)
#   make run    creates .venv, trains the `quick` preset offline on the CPU, writes the
#               guidance-scale grid and prints the adherence table (PRESET=animal-faces: the emoji faces)
#   make test   the test suite (what CI runs through .ci/run); installs Chromium first where it can
PY := .venv/bin/python
PRESET := quick
CKPT := checkpoints/$(PRESET)
SCALES := $(if $(filter animal-faces,$(PRESET)),0 1 3 7.5,0 1 3 5 7.5)
GRID := samples/$(if $(filter quick,$(PRESET)),guidance_grid.png,$(PRESET)-guidance_grid.png)
N_PER_PROMPT := $(if $(filter animal-faces,$(PRESET)),2,6)

.PHONY: lab run train grid evaluate test notebooks bench bench-quick gpu-prep clean-generated emoji-font

.venv/.installed: requirements.txt pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $@

# The animal faces' second art style (Noto Color Emoji): installed where it can be, else one line and Twemoji alone.
emoji-font:
	@bash tools/ensure_emoji_font.sh

run: .venv/.installed emoji-font train grid evaluate

lab: .venv/.installed emoji-font
	$(PY) -m jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

# PRESET=animal-faces: the emoji animal faces instead of the shapes (make run PRESET=animal-faces).
# Resumes the run if one was interrupted (or skips ahead if it already finished).
train: .venv/.installed
	@if [ -f $(CKPT)/latest ]; then $(PY) -m lib_cfg train --resume $(CKPT); \
	else $(PY) -m lib_cfg train --preset $(PRESET) --checkpoint_dir $(CKPT); fi

grid: .venv/.installed
	$(PY) -m lib_cfg sample --checkpoint $(CKPT) --scales $(SCALES) --out $(GRID)

evaluate: .venv/.installed
	$(PY) -m lib_cfg evaluate --checkpoint $(CKPT) --scales $(SCALES) --n_per_prompt $(N_PER_PROMPT)

# The unit tests, then every notebook from a fresh kernel on the short `ci` preset (nbval).
test: .venv/.installed emoji-font
	@bash tools/ensure_chromium.sh
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LIB_CFG_PRESET=ci \
		$(PY) -m pytest -q -p no:cacheprovider tests notebooks --nbval-lax --nbval-cell-timeout=600 --durations=10

# Execute the notebooks top to bottom on the `quick` preset and store them with their outputs (03 first, so
# its stored outputs show the training; delete checkpoints/quick-course, checkpoints/compare-bg-* and
# checkpoints/animal-faces to retrain).
# Each notebooks/NN_*.py is the source of its .ipynb (jupytext): sync them first, in case one was edited alone.
notebooks: .venv/.installed emoji-font
	$(PY) -m jupytext --sync notebooks/[0-9][0-9]_*.ipynb
	for nb in notebooks/03_*.ipynb notebooks/01_*.ipynb notebooks/02_*.ipynb notebooks/04_*.ipynb notebooks/05_*.ipynb notebooks/06_*.ipynb notebooks/07_*.ipynb; do \
		HF_HUB_OFFLINE=1 LIB_CFG_PRESET=quick $(PY) -m jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=1800 "$$nb" || exit 1; done

# Benchmarks on this machine -> benchmarks/results.md and .json (the sampler table needs `make train` first).
bench: .venv/.installed
	$(PY) -m lib_cfg.bench

bench-quick: .venv/.installed
	$(PY) -m lib_cfg.bench --quick

# For a CUDA machine without internet: decode the images and encode the captions tools/gpu_bench.sh trains on
# into data/image_cache and data/text_cache (the offline stand-ins; LESSON=1: also the lesson's AFHQ captions and
# CLIP, from the hub), then copy the repository with data/ and there run `bash tools/gpu_bench.sh`.
gpu-prep: .venv/.installed
	HF_HUB_OFFLINE=$(if $(filter 1,$(LESSON)),0,1) $(PY) -m lib_cfg.bench --prepare $(if $(filter 1,$(LESSON)),--lesson,)

clean-generated:
	rm -rf data/synthetic-* data/text_cache data/image_cache data/lesson-smoke checkpoints/quick checkpoints/quick-course checkpoints/quick-course-* checkpoints/ci checkpoints/lesson-smoke checkpoints/compare-bg-* checkpoints/animal-faces* data/animal-faces* data/fidelity samples
