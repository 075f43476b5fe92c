"""Keras: the backend of this process, networks built from a configuration, training them.

Uses Keras, never Optuna. Keras itself is imported only inside functions, once
`runtime.configure` has chosen the backend; `augment` (which imports Keras at its top) is
loaded by `network` when a network is built, so it is not exported here.
"""

from search.train.network import (
    build,
    decay_steps,
    ensemble,
    for_inference,
    load_model,
    with_flips,
)
from search.train.runtime import (
    BACKENDS,
    DEFAULT_BACKEND,
    ENV_BACKEND,
    BackendError,
    available_memory,
    backend,
    compile_options,
    configure,
    devices,
    is_oom,
    resident_memory,
    select,
)
from search.train.training import VAL_BATCH, History, build_and_fit, fit

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "ENV_BACKEND",
    "VAL_BATCH",
    "BackendError",
    "History",
    "available_memory",
    "backend",
    "build",
    "build_and_fit",
    "compile_options",
    "configure",
    "decay_steps",
    "devices",
    "ensemble",
    "fit",
    "for_inference",
    "is_oom",
    "load_model",
    "resident_memory",
    "select",
    "with_flips",
]
