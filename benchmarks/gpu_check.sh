#!/usr/bin/env bash
# The GPU check (issue 25, item 6): what a borrowed GPU can tell in at most 8 minutes, each step timed, a failed or
# timed-out step reported without stopping the others (but none runs once the first finds no GPU), then a "GPU
# check" section of a results page written from the JSON the steps leave (benchmarks/gpu_check.py page; nothing
# typed by hand). The steps:
#   environment         device name, torch / CUDA / cuDNN / transformers / open_clip versions, the data read
#   train_step_bf16     benchmarks/train_step.py: ViT-B-32 (random weights), batch 512, bf16 autocast
#   grad_sync           benchmarks/grad_sync.py: the data-parallel step and its gradient wait, one process
#   describer           `latteclip describe --lmm transformers` with a tiny random LLaVA-NeXT built offline
#   experiment          `latteclip experiment run paper --datasets eurosat --entries zeroshot,latteclip`, ViT-B-32
#                       random weights, the offline describer, 200 steps; then `experiment tables` and its figures
#   train_step_compile  the train step again with --compile (last: compiling is the likeliest to run long)
#
# With a borrowed GPU, from a session of this project (the device tool; nothing there can be downloaded):
#   1. here, once: .venv/bin/python benchmarks/gpu_check.py prepare
#      -> .gpu_check/ (ignored by git): an EuroSAT subset cut from ../shared/data (4,000 train, 1,000 val, 3,000
#         test images: the device takes 64 MiB with the checkout) and the wheels of the pure-Python packages its
#         python3 lacks (open_clip_torch, ftfy, wcwidth, submitit), 30 MiB in all
#   2. the device tool's run, with carry [".gpu_check"] and timeout_s 560:
#      cp docs/results.md "$OUT/results.md" && bash benchmarks/gpu_check.sh --json-dir "$OUT" "$OUT/results.md"
#   3. here: .venv/bin/python benchmarks/gpu_check.py page --json-dir FILES_AT docs/results.md
#      (FILES_AT: the reply's files_at; the page is written from the JSON, with the GPU machine's description)
# On CPU (tests/test_gpu_check.py runs this): GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh --quick PAGE.md
#
# Usage: benchmarks/gpu_check.sh [--quick] [--json-dir DIR] [--work DIR] PAGE.md
#   --quick     latte-tiny, a few steps, 40 EuroSAT images; no --compile step (minutes of compiling on a CPU)
#   --json-dir  where the steps' JSON go (default WORK/json); at most 7 files, so that $OUT returns them all
#   --work      logs, run folders, the tiny LLaVA (default runs/gpu_check; an earlier check's files there go first)
# Environment: GPU_CHECK_DEVICE (cuda), GPU_CHECK_DATA (the folder holding eurosat/: .gpu_check/data when
# prepared, else ../shared/data), GPU_CHECK_PYTHON (.venv/bin/python when present, else python3),
# GPU_CHECK_BUDGET (seconds for all steps: 450, or 1500 with --quick).
set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
QUICK=0
WORK=runs/gpu_check
JSON=""
PAGE=""
while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --json-dir) JSON=$2; shift ;;
        --work) WORK=$2; shift ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) PAGE=$1 ;;
    esac
    shift
done
[[ -n $PAGE ]] || { echo "gpu_check: name the results page to write, e.g. docs/results.md (see --help)" >&2; exit 2; }
JSON=${JSON:-$WORK/json}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
if [[ -n ${GPU_CHECK_DATA:-} ]]; then DATA=$GPU_CHECK_DATA
elif [[ -d .gpu_check/data/eurosat ]]; then DATA=.gpu_check/data
else DATA=${LATTECLIP_SHARED_DATA:-../shared/data}
fi
[[ -f $DATA/eurosat/EuroSAT.zip ]] || {
    echo "gpu_check: no $DATA/eurosat/EuroSAT.zip: run 'python benchmarks/gpu_check.py prepare' (and carry" \
        ".gpu_check to the device), or set GPU_CHECK_DATA to the folder holding eurosat/" >&2
    exit 2
}
if [[ -n ${GPU_CHECK_PYTHON:-} ]]; then PY=$GPU_CHECK_PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi
if ((QUICK)); then BUDGET=${GPU_CHECK_BUDGET:-1500}; else BUDGET=${GPU_CHECK_BUDGET:-450}; fi
DEADLINE=$((SECONDS + BUDGET))

case $WORK in /*) WORK_ABS=$WORK ;; *) WORK_ABS=$REPO/$WORK ;; esac
# what an earlier check left: its run folders would be reused, its JSON written into the page
rm -rf "$WORK"/{logs,paper,site,cache,tiny-llava-next,describe.sqlite,tables.md,steps.tsv}
for name in environment steps train_step_bf16 train_step_compile grad_sync experiment describer; do
    rm -f "$JSON/$name.json"
done
mkdir -p "$WORK/logs" "$JSON" || exit 2
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS=ignore LATTECLIP_SHARED_DATA=$DATA
export LATTECLIP_CACHE="$WORK_ABS/cache" TOKENIZERS_PARALLELISM=false
# the GPU machine's python3 has torch and transformers but not these: install the carried wheels for this run
if ! "$PY" -c "import open_clip, submitit" 2>/dev/null && compgen -G ".gpu_check/wheels/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" \
        .gpu_check/wheels/*.whl && export PYTHONPATH="$PYTHONPATH:$WORK_ABS/site"
fi
"$PY" -c "import latteclip, open_clip, submitit, torch" || {
    echo "gpu_check: $PY cannot import latteclip's dependencies (above); prepare .gpu_check/wheels" >&2
    exit 2
}

STEPS=$WORK/steps.tsv
: >"$STEPS"
NO_DEVICE_EXIT=3 # the environment step's exit code when torch sees no GPU: the other steps would only fail slowly
NO_DEVICE=0
# skip_step NAME REASON: a step not started, recorded as such (125) with its reason
skip_step() {
    printf '%s\t125\t0.0\t0\tskipped: %s\n' "$1" "$2" >>"$STEPS"
    echo "skipped: $2" >"$WORK/logs/$1.log"
}
# run_step NAME LIMIT ARGS...: `python ARGS` under `timeout`, never past the deadline; 125: skipped, no time left
run_step() {
    local name=$1 limit=$2 code start
    shift 2
    if ((NO_DEVICE)); then
        skip_step "$name" "no device"
        return
    fi
    local left=$((DEADLINE - SECONDS))
    ((limit > left)) && limit=$left
    start=$(date +%s.%N)
    if ((limit < 20)); then
        echo "not started: $left s of the budget left" >"$WORK/logs/$name.log"
        code=125
    else
        timeout -k 10 "$limit" "$PY" "$@" >"$WORK/logs/$name.log" 2>&1
        code=$?
    fi
    local wall
    wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$code" "$wall" "$limit" "python $*" >>"$STEPS"
    echo "gpu_check: $name exit $code after $wall s (limit $limit s)"
    ((code == NO_DEVICE_EXIT)) && [[ $name == environment ]] && NO_DEVICE=1
}

if ((QUICK)); then
    MODEL=(--model latte-tiny); BATCH=8; STEPS_TIMED=2; GRAD_BATCH=4; IMAGES=8; THREADS=1
    RUN=(--model latte-tiny --pretrained random --max-steps 3 --limit 40 --workers 0)
else
    MODEL=(--model ViT-B-32); BATCH=512; STEPS_TIMED=10; GRAD_BATCH=256; IMAGES=64; THREADS=4
    RUN=(--model ViT-B-32 --pretrained random --max-steps 200 --workers 8)
fi
[[ $DEVICE == cuda* ]] && DEVICES=cuda:0 || DEVICES=cpu
QUICK_FLAG=()
((QUICK)) && QUICK_FLAG=(--quick)
SELECTION=(paper --datasets eurosat --entries zeroshot,latteclip --seeds 0 --data-root "$DATA" --output "$WORK/paper"
    "${RUN[@]}" --device "$DEVICE" --lmm offline)

run_step environment 60 benchmarks/gpu_check.py environment --device "$DEVICE" --data-root "$DATA/eurosat" \
    ${QUICK_FLAG[@]+"${QUICK_FLAG[@]}"} --out "$JSON/environment.json"
run_step train_step_bf16 150 benchmarks/train_step.py "${MODEL[@]}" --device "$DEVICE" --batch-size "$BATCH" \
    --variants latteclip,latteclip_reference,flyp_pl --warmup 2 --steps "$STEPS_TIMED" --json "$JSON/train_step_bf16.json"
run_step grad_sync 90 benchmarks/grad_sync.py "${MODEL[@]}" --device "${DEVICE%%:*}" --nproc 1 \
    --batch-size "$GRAD_BATCH" --threads "$THREADS" --warmup 2 --steps "$STEPS_TIMED" --json "$JSON/grad_sync.json"
run_step describer 120 benchmarks/gpu_check.py describer --device "$DEVICE" --data-root "$DATA/eurosat" \
    --work "$WORK" --images "$IMAGES" --clip-model "${MODEL[1]}" --out "$JSON/describer.json"
run_step experiment 240 -m latteclip experiment run "${SELECTION[@]}" --devices "$DEVICES"
run_step experiment_tables 60 -m latteclip experiment tables "${SELECTION[@]}" --out "$WORK/tables.md" --overwrite
run_step experiment_results 30 benchmarks/gpu_check.py experiment --runs "$WORK/paper" --tables "$WORK/tables.md" \
    --out "$JSON/experiment.json"
if ((QUICK)); then
    skip_step train_step_compile --quick
else
    run_step train_step_compile 180 benchmarks/train_step.py "${MODEL[@]}" --device "$DEVICE" --batch-size "$BATCH" \
        --variants latteclip --compile --warmup 2 --steps "$STEPS_TIMED" --json "$JSON/train_step_compile.json"
fi

"$PY" benchmarks/gpu_check.py summary --steps "$STEPS" --logs "$WORK/logs" --out "$JSON/steps.json" \
    --command "bash benchmarks/gpu_check.sh $( ((QUICK)) && echo '--quick ')PAGE.md" || exit 1
"$PY" benchmarks/gpu_check.py page --json-dir "$JSON" "$PAGE" || exit 1
failed=$(awk -F'\t' '$2 != 0 && $5 != "skipped: --quick" { print $1 }' "$STEPS" | tr '\n' ' ')
echo "gpu_check: the section is in $PAGE; steps failed or not run: ${failed:-none}"
[[ -z $failed ]]
