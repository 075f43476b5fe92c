"""Sizing: how many worker processes, their threads, and when one is replaced."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from search.define import presets
from search.run import gpus, sizing
from search.store import storage
from search.store.trials import set_total
from tests.helpers import cgroup_tree, db_url, run, write_preset


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
    # Up to what the machine holds; past it refused (until this change, 100 was as asked).
    most = sizing.most_workers(sizing.cores(), sizing.available_memory())
    assert sizing.worker_count(most, db_url(private_storage)) == most
    with pytest.raises(sizing.WorkerError, match=f"--workers {10**6} is more than"):
        sizing.worker_count(10**6, db_url(private_storage))
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
    assert sizing.worker_count(2, url, small) == 2  # a number is taken as given


ALLOWED = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "own, files, cores",
    [
        pytest.param("0::/", {"cpu.max": "50000 100000"}, 1, id="v2: half a core"),
        pytest.param(
            "0::/", {"cpu.max": "150000 100000"}, min(ALLOWED, 2), id="v2: 1.5 rounds up"
        ),
        pytest.param("0::/", {"cpu.max": "max 100000"}, ALLOWED, id="v2: max is no limit"),
        pytest.param(
            "0::/kubepods/pod1/box",
            {
                "kubepods/cpu.max": "50000 100000",
                "kubepods/pod1/cpu.max": "300000 100000",
                "kubepods/pod1/box/cpu.max": "max 100000",
            },
            1,
            id="v2 nested: the tightest along the path",
        ),
        pytest.param("0::/kubepods/pod1", {"cpu.max": "20000 100000"}, 1, id="v2 in a namespace"),
        pytest.param(
            "2:cpu,cpuacct:/docker/x\n0::/",
            {
                "cpu,cpuacct/cpu.cfs_quota_us": "-1",
                "cpu,cpuacct/cpu.cfs_period_us": "100000",
                "cpu,cpuacct/docker/x/cpu.cfs_quota_us": "50000",
                "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000",
            },
            1,
            id="v1",
        ),
        pytest.param(
            "2:cpu,cpuacct:/",
            {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
            ALLOWED,
            id="v1: -1 is no quota",
        ),
        pytest.param("0::/", {}, ALLOWED, id="no limit files: the affinity"),
    ],
)
def test_the_cores_are_the_affinity_or_fewer_by_the_cgroup_s_quota(
    tmp_path: Path, own: str, files: dict[str, str], cores: int
) -> None:
    assert sizing.cores(*cgroup_tree(tmp_path, own, files)) == cores


def test_without_a_cgroup_tree_the_cores_are_the_affinity(tmp_path: Path) -> None:
    assert sizing.cores(tmp_path / "missing", tmp_path / "missing") == ALLOWED
    assert sizing.cores(tmp_path, tmp_path / "missing") == ALLOWED


def test_the_most_workers_a_machine_holds_is_four_a_core_and_what_memory_holds() -> None:
    assert sizing.most_workers(2, None) == 2 * sizing.PER_CORE
    assert sizing.most_workers(2, 3 * 2**30) == 2  # a 4 GiB pod holding 1 GiB: 1.5 GiB each
    assert sizing.most_workers(64, 3 * 2**30) == 2
    assert sizing.most_workers(1, 0) == 1  # one worker is never refused


def test_more_workers_than_the_machine_holds_are_refused_in_one_sentence(
    tmp_path: Path, private_storage: Path
) -> None:
    preset = presets.load_preset(write_preset(tmp_path))
    study = optuna.create_study(
        storage=storage.open_storage(db_url(private_storage)), study_name="tiny"
    )
    study.set_user_attr("preset", preset.to_json())
    set_total(study, 2)
    result = run("worker", "--study", "tiny", "--workers", "100000")
    assert result.exit_code == 1, result.output
    error = result.output.strip().splitlines()[-1]
    held = f"this machine holds: {sizing.cores()} core"
    assert error.startswith(f"Error: --workers 100000 is more than {held}")
    assert error.endswith(" or fewer.") and "use --workers auto, or --workers " in error
    assert error.count(". ") == 0 and "Traceback" not in result.output
