#!/usr/bin/env bash
# The default job on a GPU machine that has JAX (with CUDA) but not TensorFlow, in one command:
#
#   bash benchmarks/gpu_job.sh wheels   # here, online: the wheels it needs, into .whl/
#   bash benchmarks/gpu_job.sh run      # there, from the repository root, offline
#
# `run` installs the wheels into /tmp/site, then, on JAX:
#   1. seconds per epoch of the lab's test 7 network, the product's trial path against plain
#      Keras (benchmarks/trial_throughput.py, which names the device);
#   2. the Quick start's search, `search start --dataset fashion_mnist --trials 50`, with
#      --workers auto on the card (the trials it runs at once are printed as it starts),
#      bounded by SEARCH_HOURS (default 0.1) so that it fits one call;
#   3. `search retrain-best`, and the wall time of each step.
# Everything is written under OUT (default ./gpu-out): the logs and times.txt.
# DATA (default .data) holds the four Fashion-MNIST .gz files. For a check on a CPU, set
# SKIP_INSTALL=1, PYTHON=.venv/bin/python, and small SEARCH_TRIALS and SEARCH_HOURS.
set -euo pipefail

OUT=${OUT:-gpu-out}
DATA=${DATA:-.data}
PYTHON=${PYTHON:-python3}
TRIALS=${SEARCH_TRIALS:-50}
HOURS=${SEARCH_HOURS:-0.1}
WHAT=${SEARCH_WHAT:---dataset fashion_mnist}  # for a check on a CPU: --preset demo
read -r -a THROUGHPUT <<<"${THROUGHPUT_ARGS:-}"  # for a check on a CPU: --images 5000

wheels() {
    # Pure-Python or manylinux wheels for CPython 3.12, the GPU machine's Python.
    local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64)
    local pkg
    for pkg in "keras>=3.15,<4" "optuna>=5.0,<6" "optuna-integration>=5.0,<6" \
        "sqlalchemy>=2.0,<2.2" alembic Mako colorlog optree namex "tenacity>=9.1,<10" \
        tqdm PyYAML; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp "${platforms[@]}" -d .whl "$pkg"
    done
    mkdir -p "$DATA"
    cp /usr/share/datasets/fashion-mnist/*.gz "$DATA"/
    ls .whl "$DATA"
}

timed() {  # timed NAME COMMAND...: the command's output in OUT/NAME.log, its seconds in times.txt
    local name=$1 start
    shift
    start=$EPOCHREALTIME
    "$@" >"$OUT/$name.log" 2>&1 || { echo "$name failed:"; tail -20 "$OUT/$name.log"; return 1; }
    awk -v n="$name" -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%s %.1f s\n", n, b - a }' \
        | tee -a "$OUT/times.txt"
}

run() {
    mkdir -p "$OUT"
    : >"$OUT/times.txt"
    if [[ -z ${SKIP_INSTALL:-} ]]; then
        "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site:$PWD
    fi
    export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
    export SEARCH_DIR=$OUT/storage
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
    timed throughput "$PYTHON" benchmarks/trial_throughput.py --reps 3 --data-dir "$DATA" \
        --no-write "${THROUGHPUT[@]}"
    grep -iE "device|ratio|seconds|epoch" "$OUT/throughput.log" | tail -15 || true
    # shellcheck disable=SC2086  # WHAT is two words
    timed search "$PYTHON" -m search start $WHAT --trials "$TRIALS" \
        --hours "$HOURS" --workers auto --backend jax --data-dir "$DATA"
    grep -E "^Workers|workers|Best:" "$OUT/search.log" | head -5 || true
    timed retrain "$PYTHON" -m search retrain-best --backend jax --data-dir "$DATA"
    grep -iE "test accuracy" "$OUT/retrain.log" | tail -3 || true
    cat "$OUT/times.txt"
}

case ${1:-} in
wheels) wheels ;;
run) run ;;
*) echo "usage: bash benchmarks/gpu_job.sh wheels|run" >&2; exit 2 ;;
esac
