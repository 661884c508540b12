# `make demo` runs autosam on the bundled sample; `make test` runs the fast test tier (about 10 minutes on 2 cores),
# `make test-slow` the slow tier (real nnU-Net training, studies, adapters), `make test-all` both.
# Both create or update ./.venv on their own; nothing is downloaded at run time beyond PyPI packages.
# Python: python3.11 when it exists, else python3 if it is 3.10 to 3.13; override with `make PYTHON=python3.12`.
ifeq ($(origin PYTHON),undefined)
  PYTHON := $(if $(shell command -v python3.11 2>/dev/null),python3.11,python3)
endif
SUPPORTED := 3.10 3.11 3.12 3.13
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow test-all venv clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || { \
	  v=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || { \
	    echo "make: cannot run '$(PYTHON)'; autosam needs Python $(firstword $(SUPPORTED)) to $(lastword $(SUPPORTED)) (make PYTHON=/path/to/python3.x)" >&2; exit 1; }; \
	  case " $(SUPPORTED) " in *" $$v "*) ;; *) \
	    echo "make: '$(PYTHON)' is Python $$v; autosam needs Python $(firstword $(SUPPORTED)) to $(lastword $(SUPPORTED)) (make PYTHON=/path/to/python3.x)" >&2; exit 1;; esac; \
	  echo "$(PYTHON) -m venv $(VENV)   # Python $$v"; \
	  $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/autosam demo

PYTEST := $(PY) -m pytest -q -ra --durations=15

test: $(STAMP)
	$(PYTEST) -m "not slow" tests

test-slow: $(STAMP)
	$(PYTEST) -m slow tests

test-all: test test-slow

clean:
	rm -rf autosam_demo .pytest_cache
