"""Many workers on one study: real processes on real PostgreSQL and SQLite storages.

The trial loop is tested the way Optuna tests its storages: several processes start at the
same moment on a fresh database. The commands are tested end to end with TensorFlow on a
Fashion-MNIST subset, including a worker killed with SIGKILL in the middle of a trial.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from search import loop, presets, storage, study, workers
from search.cli import cli
from tests.conftest import write_preset
from tests.postgres import Cluster

SEARCH = str(Path(sys.executable).parent / "search")
HEARTBEAT = {storage.ENV_HEARTBEAT: "1", storage.ENV_GRACE: "4"}


@pytest.fixture(autouse=True)
def short_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead worker's trial is failed after 4 s instead of 2 minutes."""
    for key, value in HEARTBEAT.items():
        monkeypatch.setenv(key, value)


def quick_trial(trial: optuna.Trial) -> float:
    """Writes what a real trial writes, with some failed and pruned trials, but trains nothing."""
    x = trial.suggest_float("x", -1, 1)
    for step in range(3):
        time.sleep(random.uniform(0, 0.03))
        trial.report(x * x, step)
        trial.set_user_attr("epochs_trained", step + 1)
    if x > 0.8:
        raise ValueError("a configuration that fails")  # FAIL: not counted, the worker goes on
    if x < -0.8:
        raise optuna.TrialPruned()
    return x * x


def join_and_run(url: str, preset: str, total: int, ready: object,
                 results: multiprocessing.Queue) -> None:
    """One worker process: open the storage, create or join the study, run trials."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        ready.wait()  # type: ignore[attr-defined]  # all processes hit the fresh database at once
        rdb = storage.open_storage(url)
        s, _ = study.create_or_load(rdb, "race", presets.load(preset))
        loop.run_trials(s, quick_trial, total, storage=rdb, log=lambda line: None)
        results.put("ok")
    except BaseException as e:  # reported to the test, whatever it is
        results.put(f"{type(e).__name__}: {e}")


def race(url: str, preset: Path, processes: int, total: int) -> list[optuna.trial.FrozenTrial]:
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes)
    results: multiprocessing.Queue = context.Queue()
    started = [context.Process(target=join_and_run,
                               args=(url, str(preset), total, ready, results))
               for _ in range(processes)]
    for p in started:
        p.start()
    outcomes = [results.get(timeout=180) for _ in started]
    for p in started:
        p.join(timeout=30)
    assert outcomes == ["ok"] * processes  # no storage error in any worker
    assert [p.exitcode for p in started] == [0] * processes
    return optuna.load_study(study_name="race", storage=url).get_trials()


def check_exact(trials: list[optuna.trial.FrozenTrial], total: int) -> None:
    states = [t.state for t in trials]
    assert sum(s in study.FINISHED for s in states) == total  # exactly, not at least
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # unique, without gaps
    workers_seen = {t.user_attrs.get("worker") for t in trials}
    assert len(workers_seen) > 1  # the trials really were shared out


def test_six_workers_on_a_fresh_postgresql_database_stop_at_exactly_the_total(
    pg_url: str, tmp_path: Path
) -> None:
    trials = race(pg_url, write_preset(tmp_path), processes=6, total=30)
    check_exact(trials, 30)
    assert any(t.state == TrialState.FAIL for t in trials)  # failures were not counted...
    assert any(t.state == TrialState.PRUNED for t in trials)  # ...pruned trials were


def test_four_workers_on_one_sqlite_file_stop_at_exactly_the_total(
    private_storage: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{private_storage / 'search.db'}"
    trials = race(url, write_preset(tmp_path), processes=4, total=16)
    check_exact(trials, 16)


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, **HEARTBEAT, "PYTHONUNBUFFERED": "1", **extra}


def wait_for(condition: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def small_preset(folder: Path, pruner: str = "sha") -> Path:
    # 2,000 training images: trials of a few seconds an epoch that still learn.
    return write_preset(folder, pruner=pruner, **{"train_size = 5000": "train_size = 2000"})


def test_start_and_a_joining_worker_share_a_postgresql_study_and_never_print_the_password(
    postgres: Cluster, pg_url: str, tmp_path: Path, fashion_dir: Path
) -> None:
    assert postgres.password in pg_url
    preset = small_preset(tmp_path)
    # Enough trials that the joining worker, which imports TensorFlow first, still finds some.
    start = subprocess.Popen([SEARCH, "start", "--preset", str(preset), "--trials", "8"],
                             env=env(SEARCH_STORAGE=pg_url), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        rdb = storage.open_storage(pg_url)
        wait_for(lambda: "tiny" in study.names(rdb) and "trials" in optuna.load_study(
            study_name="tiny", storage=rdb).user_attrs, 120, "the study and its total")
        joined = subprocess.run([SEARCH, "worker", "--study", "tiny", "--storage", pg_url],
                                env=env(), capture_output=True, text=True, timeout=300)
        out, _ = start.communicate(timeout=300)
    finally:
        start.kill()
    assert start.returncode == 0, out
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert "Joining study 'tiny'" in joined.stdout and "search:***@127.0.0.1" in joined.stdout
    trials = optuna.load_study(study_name="tiny", storage=pg_url).get_trials()
    check_exact(trials, 8)
    by_worker = {t.user_attrs["worker"] for t in trials if t.state in study.FINISHED}
    assert len(by_worker) == 2  # the start process and the joined worker both ran trials

    status = CliRunner().invoke(cli, ["status", "--storage", pg_url, "--study", "tiny"])
    assert status.exit_code == 0 and "search:***@" in status.output
    wrong = CliRunner().invoke(cli, ["worker", "--storage",
                                     pg_url.replace(postgres.password, postgres.password + "x")])
    assert wrong.exit_code == 1 and "password authentication failed" in wrong.output
    for output in (out, joined.stdout, joined.stderr, status.output, wrong.output):
        assert postgres.password not in output


def test_a_worker_killed_mid_trial_loses_nothing(
    private_storage: Path, tmp_path: Path, fashion_dir: Path
) -> None:
    url = f"sqlite:///{private_storage / 'search.db'}"
    preset = small_preset(tmp_path, pruner="none")  # every trial trains all three epochs
    start = subprocess.Popen([SEARCH, "start", "--preset", str(preset), "--trials", "4",
                              "--workers", "2"],
                             env=env(SEARCH_STORAGE=url), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)

    def victim() -> optuna.trial.FrozenTrial | None:
        # A trial in its second epoch while the other worker has a trial running too.
        if not (private_storage / "search.db").exists():
            return None
        try:
            running = optuna.load_study(study_name="tiny", storage=url).get_trials(
                states=(TrialState.RUNNING,))
        except (KeyError, ValueError):  # the study is still being created
            return None
        trained = [t for t in running if t.user_attrs.get("epochs_trained", 0) >= 1
                   and t.user_attrs.get("worker")]
        return trained[0] if trained and len(running) == 2 else None

    try:
        trial = wait_for(victim, 180, "a trial in its second epoch")
        pid = int(trial.user_attrs["worker"].rsplit(":", 1)[1])  # type: ignore[union-attr]
        assert pid != start.pid  # a worker process, not the parent
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        out, _ = start.communicate(timeout=300)
    finally:
        start.kill()
    assert start.returncode == 0, out
    assert "was killed by signal 9" in out
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    killed = trials[trial.number]  # type: ignore[union-attr]
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    # Trained again from its first epoch, by the worker that survived.
    assert 0 in retry.intermediate_values
    assert retry.user_attrs["worker"] != killed.user_attrs["worker"]
    check_exact(trials, 4)
    print(f"killed trial #{killed.number} (pid {pid}); retried as #{retry.number}; the study "
          f"finished {time.monotonic() - killed_at:.0f} s after the kill")


def test_ctrl_c_stops_every_worker_process_and_leaves_no_trial_running(
    private_storage: Path, tmp_path: Path, fashion_dir: Path
) -> None:
    url = f"sqlite:///{private_storage / 'search.db'}"
    preset = write_preset(tmp_path, pruner="none", **{
        "train_size = 5000": "train_size = 2000", "epochs = 3": "epochs = 6",
        "patience = 1": "patience = 9"})
    start = subprocess.Popen([SEARCH, "start", "--preset", str(preset), "--trials", "3",
                              "--workers", "2"],
                             env=env(SEARCH_STORAGE=url), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    assert start.stdout is not None
    lines, training = [], set()
    deadline = time.monotonic() + 180
    for line in start.stdout:  # until both workers are in a trial's second epoch
        lines.append(line)
        if "epoch 1/6" in line:
            training.add(line.split()[0])
        if training == {"[w0]", "[w1]"} or time.monotonic() > deadline:
            break
    start.send_signal(signal.SIGINT)  # to the parent alone: it must stop its workers itself
    out, _ = start.communicate(timeout=120)
    output = "".join(lines) + out
    assert start.returncode == 130, output
    assert "rerun the same command to resume" in output and "Traceback" not in output
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert [t.state for t in trials].count(TrialState.FAIL) == 2  # each worker's trial
    assert TrialState.RUNNING not in [t.state for t in trials]
    for trial in trials:
        pid = int(trial.user_attrs["worker"].rsplit(":", 1)[1])
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # no worker process outlived the command


def test_worker_errors_are_one_sentence(tmp_path: Path, private_storage: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["worker", "--study", "tiny"])
    assert result.exit_code == 1 and "No study database" in result.output
    url = f"sqlite:///{private_storage / 'search.db'}"
    rdb = storage.open_storage(url)
    preset = presets.load(write_preset(tmp_path))
    s, _ = study.create_or_load(rdb, "tiny", preset)
    result = runner.invoke(cli, ["worker", "--study", "tiny"])
    assert result.exit_code == 1 and "no trial total yet" in result.output
    result = runner.invoke(cli, ["worker", "--study", "other"])
    assert result.exit_code == 1 and "No study named 'other'" in result.output
    for bad in ("0", "-2", "many"):
        result = runner.invoke(cli, ["worker", "--study", "tiny", "--workers", bad])
        assert result.exit_code == 2 and "neither a positive number nor 'auto'" in result.output
    # A study at its total: the worker has nothing to do and says so, without loading data.
    study.set_total(s, 2)
    for value in (0.5, 0.4):
        s.add_trial(optuna.create_trial(value=value, params={}, distributions={}))
    result = runner.invoke(cli, ["worker", "--study", "tiny", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "2 of 2 trials finished" in result.output and "nothing to do" in result.output
    assert "Traceback" not in result.output


def test_auto_uses_the_cores_this_process_may_run_on(private_storage: Path) -> None:
    url = f"sqlite:///{private_storage / 'search.db'}"
    code = ("import os; from search import workers; os.sched_setaffinity(0, {0}); "
            f"print(workers.count('auto', {url!r}), workers.thread_share(1))")
    pinned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert pinned.stdout.split() == ["1", "1"]
    expected = min(workers.cores(), workers.SQLITE_WORKERS,
                   (workers.available_memory() or 2**60) // workers.WORKER_BYTES)
    assert workers.count("auto", url) == max(1, expected)
    assert workers.thread_share(2) == max(1, workers.cores() // 2)


ROOT = Path(__file__).resolve().parent.parent


def compose_config(tmp_path: Path, env_file: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config`: the file resolved and validated, without a Docker engine."""
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.fail("docker-compose is missing: run 'bash .ci/setup --test'.")
    (tmp_path / "env").write_text(env_file)
    return subprocess.run(
        [executable, "-f", str(ROOT / "docker-compose.yml"), "--project-directory", str(ROOT),
         "--env-file", str(tmp_path / "env"), "config"],
        capture_output=True, text=True, timeout=120, env={"PATH": os.environ["PATH"]})


def test_docker_compose_file_is_valid_scalable_and_keeps_the_password_out_of_commands(
    tmp_path: Path,
) -> None:
    missing = compose_config(tmp_path, "")
    assert missing.returncode != 0 and "set POSTGRES_PASSWORD in .env" in missing.stderr
    example = compose_config(tmp_path, (ROOT / ".env.example").read_text())
    assert example.returncode == 0, example.stderr

    password = "pw-compose-check"
    result = compose_config(tmp_path, f"POSTGRES_PASSWORD={password}\nSEARCH_TRIALS=12\n")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert set(services) == {"db", "dashboard", "worker"}

    db = services["db"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert "pgdata:/var/lib/postgresql/data:rw" in db["volumes"] and "pgdata" in config["volumes"]
    assert db["environment"]["POSTGRES_PASSWORD"] == password
    assert "ports" not in db  # the database is reached only inside the compose network

    dashboard = services["dashboard"]
    assert [p.split(":")[0] for p in dashboard["ports"]] == ["127.0.0.1"]  # loopback only

    worker = services["worker"]
    # --scale needs replicas that differ in nothing: no fixed name, no published port.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["build"]["context"] == str(ROOT) and (ROOT / "Dockerfile").is_file()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ENV SEARCH_DIR=/data" in dockerfile and "search-data:/data:rw" in worker["volumes"]
    for name in ("dashboard", "worker"):
        service = services[name]
        assert service["depends_on"]["db"]["condition"] == "service_healthy"
        environment = service["environment"]
        assert environment["PGPASSWORD"] == password  # from the env file...
        assert password not in environment["SEARCH_STORAGE"]  # ...not in the URL
        assert password not in " ".join(service["command"])  # nor on a command line
        # The command is one the CLI accepts, with options of the right types.
        command = service["command"]
        assert command[0] == "search"
        cli.commands[command[1]].make_context(command[1], command[2:])
    assert worker["command"][2:] == ["--preset", "fashion_mnist", "--trials", "12"]
    presets.load(worker["command"][3])  # the preset ships in the image's studies/
    for copied in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.M):
        for source in copied.split():
            assert (ROOT / source).exists(), source
