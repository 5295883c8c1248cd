# Two commands do all the set-up:  make reproduce  |  make test
# Each creates .venv and installs the pinned environment on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jkt-installed

.PHONY: reproduce test setup data clean-venv

setup: $(STAMP) data

$(STAMP): pyproject.toml jkt/kernels.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	$(PY) -c "import jkt.kernels; jkt.kernels.install()"
	touch $(STAMP)

# Fashion-MNIST, offline first: Debian's package when we are root with apt, else torchvision's download.
data: $(STAMP)
	@if ! $(PY) -m jkt data fashion-mnist >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null \
	      || echo "apt could not install dataset-fashion-mnist; trying a download"; \
	  fi; \
	  $(PY) -m jkt data fashion-mnist --download; \
	fi

reproduce: setup
	$(PY) -m jkt reproduce --profile cpu

# Unit tests, then every notebook headless in the smoke profile.
test: setup
	OMP_NUM_THREADS=1 JKT_PROFILE=smoke JKT_PROGRESS=0 JKT_FIGURES=runs/test-figures $(PY) -m pytest -q -p no:cacheprovider tests --nbval-lax notebooks

clean-venv:
	rm -rf $(VENV)

.PHONY: lab book

# JupyterLab on the project's environment, on this machine only (127.0.0.1): open the URL it prints.
LAB_PORT ?= 8888
lab: $(STAMP)
	$(PY) -m jupyterlab --ServerApp.open_browser=False --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) \
	  --ServerApp.root_dir="$(CURDIR)" --FileContentsManager.preferred_dir=notebooks \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# The executed notebooks of the last reproduction as a static site that reads offline: open $(BOOK)/index.html.
RUNS ?= runs/cpu
BOOK ?= docs
book: $(STAMP)
	$(PY) -m jkt.book $(RUNS) --out $(BOOK)
