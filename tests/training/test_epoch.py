"""The epoch's row: its keys declared once (engine/epoch.py's EpochRow), as metrics.json and the console see them."""

import json

from resnet9.training.engine.epoch import TRAINERS_KEYS, EpochRow


def test_the_row_has_the_declared_keys_and_no_mfu_where_none_was_measured():
    row = EpochRow(3, 1.2, 0.5, 1.1, 0.6, 0.01, False, 2.0, 2.5, 1000.0)
    assert set(row.as_dict()) == TRAINERS_KEYS - {"mfu"} and row.as_dict()["epoch"] == 3
    assert EpochRow(3, 1.2, 0.5, 1.1, 0.6, 0.01, True, 2.0, 2.5, 1000.0, mfu=0.4).as_dict()["mfu"] == 0.4
    json.dumps(row.as_dict())  # plain values: metrics.json and W&B take the row as it is


def test_a_runs_record_holds_rows_of_exactly_those_keys(trained_run):
    record = json.loads((trained_run / "metrics.json").read_text())
    assert [set(row) for row in record["epochs"]] == [TRAINERS_KEYS - {"mfu"}] * len(record["epochs"])  # a CPU run
