#!/usr/bin/env bash
# The GPU figures of docs/figures/batch-size/ in one call of the device tool (a few minutes on an
# H100 or H200), written to $OUT: device.txt, bench.txt and bench.json (hand/svi/score/train of
# presets E and digits at batch 1, a step's fixed cost of host work and kernel launches, and at
# batches 1024-32768; bench.txt ends with E's step with TF32 at the largest batch and
# scripts/tf32_emulation.py on the default run), default-seed0.json,
# batch2048-seed0.json and batch100-seed0.json (the summaries of preset E trained on Fashion-MNIST
# with the GPU's default batch, 2048 and 100), tests.txt.  A second call with BATCHES= SEEDS="1 2"
# adds two seeds without the bench (the device returns at most 8 files).
#
# The device has PyTorch but neither pyro-ppl nor the data and cannot fetch them; prepare them
# here first (into .device/, which git ignores), then carry that folder:
#
#   bash scripts/gpu_session.sh --prepare
#   device run: command "bash scripts/gpu_session.sh", carry [".device"], timeout_s 540
#
# DEVICE=cpu EPOCHS=1 TRAIN_LIMIT=300 BATCHES=32 TF32_IMAGES=100 runs the same steps small on a CPU
# (tests/test_cli.py); CARRIED names another folder of wheels and data, PYTHON another interpreter.
set -euo pipefail

CARRIED=${CARRIED:-.device}
if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$CARRIED/wheels" "$CARRIED/fashion-mnist"
    version=$(python -c "import pyro; print(pyro.__version__)")
    python -m pip download --quiet --no-deps --dest "$CARRIED/wheels" "pyro-ppl==$version" pyro-api
    cp /usr/share/datasets/fashion-mnist/*-ubyte.gz "$CARRIED/fashion-mnist/"
    du -sh "$CARRIED"
    exit 0
fi

DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu-session}
BATCHES=${BATCHES-1 1024 2048 8192 32768}  # set empty: no bench; the last is TF32's
SEEDS=${SEEDS:-0}  # rounding alone moves a run by the quality targets' tolerance: several seeds tell
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
runs=$(mktemp -d)  # the training runs; only their summaries are kept
epochs=()
[[ -n "${EPOCHS:-}" ]] && epochs=(--epochs "$EPOCHS")
limit=()
[[ -n "${TRAIN_LIMIT:-}" ]] && limit=(--train-limit "$TRAIN_LIMIT")

if ! "$PYTHON" -c "import pyro" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-deps --no-index "$CARRIED"/wheels/*.whl
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
    "$PYTHON" -c "import torch, pyro; print('torch', torch.__version__, 'pyro', pyro.__version__)"
} > "$OUT/device.txt"

if [[ -n "$BATCHES" ]]; then
    # shellcheck disable=SC2086
    "$PYTHON" -m pyro_dcgmm bench --device "$DEVICE" --preset E digits --batch-sizes $BATCHES \
        --paths hand svi score train --json "$OUT/bench.json" | tee "$OUT/bench.txt"
fi

train() {  # train NAME [flags]: preset E on Fashion-MNIST, its summary kept as $OUT/NAME.json
    local name=$1
    shift
    "$PYTHON" -m pyro_dcgmm train --preset E --dataset fashion-mnist --root "$CARRIED/fashion-mnist" \
        --device "$DEVICE" "${epochs[@]}" "${limit[@]}" --no-progress --overwrite \
        --out "$runs/$name" "$@"
    cp "$runs/$name/summary.json" "$OUT/$name.json"
}
for seed in $SEEDS; do
    train "default-seed$seed" --seed "$seed"
    train "batch2048-seed$seed" --batch-size 2048 --seed "$seed"
    train "batch100-seed$seed" --batch-size 100 --seed "$seed"
done

if [[ -n "$BATCHES" ]]; then  # TF32: the speed it buys, and how far it moves the trained default's LLs
    {
        "$PYTHON" -m pyro_dcgmm bench --device "$DEVICE" --preset E --batch-sizes "${BATCHES##* }" \
            --paths hand svi --tf32
        "$PYTHON" scripts/tf32_emulation.py "$runs/default-seed${SEEDS%% *}/checkpoint.pt" \
            --root "$CARRIED/fashion-mnist" --device "$DEVICE" --images "${TF32_IMAGES:-10000}"
    } >> "$OUT/bench.txt"
fi

"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/tests.txt" 2>&1 || true
tail -n 3 "$OUT/tests.txt"
