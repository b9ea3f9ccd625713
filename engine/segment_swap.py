"""Replacing some of a log's segments with cleaned copies, crash-safely (the cleaner's swap).

The cleaner (engine/cleaner.py) writes its cleaned segments into the partition's
``cleaning/`` directory, under their final names, fsyncs them, then commits the swap by
writing ``cleaning/swap`` (atomically and durably). From then on :func:`complete` does
the swap, live or, after a crash, when the log opens again::

    <partition>/cleaning/
        swap                        JSON, format version 1:
                                    {"version": 1, "replaced": [base offsets],
                                     "cleaned": [base offsets]}
        00000000000000000000.log    the cleaned segments, with both indexes
        00000000000000000000.index
        00000000000000000000.timeindex
        ...

``replaced`` are the base offsets of the segments the swap replaces (consecutive
segments of the log, never the active one); ``cleaned`` those of the cleaned segments,
which cover exactly the same offsets (so ``cleaned[0] == replaced[0]``). :func:`complete`
moves each cleaned segment's files over the partition's (indexes first, then the .log;
a rename replaces the segment of the same base offset in one step), renames the replaced
segments that no cleaned one replaces to ``<name>.deleted`` (removed later, as
retention's), fsyncs the directory, and then removes ``swap`` and ``cleaning/``. Each
step may be done twice, so a crash anywhere in it is finished by the next open.
Without ``swap`` (a crash before the commit) :func:`recover` removes ``cleaning/``:
the log is the one before the clean.

A reader in another process (engine.log.LogReader) may for a moment list a cleaned
segment beside a replaced one whose offsets it covers; both hold those offsets (the
cleaned one fewer of their records), and a file renamed under the reader makes it list
the directory again.

Who may call: the process that owns the log; :func:`recover` only before the log opens.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

from engine.datadir import fsync_directory, write_private_file
from engine.errors import CorruptRecordError
from engine.segment import DELETED_SUFFIX, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, segment_path

__all__ = ["CLEANING_DIR", "SWAP_FILE", "SWAP_VERSION", "commit", "complete", "recover"]

CLEANING_DIR = "cleaning"
SWAP_FILE = "swap"
#: Version of the ``swap`` file's JSON.
SWAP_VERSION = 1


def cleaning_dir(directory: str) -> str:
    """The ``cleaning/`` directory of a partition directory."""
    return os.path.join(directory, CLEANING_DIR)


def commit(directory: str, replaced: list[int], cleaned: list[int]) -> None:
    """Write ``cleaning/swap``: from its fsync on, the swap happens (now or at the next
    open). The cleaned segments must be in ``cleaning/`` and fsynced already."""
    if not replaced or not cleaned or replaced[0] != cleaned[0]:
        raise ValueError(f"a swap replaces segments from the same base: {replaced} {cleaned}")
    data = {"version": SWAP_VERSION, "replaced": replaced, "cleaned": cleaned}
    write_private_file(
        os.path.join(cleaning_dir(directory), SWAP_FILE), json.dumps(data).encode() + b"\n"
    )


def complete(directory: str, replaced: list[int], cleaned: list[int]) -> list[str]:
    """Do the committed swap; returns the paths of the replaced segments' files renamed
    ``.deleted``, for the caller to remove (a log being opened removes them itself)."""
    staging = cleaning_dir(directory)
    for base in cleaned:
        for suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX):
            with contextlib.suppress(FileNotFoundError):  # moved before a crash
                os.replace(
                    segment_path(staging, base, suffix), segment_path(directory, base, suffix)
                )
    retired = []
    for base in sorted(set(replaced) - set(cleaned)):
        for suffix in (LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX):
            path = segment_path(directory, base, suffix)
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, path + DELETED_SUFFIX)
                retired.append(path + DELETED_SUFFIX)
    fsync_directory(directory)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(staging, SWAP_FILE))
    shutil.rmtree(staging, ignore_errors=True)
    fsync_directory(directory)
    return retired


def recover(directory: str) -> bool:
    """Before a log opens: finish a committed swap, or drop an uncommitted clean's files.
    True when a swap was finished. CorruptRecordError when ``swap`` cannot be read."""
    staging = cleaning_dir(directory)
    if not os.path.isdir(staging):
        return False
    path = os.path.join(staging, SWAP_FILE)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        shutil.rmtree(staging, ignore_errors=True)  # never committed: the old log stands
        fsync_directory(directory)
        return False
    try:
        data = json.loads(raw)
        if data["version"] != SWAP_VERSION:
            raise ValueError(f"version {data['version']!r}")
        replaced = [int(base) for base in data["replaced"]]
        cleaned = [int(base) for base in data["cleaned"]]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptRecordError(f"unreadable cleaner swap: path={path} error={e}") from e
    complete(directory, replaced, cleaned)
    return True
