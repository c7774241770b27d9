# The two commands of the README. Both create the virtual environment on first use (Python >= 3.10).
#   make train [ARGS="experiment=quick_cpu ..."]         train with the mission's defaults (+ Hydra overrides)
#   make test  [PYTEST_ARGS="-k schedule"]                lint + the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup train test lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip uninstall --quiet --yes hydra-optuna-sweeper 2>/dev/null || true  # superseded (an older venv)
	$(BIN)/python -m pip install --quiet -e '.[dev,search]'
	touch $@

train: setup
	$(BIN)/python -m resnet9.train $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The tests run in one worker process per CPU (pytest-xdist); a worker takes the next test when it is free
# (worksteal), so the long end-to-end runs do not queue behind each other.
test: lint
	$(BIN)/python -m pytest -n auto --dist worksteal $(PYTEST_ARGS)
