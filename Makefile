# mmsparse: `make test` and `make demo` do the whole set-up on a fresh machine (idempotent).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
# mmcv's compiled wheel is kept here so a re-install takes seconds instead of ~6 minutes.
WHEEL_CACHE ?= $(HOME)/.cache/pip/mmsparse-wheels
# Real data root (Fashion-MNIST, VOC samples); configs read the same variable.
MMSPARSE_DATA ?= $(CURDIR)/data
export MMSPARSE_DATA
export PIP_CONSTRAINT := $(CURDIR)/$(CONSTRAINTS)
# The venv's bin holds mpirun (Open MPI from PyPI), which torchpack needs on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

MMCV_WHEEL_GLOB := $(WHEEL_CACHE)/mmcv-2.1.0-*.whl
STAMP := $(VENV)/.mmsparse-installed

.PHONY: install data test demo clean-venv

install: $(STAMP) data

$(STAMP): requirements/*.txt setup.py
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PIP) install -q -U -r requirements/build.txt
	$(PIP) install -q -r requirements/torch.txt
	$(PIP) install -q mmengine==0.10.7 psutil
	@if ! ls $(MMCV_WHEEL_GLOB) >/dev/null 2>&1; then \
	  echo "building mmcv 2.1.0 with its ops (once, ~6 min on 2 cores) into $(WHEEL_CACHE)"; \
	  mkdir -p $(WHEEL_CACHE); \
	  MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=$${MAX_JOBS:-2} CFLAGS="-DNDEBUG -fwrapv -O3 -g0" \
	    $(PIP) wheel -q --no-build-isolation --no-deps -w $(WHEEL_CACHE) mmcv==2.1.0; \
	fi
	$(PIP) install -q $$(ls $(MMCV_WHEEL_GLOB) | head -n 1)
	$(PIP) install -q -r requirements/runtime.txt -r requirements/tests.txt
	$(PIP) install -q --no-build-isolation --no-deps -e .
	$(PY) -c "from mmcv.ops import nms, RoIAlign; import mmdet, mmseg, mmpretrain, mmsparse"
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
