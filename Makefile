# The two commands of the README. Both create the virtual environment on first use (Python >= 3.10).
#   make train [ARGS="experiment=quick_cpu ..."]         train with the mission's defaults (+ Hydra overrides)
#   make test  [PYTEST_ARGS="-k schedule"]                lint + the test suite (no outside service needed)
#   make test-full                                        the rest: starts SLURM and PostgreSQL on localhost
#                                                         (Debian packages, root), runs the tests that need them
#                                                         and the slow end-to-end checks (benchmark rehearsals)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup train test test-full lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip uninstall --quiet --yes hydra-optuna-sweeper 2>/dev/null || true  # superseded (an older venv)
	$(BIN)/python -m pip install --quiet -e '.[dev,search,timm]'
	touch $@

train: setup
	$(BIN)/python -m resnet9.train $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The tests run in one worker process per CPU (pytest-xdist); a worker takes the next test when it is free
# (worksteal), so the long end-to-end runs do not queue behind each other.
test: lint
	$(BIN)/python -m pytest -n auto --dist worksteal -m "not slow and not slurm and not postgres" $(PYTEST_ARGS)

# The real services (tests/services/: a one-node SLURM cluster with accounting, a PostgreSQL server), and the
# slow end-to-end checks that would take the quick default past 10 minutes on 2 cores.
test-full: setup
	bash tests/services/postgres.sh start
	bash tests/services/slurm.sh start
	$(BIN)/python -m pytest -n auto --dist loadfile -m "slow or slurm or postgres" $(PYTEST_ARGS)
