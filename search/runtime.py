"""The training runtime of this process: quiet start-up, thread pools, memory."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Log = Callable[[str], None]


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 while TF's C++ start-up notes (CUDA probing, oneDNN) print.

    TF_CPP_MIN_LOG_LEVEL does not reach the lines logged before absl initialises. Python
    exceptions still propagate and print after the descriptor is restored.
    """
    if os.environ.get("SEARCH_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def configure(threads: int | None = None) -> None:
    """Import Keras and its backend quietly and, for worker processes, pin its thread pools."""
    with quiet_stderr():
        import keras  # noqa: F401  (imports TF under the silenced descriptor)
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    try:
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        pass  # the runtime is already initialised (a second call in one process)


def _proc_bytes(path: str, key: str) -> int | None:
    """The value of `key` (a line "Key:  N kB") in a /proc file, in bytes, or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes, or None where that file does not exist."""
    return _proc_bytes("/proc/meminfo", "MemAvailable")


def resident_memory() -> int | None:
    """This process's resident memory (VmRSS) in bytes, or None where /proc does not exist."""
    return _proc_bytes("/proc/self/status", "VmRSS")


def is_oom(error: BaseException) -> bool:
    """Whether a training error means the device or the host ran out of memory."""
    return isinstance(error, MemoryError) or type(error).__name__ == "ResourceExhaustedError"
