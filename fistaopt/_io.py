"""Atomic writes: the one place where fistaopt writes files and output folders.

Every writer goes through here, so every output has the same guarantees:

- **Atomic.**  A file is written to a temporary sibling and renamed into place; a
  folder is built in a temporary sibling folder and published when complete.  An
  exception leaves the destination as it was (a folder that did not exist is not
  created, nor are the parent folders created for it).
- **Normal permissions.**  Files get ``0o666 & ~umask`` and folders ``0o777 & ~umask``
  (``tempfile`` would leave ``0o600`` / ``0o700``).
- **The user's files are safe.**  An output folder carries a manifest
  (:data:`MANIFEST`, the names fistaopt wrote there).  Publishing into an existing
  folder is allowed when it is empty or a previous fistaopt output (it has a manifest,
  or a ``report.json`` written by fistaopt); any other non-empty folder is refused
  unless ``overwrite=True``.  Even then only the entries fistaopt writes (and those
  listed in the old manifest) are replaced or removed; every other file stays.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

MANIFEST = ".fistaopt-output.json"


class OutputExistsError(FileExistsError):
    """The output folder holds files that fistaopt did not write (and ``overwrite`` is off)."""


def current_umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod_normal(path: Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the permissions the umask implies."""
    mask = current_umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(Path(root) / d, 0o777 & ~mask)
            for f in files:
                os.chmod(Path(root) / f, 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def _missing_parents(path: Path) -> list[Path]:
    """The ancestors of ``path`` that do not exist yet, outermost first."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing[::-1]


def _remove_created(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            break


# ---------------------------------------------------------------------------- files
@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    final = Path(path)
    created = _missing_parents(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _chmod_normal(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        _remove_created(created)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], data: object, *, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON atomically (values JSON cannot hold are written with ``str``)."""
    return write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], object]) -> Path:
    """Atomically create ``path`` with ``writer(tmp_path)`` (e.g. ``torch.save``, ``fig.savefig``)."""
    with atomic_file(path) as tmp:
        writer(tmp)
    return Path(path)


# ---------------------------------------------------------------------------- folders
def _is_fistaopt_report(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"settings", "records"} <= set(data)


def previous_output_files(folder: Path) -> set[str] | None:
    """Names fistaopt wrote in ``folder`` before, or None when it is not a fistaopt output.

    A folder without a manifest but with a fistaopt ``report.json`` (written before
    manifests existed) counts as an output whose files are unknown (an empty set).
    """
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            return set(json.loads(manifest.read_text(encoding="utf-8")))
        except ValueError:
            return None
    if _is_fistaopt_report(folder / "report.json"):
        return set()
    return None


def check_output_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Raise unless ``path`` may receive an output folder (see the module docstring).

    Raises:
        NotADirectoryError: ``path`` exists and is not a folder.
        OutputExistsError: a non-empty folder that is not a fistaopt output, without ``overwrite``.
    """
    folder = Path(path)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise NotADirectoryError(f"output path {str(folder)!r} exists and is not a folder")
    if overwrite or not any(folder.iterdir()) or previous_output_files(folder) is not None:
        return
    raise OutputExistsError(
        f"output folder {str(folder)!r} is not empty and is not a fistaopt output; "
        f"choose another folder, or pass --overwrite (only the files fistaopt writes are replaced)"
    )


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink(missing_ok=True)


def _publish_into(tmp: Path, final: Path) -> None:
    """Move the entries of ``tmp`` into the existing folder ``final`` (one rename each)."""
    written = sorted(p.name for p in tmp.iterdir())
    stale = (previous_output_files(final) or set()) - set(written) - {MANIFEST}
    for name in stale:  # files of the previous output that this one no longer writes
        _remove(final / name)
    for name in written:
        target = final / name
        if target.is_dir() and not target.is_symlink():
            _remove(target)
        os.replace(tmp / name, target)
    write_json(final / MANIFEST, written)
    tmp.rmdir()


@contextmanager
def atomic_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; publish it as ``path`` on success.

    A new ``path`` is created by one rename.  An existing one must pass
    :func:`check_output_dir`; the new files then replace their namesakes one rename
    at a time, files of the previous fistaopt output that are not rewritten are
    removed, and every other file is kept.  A manifest of the written names is added.
    """
    final = Path(path)
    check_output_dir(final, overwrite=overwrite)
    created = _missing_parents(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        (tmp / MANIFEST).write_text(json.dumps(sorted(p.name for p in tmp.iterdir())) + "\n")
        _chmod_normal(tmp)
        check_output_dir(final, overwrite=overwrite)  # it may have appeared meanwhile
        if final.exists():
            (tmp / MANIFEST).unlink()
            _publish_into(tmp, final)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise


__all__ = [
    "MANIFEST", "OutputExistsError", "atomic_dir", "atomic_file", "check_output_dir", "current_umask",
    "previous_output_files", "write_json", "write_text", "write_with",
]
