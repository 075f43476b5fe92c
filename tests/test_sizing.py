"""Sizing: how many worker processes, their threads, and when one is replaced."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from search.define import presets
from search.run import gpus, sizing
from tests.helpers import db_url, write_preset


def test_auto_uses_the_cores_this_process_may_run_on(private_storage: Path) -> None:
    url = f"sqlite:///{private_storage / 'search.db'}"
    code = (
        "import os; from search.run import sizing; os.sched_setaffinity(0, {0}); "
        f"print(sizing.worker_count('auto', {url!r}), sizing.thread_share(1))"
    )
    pinned = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert pinned.stdout.split() == ["1", "1"]
    expected = min(
        sizing.cores(),
        sizing.SQLITE_WORKERS,
        (sizing.available_memory() or 2**60) // sizing.WORKER_BYTES,
    )
    assert sizing.worker_count("auto", url) == max(1, expected)
    assert sizing.thread_share(2) == max(1, sizing.cores() // 2)


def test_a_number_of_workers_is_taken_as_given_and_threads_never_drop_to_zero(
    private_storage: Path,
) -> None:
    assert sizing.worker_count(3, db_url(private_storage)) == 3
    assert sizing.worker_count(100, db_url(private_storage)) == 100  # beyond the cores: as asked
    assert sizing.thread_share(1) == sizing.cores()
    assert sizing.thread_share(sizing.cores() * 4) == 1
    # PostgreSQL has no cap of its own; the URL is only parsed, never connected to.
    assert sizing.worker_count("auto", "postgresql+psycopg://u@nowhere/db") >= 1
    assert not (private_storage / "search.db").exists()


def test_recycling_comes_from_the_environment_then_the_preset_then_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    preset = presets.load_preset(write_preset(tmp_path))
    monkeypatch.delenv(sizing.ENV_RECYCLE_TRIALS, raising=False)
    monkeypatch.delenv(sizing.ENV_RECYCLE_MB, raising=False)
    assert sizing.recycling(preset) == sizing.Recycle(30, 2 * sizing.WORKER_BYTES)
    own = dataclasses.replace(preset, recycle_trials=0, recycle_mb=900)
    assert sizing.recycling(own) == sizing.Recycle(0, 900 * 2**20)
    monkeypatch.setenv(sizing.ENV_RECYCLE_TRIALS, "7")
    monkeypatch.setenv(sizing.ENV_RECYCLE_MB, " 0 ")
    assert sizing.recycling(own) == sizing.Recycle(7, 0)
    monkeypatch.setenv(sizing.ENV_RECYCLE_MB, "2GB")
    with pytest.raises(sizing.WorkerError) as raised:
        sizing.recycling(own)
    assert str(raised.value) == (
        "$SEARCH_RECYCLE_MB must be a whole number of megabytes (0: never), not '2GB'."
    )


def test_auto_on_a_gpu_machine_starts_as_many_workers_as_the_cards_hold(
    private_storage: Path,
) -> None:
    url = db_url(private_storage)
    small = [gpus.Gpu("0", gpus.WORKER_BYTES)]  # room for one worker
    assert sizing.worker_count("auto", url, small) == 1
    roomy = [gpus.Gpu("0", 40 * gpus.WORKER_BYTES), gpus.Gpu("1", 40 * gpus.WORKER_BYTES)]
    # 80 fit on the cards; the cores (and the host's memory) still bound them.
    assert sizing.worker_count("auto", url, roomy) == sizing.worker_count("auto", url)
    assert sizing.worker_count(5, url, small) == 5  # a number is taken as given
