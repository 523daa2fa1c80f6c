# `make demo` and `make test` set everything up on a fresh machine.
PY      := .venv/bin/python
VENV_OK := .venv/.installed
FMNIST  ?= $(or $(FMNIST_DIR),/usr/share/datasets/fashion-mnist)
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PYTEST_ARGS ?=

.PHONY: venv data chromium test demo bench docs lint clean

venv: $(VENV_OK)

# Re-installs only when the dependency pins change; a second `make test` reuses the venv.
$(VENV_OK): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,serve]'
	@$(PY) -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" \
	  || { echo "ERROR: torchvision does not import over this torch build; see constraints.txt" >&2; exit 1; }
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist package (installed when we are root).
data:
	@if ls $(FMNIST)/*train-images* >/dev/null 2>&1; then echo "Fashion-MNIST: $(FMNIST)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) \
	  && echo "Fashion-MNIST installed in $(FMNIST)"; \
	else echo "WARNING: Fashion-MNIST missing; run 'sudo apt-get install dataset-fashion-mnist'" >&2; fi

# Debian's headless chromium, for the web demo's browser test and screenshot (installed when we are root).
chromium:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) \
	  && echo "chromium installed: $$(command -v chromium)"; \
	else echo "WARNING: chromium missing, so the web demo's browser test is skipped; run 'sudo apt-get install chromium'" >&2; fi

test: venv data chromium
	$(OFFLINE) $(PY) -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS)

demo: venv data
	$(OFFLINE) .venv/bin/vqgen pipeline --config configs/fashion-mnist.yaml --out runs/demo

bench: venv data
	$(OFFLINE) $(PY) -m bench.run_all

# The README's screenshot of `vqgen serve` on the demo run (make demo first).
docs: venv chromium
	$(OFFLINE) $(PY) -m bench.serve --screenshot docs/serve.png

lint: venv
	.venv/bin/ruff check .

clean:
	rm -rf .venv runs .pytest_cache .ruff_cache
