"""Read an offline W&B run file (`run-<id>.wandb`) back, for tests.

wandb >= 0.19 writes these from its Go core and no longer ships a Python reader. The framing is LevelDB's
log format: a 7-byte file header ("W&B" magic + version), then 32 KiB blocks of chunks, each chunk
`crc32 (4) | length (2, LE) | type (1: full, 2: first, 3: middle, 4: last) | payload`; a block tail shorter
than a chunk header is zero padding. The payloads are protobuf `Record` messages from wandb's own schema.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(raw: bytes) -> list[bytes]:
    assert raw[:4] == b":W&B", f"not a W&B run file: {raw[:8]!r}"
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(raw):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # zero-padded block tail
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + HEADER])
        data = raw[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            out.append(data)
        elif kind == FIRST:
            pending = data
        elif kind == MIDDLE:
            pending += data
        elif kind == LAST:
            out.append(pending + data)
        elif kind == 0 and length == 0:  # pre-allocated, unwritten space
            break
    return out


def read_run(path: Path) -> dict[str, Any]:
    """{'run': Record.run, 'config': {key: value}, 'history': [rows], 'summary': {key: value},
    'metrics': [MetricRecord (define_metric)], 'types': [record types]}."""
    result: dict[str, Any] = {"run": None, "config": {}, "history": [], "summary": {}, "metrics": [], "types": []}
    for payload in _payloads(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        result["types"].append(kind)
        if kind == "run":
            result["run"] = record.run
            result["config"] = {item.key: json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "metric":
            result["metrics"].append(record.metric)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            result["history"].append(row)
        elif kind == "summary":
            for item in record.summary.update:
                result["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return result


def read_finished_run(path: Path, timeout_s: float = 30.0) -> dict[str, Any]:
    """`read_run` of a run finished in this process. wandb's `run.finish()` returns once its service has the
    exit record, and the service writes the file a moment later (on a loaded CI machine the file still held
    only its header): read until the exit record is there, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = read_run(path)
        if "exit" in result["types"] or time.monotonic() > deadline:
            return result
        time.sleep(0.05)
