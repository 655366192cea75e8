# mmsparse: `make test` and `make demo` do the whole set-up on a fresh machine (idempotent).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
# Built mmcv wheels, one folder per torch version, CUDA flavour (or cpu) and Python tag, so a
# re-install takes seconds and a wheel is never reused on another build (tools/misc/build_mmcv.py).
WHEEL_CACHE ?= $(HOME)/.cache/pip/mmsparse-wheels
# mmcv's ops: auto (CUDA ops when torch sees a GPU and nvcc matches torch's CUDA), cpu or cuda.
MMSPARSE_MMCV ?= auto
export MMSPARSE_MMCV
# Another torch flavour for older drivers, e.g. https://download.pytorch.org/whl/cu126
TORCH_INDEX_URL ?=
# Real data root (Fashion-MNIST, VOC samples); configs read the same variable.
MMSPARSE_DATA ?= $(CURDIR)/data
export MMSPARSE_DATA
export PIP_CONSTRAINT := $(CURDIR)/$(CONSTRAINTS)
# The venv's bin holds mpirun (Open MPI from PyPI), which torchpack needs on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

STAMP := $(VENV)/.mmsparse-installed

.PHONY: install data test demo clean-venv

install: $(STAMP) data

$(STAMP): requirements/*.txt setup.py
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PIP) install -q -U -r requirements/build.txt
	$(PIP) install -q -r requirements/torch.txt \
	  $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL) --extra-index-url https://pypi.org/simple)
	$(PIP) install -q mmengine psutil
	$(PY) tools/misc/build_mmcv.py --cache $(WHEEL_CACHE) --check
	$(PIP) install -q -r requirements/runtime.txt -r requirements/det.txt -r requirements/seg.txt \
	  -r requirements/mpi.txt -r requirements/tests.txt
	$(PIP) install -q --no-build-isolation --no-deps -e .
	$(PIP) check
	$(PY) -c "import mmdet, mmseg, mmpretrain, mmsparse"
	@touch $@

# Debian packages where apt is available, then unpacked into $(MMSPARSE_DATA).
data: $(STAMP)
	@if ! [ -d /usr/share/datasets/fashion-mnist ] || ! [ -d /usr/share/doc/labelme-examples/examples ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist labelme-examples >/dev/null; \
	  else echo "apt-get not usable here: install dataset-fashion-mnist and labelme-examples yourself (see README, Data)"; fi; \
	fi
	$(PY) tools/prepare_data.py --out $(MMSPARSE_DATA)

test: install
	$(PY) -m pytest -q tests

demo: install
	$(PY) tools/demo.py

clean-venv:
	rm -rf $(VENV)
