# One place that installs everything semlic needs on a fresh Debian machine with Python 3.11.
# `make test` installs and runs the test suite; `make repro` installs and runs the main job
# (`dvc repro` of the whole study on the builtin offline default).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
# torch and torchvision are pinned to one matching pair; pip's own configuration decides
# where the wheels come from (a local wheel directory where the machine has one, else PyPI).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export OMP_NUM_THREADS ?= 2

.PHONY: install test repro bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PINS)
	$(PIP) install --quiet -e '.[pipeline,report,dev]' $(TORCH_PINS)
	touch $@

install: $(VENV)/.installed

test: install
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q -ra

# The stages run `python -m flows.<stage>`: the virtualenv goes first on PATH.
repro: install
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro

clean:
	rm -rf $(VENV) runs .pytest_cache
