"""The training runtime of this process: the Keras backend, quiet start-up, threads, memory.

Keras 3 runs the same models on TensorFlow, JAX or PyTorch, chosen by KERAS_BACKEND before
Keras is first imported. Nothing here imports a backend that is not the chosen one.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from search.errors import SearchError, debugging
from search.train import cgroup

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_BACKEND = "tensorflow"
ENV_BACKEND = "KERAS_BACKEND"
INSTALL = {"tensorflow": "search", "jax": "search[jax]", "torch": "search[torch]"}
# Error types that mean a device or the host ran out of memory: TensorFlow's, and PyTorch's
# torch.OutOfMemoryError. JAX raises JaxRuntimeError (XlaRuntimeError before) for every XLA
# failure; only its status code, first in the message, tells an out-of-memory one apart.
OOM_TYPES = ("ResourceExhaustedError", "OutOfMemoryError")
XLA_ERRORS = ("JaxRuntimeError", "XlaRuntimeError")


class BackendError(SearchError):
    """The Keras backend asked for cannot be used."""


def _known(name: str) -> str:
    if name not in BACKENDS:
        raise BackendError(
            f"{ENV_BACKEND}={name!r} is not a backend this search runs on; set it to "
            f"{', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}."
        )
    return name


def backend() -> str:
    """The backend this process uses or will use: KERAS_BACKEND, else TensorFlow."""
    return _known(os.environ.get(ENV_BACKEND) or DEFAULT_BACKEND)


def select(name: str | None = None) -> str:
    """Make `name` (default: KERAS_BACKEND, else TensorFlow) the backend, before Keras loads.

    It goes into this process's environment, so worker processes spawned later inherit it;
    a backend that cannot be used changes nothing.
    """
    name = _known(name) if name else backend()
    if "keras" in sys.modules:  # Keras fixed its backend when it was imported
        running = sys.modules["keras"].backend.backend()
        if running != name:
            raise BackendError(
                f"Keras already runs on {running} in this process; start a new process "
                f"to use {name}."
            )
    elif importlib.util.find_spec(name) is None:
        raise BackendError(
            f"The {name} backend is not installed; install it with "
            f"pip install '{INSTALL[name]}' (README: GPU and backends)."
        )
    os.environ[ENV_BACKEND] = name
    return name


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 while TF's C++ start-up notes (CUDA probing, oneDNN) print.

    TF_CPP_MIN_LOG_LEVEL does not reach the lines logged before absl initialises. Python
    exceptions still propagate and print after the descriptor is restored.
    """
    if debugging():
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


def configure(threads: int | None = None, cpus: Sequence[int] = ()) -> None:
    """Import Keras and its backend quietly; for worker processes, bound the threads they use.

    `threads` sizes TensorFlow's and PyTorch's thread pools. XLA's CPU client (JAX) sizes its
    pool by the cores the process may run on, and ignores XLA_FLAGS' Eigen switch (measured:
    four busy threads on two cores either way, one when pinned), so a JAX worker is pinned to
    `cpus`, or to the first `threads` cores it may use.
    """
    name = select()
    # JAX would take 75 % of a GPU's memory at its first operation; several trial processes
    # share a card only if each takes what it uses.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if name == "jax" and (cpus or threads) and "jax" not in sys.modules:
        allowed = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, cpus or allowed[:threads])
    with quiet_stderr():
        import keras  # noqa: F401  (imports the backend under the silenced descriptor)

        if name == "tensorflow":
            _tensorflow(threads)
        else:
            _without_tensorflow()
    if name == "torch" and threads:
        _torch(threads)


def _without_tensorflow() -> None:
    """Keep Keras on JAX or PyTorch from importing TensorFlow where it is installed.

    keras.utils.set_random_seed, which every trial calls, also seeds TensorFlow for tf.data
    pipelines whenever TensorFlow can be imported, and importing it costs seconds and memory
    in every worker. The search feeds NumPy arrays, so Keras is told TensorFlow is absent.
    """
    from keras.src.utils import module_utils

    lazy = getattr(module_utils, "tensorflow", None)
    if lazy is not None and getattr(lazy, "module", None) is None:
        lazy._available = False


def _tensorflow(threads: int | None) -> None:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    try:
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        for gpu in gpus:  # several workers share a card instead of the first taking it all
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        pass  # the runtime is already initialised (a second call in one process)


def _torch(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass  # fixed once PyTorch ran its first parallel work (a second call in one process)


def devices() -> str:
    """The backend and the devices it trains on, such as 'jax on cpu (1 device)'."""
    import keras

    name = keras.backend.backend()
    if name == "torch":  # Keras has no device list for PyTorch
        import torch

        count = torch.cuda.device_count()
        kind = "gpu" if count else "cpu"
        count = count or 1
    else:
        found = keras.distribution.list_devices()  # GPUs where there are any, else the CPU
        kind, count = found[0].split(":")[0], len(found)
    return f"{name} on {kind} ({count} device{'' if count == 1 else 's'})"


def compile_options(steps_per_execution: int) -> dict[str, Any]:
    """`model.compile` settings for the backend Keras runs on (benchmarks/backends.py).

    - JAX: XLA always. Without it each operation runs on its own: on one H200 the first
      epoch took 93-107 s instead of 7-9 s; on two CPU cores an epoch took 1.8x as long
      (4.78 against 2.65 times TensorFlow's). 16 steps per call or 1 made no difference on
      the CPU (2.65, 2.63); on the H200, 16 was 1.3-2.1x as fast (plain Keras).
    - TensorFlow: Keras's "auto", which is XLA on a GPU and none on a CPU, where XLA made an
      epoch 2.27x as long.
    - PyTorch: eager, as Keras's "auto" is there, and one step per call: PyTorch refuses more
      (`steps_per_execution must be 1 with the PyTorch backend`).
    """
    import keras

    name = keras.backend.backend()
    return {
        "jit_compile": {"jax": True, "tensorflow": "auto"}.get(name, False),
        "steps_per_execution": 1 if name == "torch" else steps_per_execution,
    }


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


def available_memory(
    root: Path = cgroup.ROOT, own: Path = cgroup.OWN, meminfo: str = "/proc/meminfo"
) -> int | None:
    """The bytes this process may still take: MemAvailable, or less where its cgroup's limit
    (a container's) leaves less; None where neither can be read.

    /proc/meminfo shows the host's memory, and past a pod's limit the kernel kills.
    """
    found = (_proc_bytes(meminfo, "MemAvailable"), cgroup.memory_room(root, own))
    return min((n for n in found if n is not None), default=None)


def resident_memory() -> int | None:
    """This process's resident memory (VmRSS) in bytes, or None where /proc does not exist."""
    return _proc_bytes("/proc/self/status", "VmRSS")


def is_oom(error: BaseException) -> bool:
    """Whether a training error means the device or the host ran out of memory.

    Told by the error's type name, so no backend is imported to ask.
    """
    name = type(error).__name__
    if isinstance(error, MemoryError) or name in OOM_TYPES:
        return True
    return name in XLA_ERRORS and str(error).startswith("RESOURCE_EXHAUSTED")
