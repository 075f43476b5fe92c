"""What a search is: the search space, presets, where presets are found, the datasets.

The lowest layer: it imports neither Optuna nor Keras, so a preset can be read and checked,
and a network's size counted, without loading either (tests/test_layers.py holds it to that).
"""

from search.define.anatomy import Size, describe, impossible, size
from search.define.catalog import find, lines
from search.define.datasets import DATASETS, DataError, Split, info, load_test, load_train, split
from search.define.presets import (
    ENQUEUED,
    MAX_HOURS,
    OBJECTIVES,
    PRUNERS,
    Baseline,
    Preset,
    PresetError,
    Rung,
    from_json,
    load_preset,
)
from search.define.space import (
    NUM_CLASSES,
    SIDE,
    Config,
    Conv,
    Stage,
    suggest,
    to_params,
    with_pieces,
)

__all__ = [
    "DATASETS",
    "ENQUEUED",
    "MAX_HOURS",
    "NUM_CLASSES",
    "OBJECTIVES",
    "PRUNERS",
    "SIDE",
    "Baseline",
    "Config",
    "Conv",
    "DataError",
    "Preset",
    "PresetError",
    "Rung",
    "Size",
    "Split",
    "Stage",
    "describe",
    "find",
    "from_json",
    "impossible",
    "info",
    "lines",
    "load_preset",
    "load_test",
    "load_train",
    "size",
    "split",
    "suggest",
    "to_params",
    "with_pieces",
]
