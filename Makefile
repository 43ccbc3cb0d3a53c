# faceparse: `make demo` runs the main job, `make test` runs the tests. Each installs what it needs.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TEST_EXTRAS := dev,onnx,clip,sam,examples,docs,hub,hf,s3pot-ref
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install install-test demo test test-all lint format docs

# Installs the package (editable) with its dependencies unless they are already importable.
install:
	@$(PYTHON) -c "import importlib.metadata as m; m.version('faceparse'); import torch, torchvision, timm, segmentation_models_pytorch, albumentations, pytorch_lightning, torchmetrics, safetensors, cv2, jsonargparse, h5py, skimage, torchdata" 2>/dev/null \
	  || $(PIP) install -e .

install-test:
	@$(PYTHON) -c "import importlib.metadata as m; m.version('faceparse'); import torch, torchvision, timm, segmentation_models_pytorch, pytest, hypothesis, onnx, onnxruntime, open_clip, segment_anything, skimage, h5py, mkdocs, mkdocstrings, torchdata, huggingface_hub, transformers, diffusers, xdist" 2>/dev/null \
	  || $(PIP) install -e ".[$(TEST_EXTRAS)]"

demo: install
	$(PYTHON) -m faceparse.cli demo --out-dir demo_output

# Two pytest-xdist workers (one torch thread each, tests/conftest.py), whole files per worker so
# module fixtures are built once; PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= auto
test: install-test
	$(PYTHON) -m pytest -q -n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadfile

test-all: install-test
	$(PYTHON) -m pytest -q -m "slow or not slow"

lint: install-test
	$(PYTHON) -m ruff check faceparse tests benchmarks
	$(PYTHON) -m ruff format --check faceparse tests benchmarks

format:
	$(PYTHON) -m ruff format faceparse tests benchmarks
	$(PYTHON) -m ruff check --fix faceparse tests benchmarks

# Builds the documentation site into site/ (offline; installs the docs extra if needed).
docs: install
	@$(PYTHON) -c "import mkdocs, mkdocstrings" 2>/dev/null || $(PIP) install -e ".[docs]"
	$(PYTHON) -m mkdocs build --strict -d site
