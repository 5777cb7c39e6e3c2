"""The resource file watcher: a reload when the files change, as SIGHUP would ask for one.

Enabled by `watch_resources` (`eventflow serve --watch`). Every `watch_interval_seconds` it
takes a snapshot of the resource paths: each `*.yaml` / `*.yml` file that loading would read,
with its modification time, size and inode, and each path that is missing. A snapshot that
differs from the last one applied is only a candidate: the reload runs once a snapshot has
stayed the same for one more interval, so an editor's save in several writes, or `kubectl`
replacing a ConfigMap's files one by one, gives one reload of the finished files, not one per
write. A refused reload is logged exactly as SIGHUP logs it (`reloading.reload_logged`), the
running configuration stays, and the watcher tries again only when the files change again.

Polling rather than inotify (or the `watchfiles` dependency): a few stat calls a second cost
nothing for a directory of YAML, and polling sees what inotify misses, a Kubernetes ConfigMap
mount whose `..data` symlink is swapped, files on NFS, or a directory created after the start.
This module does not read or check the files: `reloading.py` does.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog

from eventflow.reloading import SensorChanges, reload_logged
from eventflow.resources.loading import SUFFIXES

log = structlog.get_logger()

Snapshot = frozenset[tuple[str, int, int, int]]
"""(path, mtime in ns, size, inode) of each file; (path, -1, -1, -1) for a missing path."""
MISSING = (-1, -1, -1)


def _stat(path: Path) -> tuple[int, int, int]:
    try:
        # stat follows symlinks: a ConfigMap's swapped `..data` link changes the inode.
        found = path.stat()
    except OSError:
        return MISSING
    return found.st_mtime_ns, found.st_size, found.st_ino


def _files_under(folder: Path) -> list[Path]:
    files: list[Path] = []
    for root, folders, names in os.walk(folder, followlinks=True):
        # Hidden entries are skipped as loading skips them; a ConfigMap's ..data link is one,
        # but its files are seen through the visible links beside it.
        folders[:] = [name for name in folders if not name.startswith(".")]
        files.extend(
            Path(root, name)
            for name in names
            if not name.startswith(".") and name.endswith(SUFFIXES)
        )
    return files


def snapshot(paths: Sequence[Path]) -> Snapshot:
    """What the resource paths hold now, as far as a change to them matters."""
    entries: set[tuple[str, int, int, int]] = set()
    for path in paths:
        if path.is_dir():
            entries.update((str(file), *_stat(file)) for file in _files_under(path))
        else:
            entries.add((str(path), *_stat(path)))
    return frozenset(entries)


async def watch(
    paths: Sequence[Path],
    reload: Callable[[], Awaitable[SensorChanges]],
    interval: float,
) -> None:
    """Reload through `reload` whenever the files under `paths` changed and then stayed the
    same for `interval` seconds; until cancelled."""
    applied = await asyncio.to_thread(snapshot, paths)
    log.info("watching resource files", paths=[str(path) for path in paths], interval=interval)
    candidate = applied
    while True:
        await asyncio.sleep(interval)
        # A directory of many files is walked on a thread: the loop keeps answering webhooks.
        current = await asyncio.to_thread(snapshot, paths)
        if current == applied:
            candidate = applied
            continue
        if current != candidate:
            candidate = current  # still changing: wait for it to settle
            continue
        log.info("resource files changed", files=sorted({entry[0] for entry in current ^ applied}))
        try:
            await reload_logged(reload, "file watcher")
        except Exception as error:  # the store unreachable, say: tried again at the next look
            log.warning("reload failed, will retry", cause="file watcher", error=str(error))
            continue
        applied = current
