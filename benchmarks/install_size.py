"""What an extra of resnet9 adds to the core install, on disk: the packages its requirements pull in that the core
requirements do not, each with the size of the files pip installed for it (its RECORD).

    .venv/bin/python benchmarks/install_size.py            # the search extra
    .venv/bin/python benchmarks/install_size.py dev

Reads the installed environment only (no network): run it in the venv `make` built.
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(requirements: list[Requirement]) -> set[str]:
    """The installed distributions `requirements` need, transitively (their own extras' markers followed)."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for spec in dist.requires or []:
            needed = Requirement(spec)
            extras = ("", *requirement.extras)
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(needed)
    return seen


def main() -> None:
    extra = sys.argv[1] if len(sys.argv) > 1 else "search"
    ours = [Requirement(spec) for spec in metadata.requires("resnet9") or []]
    core = [req for req in ours if req.marker is None]
    wanted = [req for req in ours if req.marker is not None and req.marker.evaluate({"extra": extra})]
    for req in wanted:
        req.marker = None
    total = 0
    for name in sorted(closure(wanted) - closure(core)):
        dist = metadata.distribution(name)
        size = sum(path.size or 0 for path in dist.files or [])
        total += size
        print(f"{name:28} {dist.version:12} {size / 1e6:7.1f} MB")
    print(f"{'total':41} {total / 1e6:7.1f} MB")


if __name__ == "__main__":
    main()
