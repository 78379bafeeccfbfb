# make install: .venv with vidfeat (editable), torch/torchvision, ffmpeg if missing. Idempotent.
# make demo:    install, make a sample corpus with ffmpeg, extract it, inspect the store.
# make test:    install, then the whole test suite (slow end-to-end tests included; CI).
# make test-fast: the edit loop: every test not marked slow (a few minutes on 2 cores).
# make docs:    the documentation site into site/ (`mkdocs serve` to browse it while editing).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo

.PHONY: install demo test test-fast docs lint clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@bash scripts/install_system_packages.sh $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

demo: install
	FFMPEG=$$($(BIN)/python -c "from vidfeat.media.tools import executable; print(executable('ffmpeg'))") \
		bash scripts/make_sample_corpus.sh $(DEMO)/corpus
	@if $(BIN)/python -m vidfeat.pretrained_available resnet152 c3d vggish; then \
		WEIGHTS=""; \
	else \
		echo; echo "!!! Pretrained weights are not in the cache (see 'vidfeat weights list')."; \
		echo "!!! Running with --random-weights: the demo features are NOT real features."; echo; \
		WEIGHTS="--random-weights"; \
	fi; \
	$(BIN)/vidfeat extract $(DEMO)/corpus --store $(DEMO)/store --workers 2 $$WEIGHTS; \
	status=$$?; $(BIN)/vidfeat inspect $(DEMO)/store; exit $$status

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

docs: install
	$(BIN)/mkdocs build --strict

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(DEMO) .pytest_cache site
