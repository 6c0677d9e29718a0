"""Several MTA processes on one machine: one spool each, one listening port for all.

`WARTA_MTA_PROCESSES=N` makes `warta mta` a small supervisor: it starts N children, each a
complete MTA with its own spool `<spool>/instance-<i>`, listening on the same ports with
SO_REUSEPORT so the kernel spreads connections across them. Message-IDs are shared through
Redis (see `dedupe`), so a resubmission reaching a sibling is still recognised.

Changing N must never strand mail: before any instance starts, every spool that no
instance of the new layout owns is adopted by one that does. Adoption hard-links a
message and then its envelope into the new spool, fsyncs, and only then unlinks the
originals, so a crash at any point leaves each message in at least one place and the next
start finishes the job (already-linked files are skipped).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from workers.mta.spares import fsync_directory

logger = logging.getLogger(__name__)
_INSTANCE = re.compile(r"instance-(\d+)")


def instance_dir(root: Path, index: int) -> Path:
    """The spool of instance `index` under the configured spool directory."""
    return root / f"instance-{index}"


def _instance_dirs(root: Path) -> dict[int, Path]:
    if not root.is_dir():
        return {}
    found = {}
    for path in root.iterdir():
        match = _INSTANCE.fullmatch(path.name)
        if match and path.is_dir():
            found[int(match.group(1))] = path
    return found


def adopt(source: Path, target: Path) -> int:
    """Move every queued message of the spool at `source` into the spool at `target`."""
    source_env, source_msg = source / "env", source / "msg"
    if not source_msg.is_dir():
        return 0
    target_msg, target_env = target / "msg", target / "env"
    target_msg.mkdir(parents=True, exist_ok=True)
    target_env.mkdir(parents=True, exist_ok=True)
    moved = []
    for message in sorted(source_msg.glob("*.eml")):
        # The message file holds its envelope; an env/ file is a changed one (or layout 1's).
        envelope = source_env / f"{message.stem}.json"
        files = [(message, target_msg)]
        if envelope.exists():
            files.append((envelope, target_env))
        for path, folder in files:
            destination = folder / path.name
            if not destination.exists():
                os.link(path, destination)
        moved.append(files)
    if not moved:
        return 0
    fsync_directory(target_msg)
    fsync_directory(target_env)
    for files in moved:  # the envelope before its message, as the spool removes them
        for path, _ in reversed(files):
            path.unlink()
    fsync_directory(source_env)
    fsync_directory(source_msg)
    logger.warning("spool: %d queued messages moved from %s to %s", len(moved), source, target)
    return len(moved)


def consolidate(root: Path, processes: int) -> list[Path]:
    """Give every stranded spool to an owner of the `processes` layout; the owners' dirs.

    One process owns `root` itself; N processes own `root/instance-0 … N-1`. A root spool
    goes to instance 0, instance k ≥ N to instance k mod N, instances to the root.
    """
    existing = _instance_dirs(root)
    if processes == 1:
        for path in existing.values():
            adopt(path, root)
        return [root]
    owners = [instance_dir(root, index) for index in range(processes)]
    adopt(root, owners[0])
    for index, path in existing.items():
        if index >= processes:
            adopt(path, owners[index % processes])
    return owners
