"""Worker processes: how many, their threads and seeds, and how their errors come back.

`search start --workers N` end to end (a killed worker, Ctrl-C) is in test_parallel.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from search import presets, storage, study, workers
from search.study import StudyError
from tests.helpers import db_url, write_preset
from tests.postgres import Cluster


def test_auto_uses_the_cores_this_process_may_run_on(private_storage: Path) -> None:
    url = f"sqlite:///{private_storage / 'search.db'}"
    code = (
        "import os; from search import workers; os.sched_setaffinity(0, {0}); "
        f"print(workers.count('auto', {url!r}), workers.thread_share(1))"
    )
    pinned = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert pinned.stdout.split() == ["1", "1"]
    expected = min(
        workers.cores(),
        workers.SQLITE_WORKERS,
        (workers.available_memory() or 2**60) // workers.WORKER_BYTES,
    )
    assert workers.count("auto", url) == max(1, expected)
    assert workers.thread_share(2) == max(1, workers.cores() // 2)


def test_a_number_of_workers_is_taken_as_given_and_threads_never_drop_to_zero(
    private_storage: Path,
) -> None:
    assert workers.count(3, db_url(private_storage)) == 3
    assert workers.count(100, db_url(private_storage)) == 100  # beyond the cores: as asked
    assert workers.thread_share(1) == workers.cores()
    assert workers.thread_share(workers.cores() * 4) == 1
    # PostgreSQL has no cap of its own; the URL is only parsed, never connected to.
    assert workers.count("auto", "postgresql+psycopg://u@nowhere/db") >= 1
    assert not (private_storage / "search.db").exists()


def test_a_new_study_s_workers_take_seeds_from_zero_others_draw_theirs() -> None:
    assert workers.seed_base(True, 4) == 0  # a one-process search is reproducible
    drawn = {workers.seed_base(False, 4) for _ in range(50)}
    assert len(drawn) > 1 and all(1 <= seed < 2**30 - 4 for seed in drawn)


def test_each_worker_s_error_comes_back_with_its_index(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    jobs = [workers.Job(i, f"sqlite:///{missing}", "tiny", 2, i, 1, None) for i in range(2)]
    lines: list[str] = []
    errors = workers.spawn(jobs, log=lines.append)  # real processes, started with spawn
    expected = f"No study database at {missing}; run 'search start' first."
    assert errors == {0: expected, 1: expected}
    assert sorted(lines) == [f"[w0] Error: {expected}", f"[w1] Error: {expected}"]
    assert not missing.exists()


def test_a_study_at_its_total_starts_no_process(private_storage: Path, tmp_path: Path) -> None:
    url = db_url(private_storage)
    rdb = storage.open_storage(url)
    preset = presets.load(write_preset(tmp_path))
    s, _ = study.create_or_load(rdb, "tiny", preset)
    s.add_trial(optuna.create_trial(value=0.5))
    lines: list[str] = []
    workers.run_study(
        s,
        preset,
        1,
        storage=rdb,
        url=url,
        workers=2,
        threads=None,
        fresh=False,
        data_dir=str(tmp_path / "nowhere"),
        log=lines.append,
    )
    assert lines == ["Study 'tiny' already has 1 finished trials (of 1); nothing to do."]


def test_a_worker_error_stops_the_study_without_the_password(
    postgres: Cluster, pg_url: str, tmp_path: Path
) -> None:
    rdb = storage.open_storage(pg_url)
    preset = presets.load(write_preset(tmp_path))
    s, _ = study.create_or_load(rdb, "tiny", preset)
    # The workers fail on the data folder, whose name happens to hold the password.
    nowhere = tmp_path / f"data-{postgres.password}"
    lines: list[str] = []
    with pytest.raises(StudyError) as raised:
        workers.run_study(
            s,
            preset,
            2,
            storage=rdb,
            url=pg_url,
            workers=2,
            threads=None,
            fresh=True,
            data_dir=str(nowhere),
            log=lines.append,
        )
    message = str(raised.value)
    assert message.startswith(("Worker 0 stopped: --data-dir ", "Worker 1 stopped: --data-dir "))
    assert message.endswith("data-*** is not a folder.")
    assert (
        lines[0] == f"Workers: 2 processes, {workers.thread_share(2)} TensorFlow thread(s) "
        f"each, on {workers.cores()} cores."
    )
    assert sum("Error: --data-dir" in line for line in lines) == 2
    for text in (message, *lines):
        assert postgres.password not in text
    assert study.finished(s) == 0  # no trial ran
