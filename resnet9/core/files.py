"""Writing results safely: atomic replacement of every file a run rewrites, and a writable output folder.

A run rewrites metrics.json and last.pt after every epoch. Each write goes to a temporary file in the same
folder and is then renamed over the old one, so a reader (a resume, a sweep report, a user) never sees half
a file, and a failed write (disk full, permissions, a folder in the way) leaves the previous file intact.
"""

from __future__ import annotations

import concurrent.futures
import copy as copy_module
import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from resnet9.core.errors import UsageError, exit_with


def _umask() -> int:
    """This process's umask, read once (at import, before any thread starts): os.umask can only be read by
    setting it."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()


def shared_as_umask_says(path: str | Path, folder: bool = False) -> None:
    """Permissions as for any file the user creates: `tempfile` makes its files 0600 and folders 0700 (private
    to the owner), which would hide a team's runs from each other on a shared disk."""
    os.chmod(path, (0o777 if folder else 0o666) & ~UMASK)


def replace_atomically(path: Path, write: Callable[[str], Any]) -> None:
    """`write(temporary path)`, then rename it to `path`; one-line UsageError if any of it fails.

    Rerunning the same folder then resumes from the last checkpoint that was written. The file reaches the disk
    before the rename, and the rename before this returns: after a power cut or a hard stop of the machine the
    name holds the old file or the new one, never an empty one.
    """
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
        os.close(fd)
        write(tmp)
        shared_as_umask_says(tmp)
        _to_disk(tmp)
        os.replace(tmp, path)
        _to_disk(path.parent, folder=True)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write (a full disk) as RuntimeError
        reason = err.strerror if isinstance(err, OSError) and err.strerror else _short_reason(err)
        raise UsageError(
            f"cannot write {path} ({reason}); free space or fix the folder's permissions, then rerun the same "
            f"folder to resume"
        ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _short_reason(err: Exception) -> str:
    if isinstance(err, RuntimeError):  # torch's stream writer, in its own words ("unexpected pos ...")
        return "the write failed: is the disk full?"
    return type(err).__name__


def write_json(path: Path, obj: Any, indent: int | None = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent) + ("\n" if indent is not None else ""))


def write_text(path: Path, text: str) -> None:
    replace_atomically(path, lambda tmp: Path(tmp).write_text(text))


def save_figure(figure: Any, path: Path, dpi: int) -> None:
    """A matplotlib figure, in the format its name's suffix says (the temporary name has none)."""
    replace_atomically(path, lambda tmp: figure.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".")))


# what fsync answers where a file system cannot sync at all (some FUSE, 9p and SMB mounts): no failure of ours
CANNOT_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def _to_disk(path: str | Path, folder: bool = False) -> None:
    """fsync a file, or a folder: that makes a rename in it durable. Best effort for a folder (not every system
    can) and on a system that cannot sync; a file that fails to reach the disk (EIO, ENOSPC) is an error."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        if not folder and err.errno not in CANNOT_SYNC:
            raise


def save_torch(path: Path, obj: Any) -> None:
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


class BackgroundWriter:
    """Writes files on one thread beside training, in the order asked: a checkpoint, then the metrics.json that
    lists its epoch. Once a write fails, the later ones are skipped, so a reader never sees an epoch that
    last.pt does not hold. `wait` waits for every write asked so far and raises the first failure (a
    UsageError naming the file)."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="resnet9-writer")
        self._pending: list[concurrent.futures.Future] = []
        self._failed = False

    def submit(self, write: Callable[..., Any], *args: Any) -> None:
        self._pending.append(self._pool.submit(self._unless_failed, write, *args))

    def wait(self) -> None:
        while self._pending:
            job = self._pending[0]
            try:
                job.result()
            finally:
                if job.done():  # (a signal can interrupt the wait: then the job stays to be waited for)
                    self._pending.pop(0)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _unless_failed(self, write: Callable[..., Any], *args: Any) -> None:
        if self._failed:
            return
        try:
            write(*args)
        except BaseException:
            self._failed = True
            raise


def host_copy(obj: Any, _copied: dict | None = None) -> Any:
    """`obj` with every tensor copied to the host, so that training can go on changing the originals while a
    background thread writes the copy. The copy from a GPU waits for it and lands in ordinary memory: pinning
    it afterwards (as this did before) only added a second host copy and a page-locked allocation per epoch.

    Each storage is copied once and tensors that shared one share its copy: a checkpoint names the same weights
    up to three times (the evaluated model, the training state's model, the EMA's), and `torch.save` writes a
    shared storage once, so copying tensor by tensor doubled both the copy and the file."""
    copied = {} if _copied is None else _copied  # (device, storage address) -> its host copy, as bytes
    if isinstance(obj, torch.Tensor):
        return _shared_host_copy(obj.detach(), copied)
    if isinstance(obj, dict):
        return {key: host_copy(value, copied) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(host_copy(value, copied) for value in obj)
    return copy_module.deepcopy(obj)


def _shared_host_copy(tensor: torch.Tensor, copied: dict) -> torch.Tensor:
    """`tensor` as a view of the host copy of its whole storage (made on first sight of that storage)."""
    storage = tensor.untyped_storage()
    key = (str(tensor.device), storage.data_ptr(), storage.nbytes())
    if key not in copied:
        raw = torch.empty(0, dtype=torch.uint8, device=tensor.device).set_(storage)
        copied[key] = raw.to("cpu", copy=True).untyped_storage()
    view = torch.empty(0, dtype=tensor.dtype)
    return view.set_(copied[key], tensor.storage_offset(), tensor.size(), tensor.stride())


def ensure_writable(folder: str | Path, key: str) -> None:
    """Create `folder` if needed and write a probe file there; a UsageError naming `key` if either fails."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UsageError(
            f"cannot write the output folder {folder} ({reason}); choose a writable one, e.g. {key}=/tmp/resnet9"
        ) from None


class WritableOutput(Callback):
    """Hydra callback: refuse an output folder that cannot be written, in one line, before anything runs.

    Hydra creates the folder itself (and its log file) before the job starts; without this check a
    read-only or blocked location would end in a traceback from inside Hydra. Hydra turns a callback's
    exceptions into warnings, so this one ends the command itself.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, key: str) -> None:
        try:
            ensure_writable(folder, key)
        except UsageError as err:
            exit_with(f"error: {err}")


_EARLIER_RECORDS: dict[Path, dict[Path, bytes]] = {}  # run folder -> its metrics.json and .hydra files, as found


class KeepEarlierRecord(Callback):
    """Hydra callback: before Hydra rewrites <run folder>/.hydra/ (config.yaml, overrides.yaml, hydra.yaml) for
    a single run, keep the files of the earlier run the folder holds (its metrics.json and .hydra/), so that a job
    refused before it trains (a resume with other overrides, a damaged last.pt) can put them back
    (`put_back_earlier_record`): the folder's config then still describes its results. A sweep refuses other
    overrides before any job, so its jobs need none of this."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder, subdir = Path(config.hydra.run.dir).resolve(), config.hydra.output_subdir
        record = folder / "metrics.json"
        if subdir is None or not record.is_file():
            return
        try:
            found = [record, *(folder / subdir).glob("*.yaml")]
            _EARLIER_RECORDS[folder] = {path: path.read_bytes() for path in found}
        except OSError:  # unreadable: nothing to keep (the run itself says what is wrong with the folder)
            pass


def put_back_earlier_record(folder: Path) -> None:
    """For a job that failed: where its folder's metrics.json is still the earlier run's, byte for byte (the job
    was refused before it trained), the earlier .hydra files as KeepEarlierRecord found them."""
    kept = _EARLIER_RECORDS.pop(folder.resolve(), {})
    record = folder.resolve() / "metrics.json"
    try:
        if record not in kept or record.read_bytes() != kept[record]:  # none kept, or the job began its own record
            return
        for path, content in kept.items():
            if path != record:
                path.write_bytes(content)
    except OSError:  # the error that ended the job is the one to report
        pass
