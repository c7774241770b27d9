"""What the jobs of a sweep share when Hydra runs them one after another in one process (its basic launcher).

The jobs of a sweep differ in a few settings; most of what a job builds before it trains does not depend on
them. Building goes through this cache, so the second job of a sweep finds, already made:
  - the CIFAR-10 arrays read from disk (1-2 s a job on a small CPU),
  - the training images padded and on the training device (the device engine),
  - the model summary text (torchinfo),
  - with `compile=true`, the compiled model: the next job re-initialises its weights, BatchNorm buffers and
    (fresh) optimizer in place, from its own seed, instead of compiling again.
Every entry is keyed by everything it is made from, so a job never receives what was made for another
setting; and only the most recent entries of each kind are kept, so a sweep over data sizes or widths does
not pile up copies on the device. Nothing here changes a result: a job gets what it would have built.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class JobCache:
    """Entries by kind and key; the `keep` most recently used of each kind."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self.entries: dict[str, OrderedDict[str, Any]] = {}
        self.hits: dict[str, int] = {}

    def holds(self, kind: str, key: Any) -> bool:
        return _text(key) in self.entries.get(kind, {})

    def get(self, kind: str, key: Any, make: Callable[[], T]) -> T:
        """The entry of `kind` made from `key` (anything JSON can write), made now if there is none."""
        entries = self.entries.setdefault(kind, OrderedDict())
        key = _text(key)
        if key in entries:
            entries.move_to_end(key)
            self.hits[kind] = self.hits.get(kind, 0) + 1
            return entries[key]
        entries[key] = value = make()
        while len(entries) > self.keep:
            entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self.entries.clear()
        self.hits.clear()


def _text(key: Any) -> str:
    return json.dumps(key, sort_keys=True, default=str)


shared = JobCache()  # one per process: what every job of a sweep in this process reuses
