# The two commands (README): `make run` (main job on the embedded default) and `make test`.
# Both create .venv on first use (~2-3 min: torch 2.14.1 + torchvision, MLflow, Ray, clean-fid).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test setup clean
setup: $(STAMP)

$(STAMP): pyproject.toml plugins/precondlab-example/pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[test]" -e plugins/precondlab-example
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/precondlab run gin/toy_analytic.gin

# Two workers, one test file each at a time: most tests wait on subprocesses, MLflow or Ray.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) mlruns.db mlartifacts
