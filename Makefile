# The two commands: `make demo` (run autosam on the bundled sample) and `make test` (run the test suite).
# Both create or update ./.venv on their own; nothing is downloaded at run time beyond PyPI packages.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/autosam demo

test: $(STAMP)
	$(PY) -m pytest -q -ra tests

clean:
	rm -rf autosam_demo .pytest_cache
