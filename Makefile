# Entry points for a fresh machine: `make demo` (the main job), `make test` (the whole suite) and
# `make test-fast` (the inner loop: lint and every test not marked slow, under 2 minutes on 2 cores).
# Each creates .venv when missing. torch is pinned and installed with pip first, so that pip takes
# the wheels these machines cache locally instead of downloading a CUDA build. The demo installs only
# what it runs; the tests add the [test] extra (ruff, pytest, Ray, datasets, sentence-transformers)
# on top. Each install happens once: a stamp file in .venv records it, redone when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n 2

.PHONY: install demo test test-fast lint ship-models ship-backbones

$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e .
	touch $(DEMO_STAMP)

$(TEST_STAMP): $(DEMO_STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(TEST_STAMP)

install: $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/protosynth distill --budget 500 --force
	$(BIN)/protosynth distill --budget 500 --method pds --force

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(PYTEST) tests

test-fast: lint
	$(PYTEST) -m "not slow" tests

# Copy a `protosynth models train` output into the package as the shipped default models
# (weights, configs, metrics and provenance; never the resumable checkpoints).
MODELS ?= runs/world
ship-models:
	rm -rf protosynth/weights/world/clip protosynth/weights/world/decoder && mkdir -p protosynth/weights/world/clip
	cp $(MODELS)/clip/open_clip_config.json $(MODELS)/clip/open_clip_model.safetensors \
	   $(MODELS)/clip/bpe_merges.txt.gz $(MODELS)/clip/metrics.json protosynth/weights/world/clip/
	cp -r $(MODELS)/decoder protosynth/weights/world/decoder
	cp $(MODELS)/metrics.json $(MODELS)/provenance.json protosynth/weights/world/

# Copy backbones written by `protosynth models pretrain-backbone --out $(BACKBONES)/ARCH` into the
# package (one folder per architecture: config, weights, metrics, provenance).
BACKBONES ?= runs/backbones
ship-backbones:
	for d in $(BACKBONES)/ps-*; do a=$$(basename $$d); rm -rf protosynth/weights/world/backbones/$$a; \
	  mkdir -p protosynth/weights/world/backbones/$$a; \
	  cp $$d/config.json $$d/model.safetensors $$d/metrics.json $$d/provenance.json protosynth/weights/world/backbones/$$a/; done
