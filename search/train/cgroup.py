"""The limits of this process's cgroup: a container's share of the CPUs and of memory.

sched_getaffinity and /proc/meminfo show the host's CPUs and memory, not a pod's: a pod
limited to 4 GiB sees the host's free memory, and the kernel kills a process of it once
the cgroup passes its limit. Both versions are read, v2 (cpu.max, memory.max) and v1
(cpu.cfs_quota_us, memory.limit_in_bytes), at the process's own cgroup and at each parent,
the tightest counting. Every reader takes the tree's root and the file that names the
process's cgroup, so a test can point it at a tree of its own.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

ROOT = Path("/sys/fs/cgroup")
OWN = Path("/proc/self/cgroup")
# v1 writes "no limit" as the largest page-aligned 64-bit number, not as "max".
UNLIMITED = 2**60


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _integer(text: str | None) -> int | None:
    """A whole number, or None for "max", -1 (v1's "no quota"), an empty or missing file."""
    try:
        value = int((text or "").strip())
    except ValueError:
        return None
    return value if value >= 0 else None


def levels(controller: str, root: Path = ROOT, own: Path = OWN) -> list[Path]:
    """The folders of this process's cgroup for `controller` ("" for v2's), its own first,
    then each parent up to the root; only those that exist.

    Inside a container the tree is usually mounted at its own cgroup, so the path that
    /proc/self/cgroup names is absent there, and the root itself is the container's.
    """
    found: list[Path] = []
    for line in (_read(own) or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3 or controller not in fields[1].split(","):
            continue
        mounts = [root / name for name in (controller, fields[1]) if name] or [root]
        parts = [p for p in PurePosixPath(fields[2].strip()).parts if p not in ("/", "..")]
        for depth in range(len(parts), -1, -1):
            for mount in mounts:
                folder = mount.joinpath(*parts[:depth])
                if folder not in found and folder.is_dir():
                    found.append(folder)
    return found


def _cpus(quota: str | None, period: str | None) -> int | None:
    """A quota of `quota` µs each `period` µs in whole CPUs, rounded up; None without one."""
    q, p = _integer(quota), _integer(period)
    if not q or not p:
        return None
    return -(-q // p)


def cpu_limit(root: Path = ROOT, own: Path = OWN) -> int | None:
    """The CPUs the tightest quota on this process's cgroup allows, or None without a quota.

    A quota of 1.5 CPUs is 2: two threads can each run part of the time.
    """
    found = []
    for folder in levels("", root, own):
        fields = (_read(folder / "cpu.max") or "").split()
        found.append(_cpus(*fields) if len(fields) == 2 else None)
    for folder in levels("cpu", root, own):
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        found.append(_cpus(quota, period))
    return min((n for n in found if n is not None), default=None)


def _stat(folder: Path, key: str) -> int:
    """The value of `key` in the folder's memory.stat, or 0."""
    for line in (_read(folder / "memory.stat") or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return _integer(value) or 0
    return 0


def _room(folder: Path, limit: str, usage: str, inactive: str) -> int | None:
    """What a cgroup folder's memory limit leaves, or None where it has none.

    Its usage counts the page cache; the inactive file pages in it are reclaimed before the
    kernel kills anything, so they count as room (as Kubernetes' working set does).
    """
    most = _integer(_read(folder / limit))
    if most is None or most >= UNLIMITED:
        return None
    used = (_integer(_read(folder / usage)) or 0) - _stat(folder, inactive)
    return max(0, most - max(0, used))


def memory_room(root: Path = ROOT, own: Path = OWN) -> int | None:
    """Bytes this process's cgroup may still take, by the tightest limit along its path (v2
    memory.max less memory.current, v1 memory.limit_in_bytes less memory.usage_in_bytes), or
    None without a limit."""
    found = [
        _room(folder, "memory.max", "memory.current", "inactive_file")
        for folder in levels("", root, own)
    ]
    found += [
        _room(folder, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        for folder in levels("memory", root, own)
    ]
    return min((n for n in found if n is not None), default=None)
