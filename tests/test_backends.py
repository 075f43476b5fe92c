"""The search end to end on the other Keras backends, on the CPU: JAX (installed by
`.ci/setup --test`) and PyTorch where its CPU build is installed.

Each command runs in its own process, since Keras fixes its backend when it is first imported
and this process runs TensorFlow. The process reports whether TensorFlow was imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from search.train import runtime
from tests.helpers import load_study, write_preset

# `search ARGS`, then whether TensorFlow was ever imported in that process.
CLI = """
import sys
from search.cli import cli
try:
    cli(sys.argv[1:], prog_name="search")
finally:
    print("TensorFlow imported:", "tensorflow" in sys.modules)
"""


def search(*args: str, backend: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != runtime.ENV_BACKEND}
    if backend:
        env[runtime.ENV_BACKEND] = backend
    return subprocess.run(
        [sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=900, env=env
    )


def on_cpu(backend: str, *args: str, by_option: bool = True) -> None:
    """`search ARGS` on `backend` (by --backend, else KERAS_BACKEND) succeeds on the CPU
    without importing TensorFlow."""
    done = search(*args, "--backend", backend) if by_option else search(*args, backend=backend)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Backend: {backend} on cpu (1 device)" in done.stdout
    assert "TensorFlow imported: False" in done.stdout


def small_preset(folder: Path, epochs: int) -> Path:
    """2,000 training images; 16 steps per call, as the shipped presets ask."""
    steps = {"epochs = 3": f"epochs = {epochs}\nsteps_per_execution = 16"}
    return write_preset(folder, "small", **steps)


def test_a_study_prunes_and_its_best_trial_retrains_on_jax(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    pytest.importorskip("jax")
    on_cpu("jax", "start", "--preset", str(small_preset(tmp_path, 3)), "--trials", "2")
    sound, starved = load_study(private_storage).get_trials()
    assert sound.state.name == "COMPLETE" and sound.user_attrs["val_accuracy"] > 0.6
    assert len(sound.intermediate_values) == sound.user_attrs["epochs_trained"] >= 2
    # The pruning callback reported every epoch, and the pruner stopped the starved network.
    assert starved.state.name == "PRUNED" and starved.user_attrs["baseline"] == "starved"
    assert len(starved.intermediate_values) == starved.user_attrs["epochs_trained"] < 3

    on_cpu("jax", "retrain-best", "--study", "tiny", by_option=False)  # KERAS_BACKEND
    record = load_study(private_storage).user_attrs["retrain"]
    assert record["test_accuracy"] > 0.6
    import keras  # TensorFlow, here: a model trained on JAX loads on another backend

    model = keras.models.load_model(record["model_path"])
    assert model.count_params() == record["params"] == sound.user_attrs["params"]


def test_a_trial_trains_on_pytorch_one_step_per_call(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    pytest.importorskip("torch")
    # The preset asks for 16 steps per call, which PyTorch refuses: the search runs 1.
    on_cpu("torch", "start", "--preset", str(small_preset(tmp_path, 1)), "--trials", "1")
    trial = load_study(private_storage).get_trials()[0]  # the second baseline still waits
    assert trial.state.name == "COMPLETE" and trial.user_attrs["val_accuracy"] > 0.5
    assert trial.user_attrs["epochs_trained"] == 1


def test_an_unknown_or_missing_backend_is_refused_before_anything_runs(
    tmp_path: Path, private_storage: Path
) -> None:
    preset = write_preset(tmp_path)
    refused = search("start", "--preset", str(preset), "--backend", "theano")
    assert refused.returncode == 2 and "'theano' is not one of" in refused.stderr
    refused = search("start", "--preset", str(preset), backend="theano")
    assert refused.returncode == 2 and "(env var: 'KERAS_BACKEND')" in refused.stderr
    assert not (private_storage / "search.db").exists()
