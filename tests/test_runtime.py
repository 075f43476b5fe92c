"""The training runtime: the Keras backend, its quiet start-up, its threads, and memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from search.train import runtime
from tests.helpers import cgroup_tree

THREADS = """
from search.train.runtime import configure
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


GIB = 2**30
MEMINFO = "MemTotal:       16777216 kB\nMemAvailable:    8388608 kB\n"  # 8 GiB available


def v2(limit: int | str, used: int, stat: str | None = None) -> dict[str, str]:
    """A cgroup v2 folder's memory files: its limit (a number or "max"), its use, its stat."""
    files = {"memory.max": str(limit), "memory.current": str(used)}
    return files | ({"memory.stat": stat} if stat else {})


def _available(tmp_path: Path, own: str, files: dict[str, str]) -> int | None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    return runtime.available_memory(*cgroup_tree(tmp_path, own, files), str(meminfo))


@pytest.mark.parametrize(
    "own, files, available",
    [
        pytest.param("0::/", v2(4 * GIB, GIB), 3 * GIB, id="v2: a pod of 4 GiB holding 1 GiB"),
        pytest.param(
            "0::/",
            v2(4 * GIB, GIB, stat=f"anon 100\ninactive_file {GIB // 2}\nactive_file 7"),
            3 * GIB + GIB // 2,
            id="v2: inactive page cache is reclaimed first",
        ),
        pytest.param("0::/", v2("max", GIB), 8 * GIB, id="v2: max is no limit"),
        pytest.param(
            "0::/",
            v2(64 * GIB, GIB),
            8 * GIB,
            id="v2: a limit above the host's free memory",
        ),
        pytest.param(
            "0::/kubepods/pod1/box",
            {
                "kubepods/memory.max": str(32 * GIB),
                "kubepods/memory.current": str(2 * GIB),
                "kubepods/pod1/memory.max": str(4 * GIB),
                "kubepods/pod1/memory.current": str(3 * GIB + GIB // 2),
                "kubepods/pod1/box/memory.max": "max",
                "kubepods/pod1/box/memory.current": str(GIB),
            },
            GIB // 2,
            id="v2 nested: the tightest along the path",
        ),
        pytest.param(
            "0::/kubepods/pod1",
            v2(2 * GIB, GIB),
            GIB,
            id="v2 in a namespace: the tree's root is the pod's",
        ),
        pytest.param(
            "9:name=systemd:/\n4:memory:/docker/x\n0::/",
            {
                "memory/memory.limit_in_bytes": "9223372036854771712",  # v1's "no limit"
                "memory/memory.usage_in_bytes": str(5 * GIB),
                "memory/docker/x/memory.limit_in_bytes": str(4 * GIB),
                "memory/docker/x/memory.usage_in_bytes": str(GIB),
                "memory/docker/x/memory.stat": f"cache 1\ntotal_inactive_file {GIB // 4}",
            },
            3 * GIB + GIB // 4,
            id="v1",
        ),
        pytest.param("0::/", {}, 8 * GIB, id="no limit files: /proc/meminfo"),
    ],
)
def test_available_memory_is_the_tightest_of_the_host_and_the_cgroup(
    tmp_path: Path, own: str, files: dict[str, str], available: int
) -> None:
    assert _available(tmp_path, own, files) == available


def test_available_memory_without_a_cgroup_tree_is_the_kernel_s_figure(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert runtime.available_memory(missing, missing, str(missing)) is None
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    assert runtime.available_memory(missing, missing, str(meminfo)) == 8 * GIB
    root, own = cgroup_tree(tmp_path, "0::/", {"memory.max": str(GIB), "memory.current": "0"})
    assert runtime.available_memory(root, own, str(missing)) == GIB  # no /proc: the cgroup's


def test_out_of_memory_is_told_apart_from_other_training_errors_on_every_backend() -> None:
    import tensorflow as tf

    assert runtime.is_oom(MemoryError())
    assert runtime.is_oom(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating"))
    assert not runtime.is_oom(tf.errors.InvalidArgumentError(None, None, "bad label"))
    assert not runtime.is_oom(ValueError("out of memory"))  # the type decides, not the words
    jax_errors = pytest.importorskip("jax.errors")
    xla_oom = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB."
    assert runtime.is_oom(jax_errors.JaxRuntimeError(xla_oom))
    assert not runtime.is_oom(jax_errors.JaxRuntimeError("INVALID_ARGUMENT: bad shape"))
    torch = pytest.importorskip("torch")
    assert runtime.is_oom(torch.OutOfMemoryError("CUDA out of memory."))


BACKEND = """
import os, sys
from search.train import runtime
runtime.configure({threads})
print(runtime.devices())
print(runtime.compile_options(16))
print(os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"], len(os.sched_getaffinity(0)))
print("tensorflow" in sys.modules)
"""


def configured(backend: str, threads: int | None = None) -> list[str]:
    """What BACKEND prints in a new process that runs on `backend`."""
    env = {**os.environ, runtime.ENV_BACKEND: backend}
    env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
    result = subprocess.run(
        [sys.executable, "-c", BACKEND.format(threads=threads)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_jax_compiles_shares_a_card_keeps_to_its_cores_and_never_loads_tensorflow() -> None:
    pytest.importorskip("jax")
    lines = configured("jax", threads=1)
    assert lines[0] == "jax on cpu (1 device)"
    assert lines[1] == "{'jit_compile': True, 'steps_per_execution': 16}"
    assert lines[2] == "false 1"  # no preallocation; one core for one thread
    assert lines[3] == "False"  # TensorFlow is imported only when it is the backend


def test_tensorflow_compiles_with_keras_auto_xla_choice_and_keeps_every_core() -> None:
    lines = configured("tensorflow")
    assert lines[0] == "tensorflow on cpu (1 device)"
    # "auto": XLA where TensorFlow has a GPU, none on a CPU (measured 2-4x slower there).
    assert lines[1] == "{'jit_compile': 'auto', 'steps_per_execution': 16}"
    assert lines[2] == f"false {len(os.sched_getaffinity(0))}"
    assert lines[3] == "True"


def test_torch_runs_one_step_per_call_on_its_own_thread_count() -> None:
    pytest.importorskip("torch")
    code = BACKEND.format(threads=1) + "import torch; print(torch.get_num_threads())\n"
    env = {**os.environ, runtime.ENV_BACKEND: "torch"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "torch on cpu (1 device)"
    # PyTorch refuses steps_per_execution above 1; torch.compile is left off.
    assert lines[1] == "{'jit_compile': False, 'steps_per_execution': 1}"
    assert lines[3] == "False" and lines[4] == "1"


def test_a_backend_is_checked_before_keras_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.ENV_BACKEND, "theano")
    with pytest.raises(runtime.BackendError, match="set it to tensorflow, jax or torch"):
        runtime.backend()
    monkeypatch.delenv(runtime.ENV_BACKEND)
    assert runtime.backend() == "tensorflow"  # the default
    import keras  # noqa: F401  (this process now runs TensorFlow)

    with pytest.raises(
        runtime.BackendError,
        match="Keras already runs on tensorflow in this process; start a new process to use jax",
    ):
        runtime.select("jax")
    assert runtime.ENV_BACKEND not in os.environ  # a refusal changes nothing
    assert runtime.select() == "tensorflow"
