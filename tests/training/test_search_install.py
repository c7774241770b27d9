"""The `search` extra: pinned to versions that work together, installed as pinned, and out of the core install.

What broke before: hydra-optuna-sweeper held Optuna at 2.10.1, whose RDB storage fails with SQLAlchemy 2.x
(an AssertionError in its schema-version check), so `storage=sqlite:///...` crashed. These tests fail when the
installed set no longer matches the pins, when a pinned package's own requirements are not met by the others,
or when a study can no longer be written to an SQLite file and read back through a second storage object."""

import re
from importlib import metadata

import optuna
from packaging.requirements import Requirement

# resnet9's requirements as installed (`make` reinstalls when pyproject.toml changes): core, and the search extra
OURS = [Requirement(spec) for spec in metadata.requires("resnet9")]
SEARCH = [req for req in OURS if req.marker is not None and req.marker.evaluate({"extra": "search"})]
CORE = [req for req in OURS if req.marker is None]


def test_the_search_extra_is_pinned_and_installed_as_pinned():
    pins = SEARCH
    assert {pin.name for pin in pins} == {"optuna", "optuna-dashboard", "sqlalchemy", "alembic", "psycopg"}
    assert next(pin for pin in pins if pin.name == "psycopg").extras == {"binary"}  # (no C compiler or libpq needed)
    for pin in pins:
        assert re.fullmatch(r"==[0-9.]+", str(pin.specifier)), f"{pin}: pin one version (tested together)"
        assert metadata.version(pin.name) in pin.specifier, f"installed {pin.name} {metadata.version(pin.name)}"


def test_the_pinned_packages_requirements_are_met_by_each_other():
    extras = {"psycopg": "binary"}  # the extra our pin asks for (psycopg-binary, of psycopg's own version)
    for name in ("optuna", "optuna-dashboard", "alembic", "psycopg"):
        for spec in metadata.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": extras.get(name, "")}):
                continue  # an optional extra of theirs
            installed = metadata.version(requirement.name)
            assert requirement.specifier.contains(installed, prereleases=True), f"{name} needs {spec}: {installed}"


def test_the_core_install_does_not_pull_in_the_search_packages():
    search = {"optuna", "optuna-dashboard", "sqlalchemy", "alembic", "psycopg"}
    assert CORE and not {req.name.lower() for req in CORE} & search


def test_a_study_in_an_sqlite_file_survives_its_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=optuna.storages.RDBStorage(url), direction="maximize")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.report(0.5, 1)
    study.tell(trial, 0.75)
    again = optuna.load_study(study_name="s", storage=optuna.storages.RDBStorage(url))  # as another process would
    (stored,) = again.get_trials()
    assert (stored.value, stored.intermediate_values, stored.state) == (
        0.75,
        {1: 0.5},
        optuna.trial.TrialState.COMPLETE,
    )
