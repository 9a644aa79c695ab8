# Two commands set up everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ASA := $(VENV)/bin/asa
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, from the CPU build: otherwise pip pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(ASA) phantom --n 16 --out data/phantoms --seed 0
	rm -rf runs/demo  # the demo's own run: asa pretrain refuses to overwrite a run
	$(ASA) pretrain --preset cpu-demo --data data/phantoms --out runs/demo
	$(ASA) order-map data/phantoms/imagesTr/phantom_015.nii.gz --checkpoint runs/demo --out runs/demo/order-map

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/pretrain_step.py
	$(PY) bench/inference.py --out bench/results/inference_cpu.json

clean:
	rm -rf runs data .pytest_cache
