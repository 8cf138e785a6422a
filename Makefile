# `make demo` and `make test` are the two commands the README promises.
PYTHON ?= python3

.PHONY: install demo test

install:
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e ".[test]"

demo: install
	repfusion demo --resume  # a second `make demo` reuses finished stages instead of refusing

test: install  # one worker a core (at most 4: each holds about 1 GB); `python -m pytest` alone also works
	$(PYTHON) -m pytest -q -n auto --maxprocesses 4
