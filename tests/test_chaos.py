"""Chaos, Jepsen-style and bounded in time: workers SIGKILLed at random and PostgreSQL restarted
under two studies that run at once, and not one trial lost or counted twice.

One study runs on the suite's PostgreSQL in three `search worker` commands, another on a SQLite
file in two. A driver (the test) kills a random one in the middle of a trial every few
seconds with SIGKILL, its whole process group as a node or a pod dies, and starts a new
`search worker` for its study, as a Kubernetes Job or a supervisor would. Once, with a
PostgreSQL trial under way, it restarts the server (`pg_ctl restart -m fast`, which cuts every
connection). A worker that exits while its study is short of its total is replaced too (a
worker may end with a storage error when the server goes away), up to MAX_EXITS times. After
KILL_SECONDS the faults stop and the workers finish. Then each study must hold exactly its
total of trained trials, each trial's full record, no trial left open, a retry for every trial
that lost its worker, and no retry twice.

The heartbeat is 1 s and the grace 4 s (HEARTBEAT): a killed worker's trial fails in seconds.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from search.define import presets
from search.define.presets import ENQUEUED
from search.store import open_storage, prepare
from search.store.storage import MAX_RETRIES
from search.store.trials import finished, trained
from tests.helpers import HEARTBEAT, check_exact, write_preset
from tests.postgres import Cluster

SEARCH = str(Path(sys.executable).with_name("search"))
pytestmark = pytest.mark.usefixtures("short_heartbeat")

# Tiny trials, 2-5 s each: 1,000 training and 500 validation images, two epochs.
TINY_TRIALS = {
    "epochs = 3": "epochs = 2",
    "val_size = 1000": "val_size = 500",
    "train_size = 2000": "train_size = 1000",
}
THREADS = ("--threads", "1")  # five workers share two cores
TOTALS = {"postgresql": 12, "sqlite": 6}
WORKERS = {"postgresql": 3, "sqlite": 2}
KILL_EVERY_SECONDS = (4.0, 8.0)
KILL_SECONDS = 90  # no fault after this; then the workers finish
TIMEOUT_SECONDS = 300  # the whole run, faults and finish
MAX_EXITS = 40  # workers that exit by themselves while their study is short, replaced
# What a trained trial records (loop._run_one, Objective.start_record, guard, record_epoch).
RECORD = (
    "worker",
    "worker_rss_mb",
    "architecture",
    "seed",
    "config",
    "params",
    "mflops",
    "epochs_trained",
    "best_epoch",
    "val_loss",
    "val_accuracy",
    "seconds_per_epoch",
    "curves",
)
READ_ERRORS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)


@dataclass
class Worker:
    """One `search worker` command, in a process group of its own (as a pod is)."""

    study: str  # "postgresql" or "sqlite"
    process: subprocess.Popen[str]
    log: Path

    def kill(self) -> None:
        """SIGKILL to the command and its worker process at once, as when a node dies."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def pids(self) -> set[int]:
        """The command and its children (the trial's worker process among them)."""
        try:
            out = subprocess.run(
                ["ps", "-o", "pid=", "-g", str(self.process.pid)],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
        except subprocess.TimeoutExpired:
            return {self.process.pid}
        return {int(p) for p in out.split()} | {self.process.pid}


@dataclass
class Audit:
    """What one study's trials show at the end."""

    trials: list[FrozenTrial]
    total: int
    trained: int = 0
    retried: list[int] = field(default_factory=list)  # lost their worker, retried
    exhausted: list[int] = field(default_factory=list)  # lost their worker MAX_RETRIES + 1 times
    failed_by_worker: dict[int, str] = field(default_factory=dict)  # FAIL with a reason
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        trials = self.trials
        self.trained = sum(trained(t) for t in trials)
        if self.trained < self.total:
            self.lost.append(f"{self.trained} trained of {self.total}")
        if self.trained > self.total:
            self.duplicated.append(f"{self.trained} trained of {self.total}")
        numbers = Counter(t.number for t in trials)
        self.duplicated += [f"#{n} stored {c} times" for n, c in numbers.items() if c > 1]
        retries: dict[int, list[FrozenTrial]] = {}
        for t in trials:
            history = t.system_attrs.get("retry_history") or []
            if history:
                retries.setdefault(history[-1], []).append(t)
        for t in trials:
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                self.lost.append(f"#{t.number} left {t.state.name}")
            mine = retries.get(t.number, [])
            if len(mine) > 1:
                self.duplicated.append(f"#{t.number} retried {len(mine)} times")
            if t.state == TrialState.FAIL:
                reason = t.user_attrs.get("reason")
                if mine:
                    self.retried.append(t.number)
                    # A worker killed while its trial was still choosing leaves some params
                    # unchosen; its retry chooses those. Every one the trial had must stay.
                    kept = {k: mine[0].params.get(k) for k in t.params}
                    if kept != t.params:
                        self.lost.append(f"#{t.number}'s retry #{mine[0].number} changed params")
                elif reason:  # its own worker failed it, for a reason: not a lost worker
                    self.failed_by_worker[t.number] = str(reason)
                elif len(t.system_attrs.get("retry_history") or []) >= MAX_RETRIES:
                    self.exhausted.append(t.number)  # by design: not retried forever
                else:
                    self.lost.append(f"#{t.number} lost its worker and has no retry")
            if trained(t):
                self.incomplete += self._missing(t)
        # One trained trial at most per retry chain, and per enqueued run of the preset.
        chains = Counter(
            t.system_attrs.get("failed_trial", t.number) for t in trials if trained(t)
        )
        self.duplicated += [f"chain of #{n} trained {c} times" for n, c in chains.items() if c > 1]
        runs = Counter(
            f"{kind} {t.user_attrs[kind]!r}"
            for t in trials
            if trained(t)
            for kind in ENQUEUED
            if kind in t.user_attrs
        )
        self.duplicated += [f"{run} trained {c} times" for run, c in runs.items() if c > 1]

    @staticmethod
    def _missing(t: FrozenTrial) -> list[str]:
        """What a trained trial's record lacks: its own, trained from its first epoch."""
        missing = [f"#{t.number} has no {key}" for key in RECORD if t.user_attrs.get(key) is None]
        epochs = t.user_attrs.get("epochs_trained") or 0
        curves = t.user_attrs.get("curves") or {}
        if epochs < 1 or any(len(curves.get(k, [])) != epochs for k in ("loss", "val_loss")):
            missing.append(f"#{t.number}: {epochs} epochs but curves of {curves}")
        if sorted(t.intermediate_values) != list(range(epochs)):
            missing.append(f"#{t.number}: epochs {sorted(t.intermediate_values)} reported")
        if t.state == TrialState.COMPLETE and t.value != t.user_attrs.get("val_loss"):
            missing.append(f"#{t.number}: value {t.value} but val_loss {t.user_attrs['val_loss']}")
        return missing

    def line(self, name: str) -> str:
        return (
            f"{name}: trained {self.trained}/{self.total} of {len(self.trials)} trials, "
            f"failed-and-retried {len(self.retried)}, retries exhausted {len(self.exhausted)}, "
            f"failed by their worker {len(self.failed_by_worker)}, lost {len(self.lost)}, "
            f"duplicated {len(self.duplicated)}"
        )


def test_kills_and_a_postgresql_restart_lose_and_duplicate_no_trial(
    postgres: Cluster, pg_url: str, tmp_path: Path, fashion_dir: Path
) -> None:
    began = time.monotonic()
    preset = presets.load_preset(write_preset(tmp_path, "small", **TINY_TRIALS))
    urls = {"postgresql": pg_url, "sqlite": f"sqlite:///{tmp_path / 'chaos.db'}"}
    names = {kind: f"chaos_{kind}" for kind in urls}
    for kind, url in urls.items():
        prepare(preset, url=url, name=names[kind], trials=TOTALS[kind])
    storages = {kind: open_storage(url) for kind, url in urls.items()}
    env = {**os.environ, **HEARTBEAT, "PYTHONUNBUFFERED": "1"}
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    workers: list[Worker] = []
    started: Counter[str] = Counter()
    kills: Counter[str] = Counter()
    exits: list[str] = []  # the workers that exited by themselves while their study was short
    restarts, restarted = 0, "none"

    def start(kind: str) -> None:
        log = tmp_path / f"{kind}-{started[kind]}.log"
        started[kind] += 1
        with log.open("w") as out:
            process = subprocess.Popen(
                [SEARCH, "worker", "--study", names[kind], "--storage", urls[kind], *THREADS],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # its own process group: killed whole
            )
        workers.append(Worker(kind, process, log))

    def study(kind: str) -> optuna.Study:
        return optuna.load_study(study_name=names[kind], storage=storages[kind])

    def short(kind: str) -> bool:
        try:
            return finished(study(kind)) < TOTALS[kind]
        except READ_ERRORS:  # the server is restarting: assume so
            return True

    def running_pids(kind: str, retries_left: bool = False) -> set[int]:
        """The processes of the study's running trials; with `retries_left`, only of those
        that a kill leaves a retry (Optuna retries a trial MAX_RETRIES times, then drops it)."""
        try:
            running = study(kind).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except READ_ERRORS:
            return set()
        return {
            int(str(t.user_attrs.get("worker", ":0")).rsplit(":", 1)[1])
            for t in running
            if not retries_left or len(t.system_attrs.get("retry_history", [])) < MAX_RETRIES
        }

    def victim() -> Worker | None:
        """A random worker in the middle of a trial, of a study short of its total; each
        study's first kill comes before any second one. None while no worker runs a trial."""
        pids = {kind: running_pids(kind, retries_left=True) for kind in urls if short(kind)}
        busy = [w for w in workers if w.study in pids and w.pids() & pids[w.study]]
        return rng.choice([w for w in busy if not kills[w.study]] or busy) if busy else None

    def figures() -> str:
        return (
            f"chaos (seed {seed}): kills {sum(kills.values())} "
            f"(postgresql {kills['postgresql']}, sqlite {kills['sqlite']}), "
            f"postgresql restarts {restarts} ({restarted}), "
            f"workers started {sum(started.values())}, "
            f"exits replaced {len(exits)}, {time.monotonic() - began:.0f} s"
        )

    def logs() -> str:
        tails = [f"--- {p.name}\n" + p.read_text()[-1500:] for p in sorted(tmp_path.glob("*.log"))]
        return "\n".join(tails)[-20000:]

    for kind, count in WORKERS.items():
        for _ in range(count):
            start(kind)
    t0 = time.monotonic()
    next_kill = t0  # the first kill waits for a trial under way
    try:
        while workers:
            now = time.monotonic()
            assert now - t0 < TIMEOUT_SECONDS, f"timed out: {figures()}\n{logs()}"
            for w in [w for w in workers if w.process.poll() is not None]:
                workers.remove(w)
                if short(w.study):  # it gave up early (a lost server, say): replace it
                    exits.append(f"{w.log.name} exit {w.process.returncode}")
                    assert len(exits) <= MAX_EXITS, f"{figures()}: {exits}\n{logs()}"
                    start(w.study)
            chaos = now - t0 < KILL_SECONDS and any(short(k) for k in urls)
            if chaos and now >= next_kill and (target := victim()) is not None:
                target.kill()
                workers.remove(target)
                kills[target.study] += 1
                start(target.study)
                next_kill = now + rng.uniform(*KILL_EVERY_SECONDS)
            # Once, after two kills and with a PostgreSQL trial running: the server restarts.
            if chaos and not restarts and sum(kills.values()) >= 2:
                running = running_pids("postgresql")
                if running or now - t0 > KILL_SECONDS / 2:
                    postgres.restart()
                    restarts += 1
                    restarted = f"at {now - t0:.0f} s, {len(running)} trial(s) running"
            time.sleep(0.5)
    finally:
        for w in workers:
            w.kill()

    audits = {kind: Audit(study(kind).get_trials(), TOTALS[kind]) for kind in urls}
    line = "; ".join([figures(), *(audit.line(kind) for kind, audit in audits.items())])
    lost = sum(len(a.lost) for a in audits.values())
    duplicated = sum(len(a.duplicated) for a in audits.values())
    line += f"; in all: lost {lost}, duplicated {duplicated}"
    print("\n" + line)
    for kind, audit in audits.items():
        if audit.failed_by_worker:
            print(f"{kind}: failed by their worker: {audit.failed_by_worker}")
        assert not audit.lost, f"{line}\n{kind} lost: {audit.lost}\n{logs()}"
        assert not audit.duplicated, f"{line}\n{kind} duplicated: {audit.duplicated}\n{logs()}"
        assert not audit.incomplete, f"{line}\n{kind} records: {audit.incomplete}"
        # The driver kills no trial that has used up its retries: if one did run out, a fault
        # besides the kills (the restart) failed a trial of that chain as well.
        assert not audit.exhausted, f"{line}\n{kind}: retries ran out for {audit.exhausted}"
        check_exact(audit.trials, TOTALS[kind])
    assert kills["postgresql"] and kills["sqlite"] and restarts == 1, line
    assert any(audit.retried for audit in audits.values()), f"no kill hit a trial: {line}"
