"""Many workers on one study: the commands end to end, in real processes.

`search start --workers N` and `search worker` run with TensorFlow on a Fashion-MNIST subset,
on real PostgreSQL and SQLite storages, including a worker killed with SIGKILL in the middle of
a trial and Ctrl-C. The trial loop's own race (many processes on a fresh database) is in
test_loop.py; the worker count in test_workers.py.
"""

from __future__ import annotations

import os
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
from optuna.trial import TrialState

from search.cli import cli
from search.define import presets
from search.store import storage, study
from search.store.trials import FINISHED, set_total
from tests.helpers import HEARTBEAT, check_exact, db_url, popen, run, write_preset
from tests.postgres import Cluster

SEARCH = str(Path(sys.executable).parent / "search")
pytestmark = pytest.mark.usefixtures("short_heartbeat")  # a dead worker's trial fails in 4 s


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


def test_start_and_a_joining_worker_share_a_postgresql_study_and_never_print_the_password(
    postgres: Cluster, pg_url: str, tmp_path: Path, fashion_dir: Path
) -> None:
    assert postgres.password in pg_url
    preset = write_preset(tmp_path, "small")
    # Enough trials that the joining worker, which imports TensorFlow first, still finds some.
    start = popen(
        [SEARCH, "start", "--preset", str(preset), "--trials", "8"],
        env=env(SEARCH_STORAGE=pg_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        rdb = storage.open_storage(pg_url)
        wait_for(
            lambda: (
                "tiny" in study.names(rdb)
                and "trials" in optuna.load_study(study_name="tiny", storage=rdb).user_attrs
            ),
            120,
            "the study and its total",
        )
        joined = subprocess.run(
            [SEARCH, "worker", "--study", "tiny", "--storage", pg_url],
            env=env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        out, _ = start.communicate(timeout=300)
    finally:
        start.kill()
    assert start.returncode == 0, out
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert "Joining study 'tiny'" in joined.stdout and "search:***@127.0.0.1" in joined.stdout
    trials = optuna.load_study(study_name="tiny", storage=pg_url).get_trials()
    check_exact(trials, 8)
    by_worker = {t.user_attrs["worker"] for t in trials if t.state in FINISHED}
    assert len(by_worker) == 2  # the start process and the joined worker both ran trials

    status = run("status", "--storage", pg_url, "--study", "tiny")
    assert status.exit_code == 0 and "search:***@" in status.output
    wrong = run("worker", "--storage", pg_url.replace(postgres.password, postgres.password + "x"))
    assert wrong.exit_code == 1 and "password authentication failed" in wrong.output
    for output in (out, joined.stdout, joined.stderr, status.output, wrong.output):
        assert postgres.password not in output


def two_long_workers(url: str, tmp_path: Path, trials: int) -> subprocess.Popen[str]:
    """`search start` of unpruned six-epoch trials in two workers, its output piped."""
    preset = write_preset(tmp_path, "small", "long", pruner="none")
    return popen(
        [SEARCH, "start", "--preset", str(preset), "--trials", str(trials), "--workers", "2"],
        env=env(SEARCH_STORAGE=url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_a_worker_killed_mid_trial_loses_nothing(
    private_storage: Path, tmp_path: Path, fashion_dir: Path
) -> None:
    url = db_url(private_storage)
    # Every trial trains six epochs: on a quiet machine, three-epoch trials of two workers
    # overlap too briefly for a poll to find one in its second epoch beside the other's.
    start = two_long_workers(url, tmp_path, trials=4)

    def victim() -> optuna.trial.FrozenTrial | None:
        # A trial in its second epoch while the other worker has a trial running too.
        if not (private_storage / "search.db").exists():
            return None
        try:
            # Through the product's storage: it waits while `start` creates the tables.
            running = optuna.load_study(
                study_name="tiny", storage=storage.open_storage(url, must_exist=True)
            ).get_trials(states=(TrialState.RUNNING,))
        except (KeyError, ValueError):  # the study is still being created
            return None
        trained = [
            t
            for t in running
            if t.user_attrs.get("epochs_trained", 0) >= 1 and t.user_attrs.get("worker")
        ]
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
    assert "killed by signal 9; its trial is retried, and a new process takes its place." in out
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    killed = trials[trial.number]  # type: ignore[union-attr]
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    # Trained again from its first epoch, by the worker that survived or the one that replaced
    # the killed one.
    assert 0 in retry.intermediate_values
    assert retry.user_attrs["worker"] != killed.user_attrs["worker"]
    check_exact(trials, 4)
    print(
        f"killed trial #{killed.number} (pid {pid}); retried as #{retry.number}; the study "
        f"finished {time.monotonic() - killed_at:.0f} s after the kill"
    )


def test_ctrl_c_stops_every_worker_process_and_leaves_no_trial_running(
    private_storage: Path, tmp_path: Path, fashion_dir: Path
) -> None:
    url = db_url(private_storage)
    # popen: the Ctrl-C below reaches it even where pytest runs with SIGINT ignored.
    start = two_long_workers(url, tmp_path, trials=3)
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
    result = run("worker", "--study", "tiny")
    assert result.exit_code == 1 and "No study database" in result.output
    rdb = storage.open_storage(db_url(private_storage))
    preset = presets.load_preset(write_preset(tmp_path))
    # A study an older search made, before every study recorded its trial total.
    s = optuna.create_study(storage=rdb, study_name="tiny")
    s.set_user_attr("preset", preset.to_json())
    result = run("worker", "--study", "tiny")
    assert result.exit_code == 1 and "no trial total yet" in result.output
    result = run("worker", "--study", "other")
    assert result.exit_code == 1 and "No study named 'other'" in result.output
    for bad in ("0", "-2", "many"):
        result = run("worker", "--study", "tiny", "--workers", bad)
        assert result.exit_code == 2 and "neither a positive number nor 'auto'" in result.output
    # A study at its total: the worker has nothing to do and says so, without loading data.
    set_total(s, 2)
    for value in (0.5, 0.4):
        s.add_trial(optuna.create_trial(value=value, params={}, distributions={}))
    result = run("worker", "--study", "tiny", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "2 of 2 trials finished" in result.output and "nothing to do" in result.output
    assert "Traceback" not in result.output


ROOT = Path(__file__).resolve().parent.parent


def compose_config(tmp_path: Path, env_file: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config`: the file resolved and validated, without a Docker engine."""
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.fail("docker-compose is missing: run 'bash .ci/setup --test'.")
    (tmp_path / "env").write_text(env_file)
    return subprocess.run(
        [
            executable,
            "-f",
            str(ROOT / "docker-compose.yml"),
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(tmp_path / "env"),
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"]},
    )


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
    presets.load_preset(worker["command"][3])  # the preset ships in the image's studies/
    for copied in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.M):
        for source in copied.split():
            assert (ROOT / source).exists(), source
