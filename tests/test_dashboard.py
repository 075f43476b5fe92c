"""`search dashboard`: real optuna-dashboard on a real tiny study, looked at in real Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib.image import imread

from search.define import presets
from search.store import study
from tests.helpers import db_url, popen, run, write_preset

CHROMIUM = "/usr/bin/chromium"
SEARCH = str(Path(sys.executable).with_name("search"))  # the installed console script
STUDY = "dash-check-study"  # a name no page of the dashboard holds by itself


class Server:
    """A `search dashboard` subprocess and what it has printed so far."""

    def __init__(self, *args: str) -> None:
        # popen: Ctrl-C reaches it even where pytest runs with SIGINT ignored (`pytest &`).
        self.proc = popen(
            [SEARCH, "dashboard", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(
                target=lambda s=stream, ls=lines: ls.extend(iter(s.readline, "")), daemon=True
            ).start()

    def url(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.out:
                if line.startswith("optuna-dashboard: "):
                    return line.split()[1]
            assert self.proc.poll() is None, "".join(self.out + self.err)
            time.sleep(0.1)
        raise AssertionError("no URL printed: " + "".join(self.out + self.err))

    def stop(self) -> int:
        """Ctrl-C, as a user stops it."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)


@contextmanager
def dashboard(*args: str) -> Iterator[Server]:
    server = Server(*args)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def port_of(url: str) -> int:
    """The port of a URL that the dashboard printed, http://HOST:PORT/dashboard..."""
    return int(url.split(":")[2].split("/")[0])


def listening(port: int) -> list[str]:
    """The local addresses a socket listens on at `port`, read from the kernel's tables."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.append(".".join(str(b) for b in reversed(raw)))
                else:
                    found.append(raw.hex())
    return found


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def chromium(url: str, *args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory, fashion_dir: Path) -> str:
    """A two-trial search, shared by this module; returns its storage URL."""
    folder = tmp_path_factory.mktemp("dashboard")
    url = db_url(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEARCH_DIR", str(folder))
        result = run(
            "start",
            "--preset",
            str(write_preset(folder)),
            "--trials",
            "2",
            "--study",
            STUDY,
            "--storage",
            url,
        )
    assert result.exit_code == 0, result.output
    return url


def test_the_dashboard_shows_the_study_in_a_real_browser(tiny_study: str, artifacts: Path) -> None:
    if not shutil.which(CHROMIUM):
        pytest.fail("Chromium is missing: run 'bash .ci/setup --test'.")
    trials = optuna.load_study(study_name=STUDY, storage=tiny_study).get_trials()
    with dashboard("--study", STUDY, "--port", "0", "--storage", tiny_study) as server:
        url = server.url()
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/dashboard/studies/(\d+)", url)
        assert match, url
        port, study_id = int(match[1]), int(match[2])
        # Bound to loopback alone by default, so no warning.
        assert listening(port) == ["127.0.0.1"]
        assert "Warning" not in "".join(server.err)
        assert tiny_study.removeprefix("sqlite:///") in "".join(server.out)  # the storage

        # optuna-dashboard's own API lists the study and its trials with their records.
        base = f"http://127.0.0.1:{port}"
        names = {
            s["study_name"]: s["study_id"]
            for s in get_json(f"{base}/api/studies")["study_summaries"]
        }
        assert names == {STUDY: study_id}
        detail = get_json(f"{base}/api/studies/{study_id}")
        assert [t["number"] for t in detail["trials"]] == [t.number for t in trials]
        first = {a["key"]: a["value"] for a in detail["trials"][0]["user_attrs"]}
        assert first["architecture"] == trials[0].user_attrs["architecture"]
        assert first["params"] == str(trials[0].user_attrs["params"])
        assert detail["objective_names"] == ["val_loss"]
        study_attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
        assert study_attrs["dataset"] == "fashion_mnist" and study_attrs["preset_name"] == "tiny"

        # The page, after its JavaScript ran, names the study and the objective.
        dom = chromium(url, "--dump-dom")
        assert STUDY in dom
        assert "val_loss" in dom
        assert "fashion_mnist" in dom  # the study's attributes are on the page
        shot = artifacts / "dashboard.png"
        shot.unlink(missing_ok=True)
        chromium(url, f"--screenshot={shot}", "--window-size=1280,800")
        pixels = imread(shot)
        assert pixels.shape[:2] == (800, 1280) and float(np.var(pixels[..., :3])) > 0.001

        assert server.stop() == 0
    assert "Dashboard stopped." in "".join(server.out)
    assert listening(port) == []


def test_binding_beyond_loopback_warns_that_there_is_no_authentication(
    tiny_study: str,
) -> None:
    with dashboard("--host", "0.0.0.0", "--port", "0", "--storage", tiny_study) as server:
        url = server.url()
        port = port_of(url)
        assert listening(port) == ["0.0.0.0"]
        warning = "".join(server.err)
        assert "Warning: listening on 0.0.0.0" in warning and "no authentication" in warning
        assert get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        assert server.stop() == 0


def test_dashboard_mistakes_are_one_sentence(tiny_study: str, private_storage: Path) -> None:
    result = run("dashboard", "--study", "nothing", "--storage", tiny_study)
    assert result.exit_code == 1 and "No study named 'nothing'" in result.output
    with dashboard("--port", "0", "--storage", tiny_study) as server:
        port = port_of(server.url())
        result = run("dashboard", "--port", str(port), "--storage", tiny_study)
        assert result.exit_code == 1
        assert f"Port {port} on 127.0.0.1 is already in use" in result.output
        assert server.stop() == 0
    result = run("dashboard", "--storage", f"sqlite:///{private_storage / 'typo.db'}")
    assert result.exit_code == 1 and "No study database" in result.output
    assert not (private_storage / "typo.db").exists()  # a read-only command creates nothing
    assert "Traceback" not in result.output


SHOW_SIGINT = "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"


def test_ctrl_c_stops_the_dashboard_when_the_tests_themselves_ignore_sigint(
    tmp_path: Path, private_storage: Path
) -> None:
    """As under `pytest &` in a script, which starts pytest with SIGINT ignored."""
    url = db_url(private_storage)
    study.prepare(presets.load_preset(write_preset(tmp_path)), url=url, name="tiny")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # What the tests work around: an ignored SIGINT is inherited by a child as it is...
        plain = subprocess.run(
            [sys.executable, "-c", SHOW_SIGINT], capture_output=True, text=True, check=True
        )
        assert plain.stdout.split() == ["True"]
        # ...and popen gives it the default back.
        restored = popen([sys.executable, "-c", SHOW_SIGINT], stdout=subprocess.PIPE)
        assert restored.communicate(timeout=60)[0].split() == ["False"]
        with dashboard("--port", "0", "--storage", url) as server:
            port = port_of(server.url())
            assert server.stop() == 0  # Ctrl-C
        assert "Dashboard stopped." in "".join(server.out)
        assert listening(port) == []
    finally:
        signal.signal(signal.SIGINT, previous)
