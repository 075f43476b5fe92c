"""GPUs for worker processes: which cards, how many workers each holds, which worker on which.

Each worker process sees exactly one card (CUDA_VISIBLE_DEVICES, set before its backend
starts), so every backend trains it on its "first" GPU and several processes share a card.
The cards and their free memory come from nvidia-smi; a machine without it has no GPU here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from search.errors import SearchError

ENV_GPUS = "SEARCH_GPUS"
QUERY = ["--query-gpu=index,memory.free,memory.total", "--format=csv,noheader,nounits"]
# Device memory one trial process is planned to take on a card: the CUDA context (about
# 0.5 GiB) and a network of at most a few million parameters with its batches, held with a
# margin. An estimate: no GPU was at hand to measure it. JAX must not preallocate (75 % of the
# card) for this to hold; search.train.runtime.configure sees to that.
WORKER_BYTES = 2 * 2**30
MIB = 2**20


class GpuError(SearchError):
    """A --gpus value that names no usable card."""


@dataclass(frozen=True)
class Gpu:
    index: str  # as CUDA_VISIBLE_DEVICES names it, in nvidia-smi's (PCI bus) order
    free: int | None = None  # bytes; None where nvidia-smi cannot tell

    @property
    def workers(self) -> int:
        """Worker processes that fit in the card's free memory (one where it is unknown)."""
        return 1 if self.free is None else max(1, self.free // WORKER_BYTES)


def parse_list(text: str) -> list[str]:
    """`--gpus 0,1` as a list of card indices."""
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    if not chosen or not all(part.isdigit() for part in chosen):
        raise GpuError(
            f"--gpus {text!r} names no GPU; pass card numbers as nvidia-smi lists them, "
            "such as 0 or 0,1."
        )
    return list(dict.fromkeys(chosen))


def parse_query(output: str) -> list[Gpu]:
    """nvidia-smi's CSV lines (index, free MiB, total MiB) as cards."""
    found: list[Gpu] = []
    for line in output.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 2 or not fields[0].isdigit():
            continue
        free = int(fields[1]) * MIB if fields[1].isdigit() else None
        found.append(Gpu(fields[0], free))
    return found


def query() -> list[Gpu]:
    """The machine's cards with their free memory; none without a working nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        result = subprocess.run([smi, *QUERY], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_query(result.stdout) if result.returncode == 0 else []


def choose(chosen: list[str] | None, found: list[Gpu]) -> list[Gpu]:
    """The cards the workers use: `chosen` (--gpus) or, without it, every card found.

    A chosen card that nvidia-smi does not report (or a machine without nvidia-smi) is
    taken on trust, with its free memory unknown.
    """
    if chosen is None:
        return found
    by_index = {gpu.index: gpu for gpu in found}
    if found and not set(chosen) <= set(by_index):
        missing = ", ".join(sorted(set(chosen) - set(by_index)))
        raise GpuError(
            f"GPU {missing} is not on this machine (nvidia-smi lists "
            f"{', '.join(by_index)}); pass --gpus with those numbers."
        )
    return [by_index.get(index, Gpu(index)) for index in chosen]


def cards(chosen: list[str] | None) -> list[Gpu]:
    """The cards for this machine's workers: `chosen` (--gpus), else those that
    CUDA_VISIBLE_DEVICES names, else every card nvidia-smi finds.

    A CUDA_VISIBLE_DEVICES that hides every card, or names cards by UUID, is left as it is
    for every worker: no card is assigned.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is None and visible is not None:
        parts = [part.strip() for part in visible.split(",")]
        if not all(part.isdigit() for part in parts):
            return []
        chosen = parts
    return choose(chosen, query())


def capacity(cards: list[Gpu]) -> int:
    """Worker processes the cards hold together, as their free memory allows."""
    return sum(gpu.workers for gpu in cards)


def assign(cards: list[Gpu], workers: int) -> list[str]:
    """The card of each worker: round robin over the cards that still have room, then over
    all of them once every card is full (more workers asked for than fit)."""
    room = {gpu.index: gpu.workers for gpu in cards}
    plan: list[str] = []
    while cards and len(plan) < workers:
        open_cards = [gpu.index for gpu in cards if room[gpu.index] > 0] or list(room)
        for index in open_cards[: workers - len(plan)]:
            plan.append(index)
            room[index] -= 1
    return plan


def summary(plan: list[str]) -> str:
    """Such as 'GPU 0: 3 workers, GPU 1: 2 workers'."""
    counts = {index: plan.count(index) for index in dict.fromkeys(plan)}
    return ", ".join(
        f"GPU {index}: {n} worker{'' if n == 1 else 's'}" for index, n in counts.items()
    )


def pin(index: str) -> None:
    """Show this process only card `index`, before its backend starts CUDA.

    CUDA numbers cards fastest first unless told otherwise; nvidia-smi numbers them by PCI
    bus, so CUDA is told to do the same.
    """
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = index
