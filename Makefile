# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv with the exact versions in requirements/constraints.txt on first use.
VENV ?= .venv
STAMP := $(VENV)/.installed
PIP := $(VENV)/bin/pip install --quiet --disable-pip-version-check -c requirements/constraints.txt

.PHONY: demo test install

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	python3 -m venv $(VENV)
	# torch first, pinned: an unpinned resolve may pull a different multi-GB CUDA build.
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/s2v run examples/manifest.csv --output s2v-output

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -rs --durations=15
