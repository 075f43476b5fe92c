"""The training runtime: TensorFlow's start-up kept quiet, its thread pools, and memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from search import runtime

THREADS = """
from search.runtime import configure
configure({threads})
import tensorflow as tf
print(tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
tf.constant(1.0) + 1  # the runtime is initialised: the pools can no longer change
configure(3)  # a second call in one process is harmless
print(tf.config.threading.get_intra_op_parallelism_threads())
"""


def test_configure_pins_the_thread_pools_of_a_worker_and_keeps_start_up_quiet() -> None:
    env = {**os.environ}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the notes quiet_stderr hides would print
    env.pop("SEARCH_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-c", THREADS.format(threads=1)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1", "1"]
    # Without quiet_stderr, TF's C++ start-up prints these before absl reads the log level.
    for note in ("absl::InitializeLog", "cuda drivers", "cpu_feature_guard"):
        assert note not in result.stderr


def test_quiet_stderr_silences_file_descriptor_2_and_restores_it(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SEARCH_DEBUG", raising=False)
    with pytest.raises(ValueError, match="still raised"):
        with runtime.quiet_stderr():
            os.write(2, b"hidden C++ note\n")
            raise ValueError("still raised")
    os.write(2, b"shown after\n")
    monkeypatch.setenv("SEARCH_DEBUG", "1")  # --debug shows everything
    with runtime.quiet_stderr():
        os.write(2, b"shown under --debug\n")
    err = capfd.readouterr().err
    assert "hidden" not in err
    assert "shown after" in err and "shown under --debug" in err


def test_available_memory_reads_the_kernel_s_figure() -> None:
    available = runtime.available_memory()
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total = int(meminfo["MemTotal"].split()[0]) * 1024
    assert available is not None and 0 < available <= total


def test_out_of_memory_is_told_apart_from_other_training_errors() -> None:
    import tensorflow as tf

    assert runtime.is_oom(MemoryError())
    assert runtime.is_oom(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating"))
    assert not runtime.is_oom(tf.errors.InvalidArgumentError(None, None, "bad label"))
    assert not runtime.is_oom(ValueError("out of memory"))  # the type decides, not the words
