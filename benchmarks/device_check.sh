#!/usr/bin/env bash
# Every GPU check in one command, for a lent GPU machine (no internet there; one call at most 600 s).
#
# Here, first:  bash benchmarks/device_prepare.sh     (stages .device/: the data archive and the wheels)
# There:        bash benchmarks/device_check.sh [SEEDS] [extra Hydra overrides for every training run...]
#               (carry [".device"]; what comes back lands in $OUT, or in .device/out when OUT is unset: log.txt,
#               summary.txt, verdict.txt, gpu-tests.txt, attribution.txt, sweep.txt, and runs.tgz with every
#               file the stages wrote in WORK, as each stage ends; the machine returns at most 8 files)
#               STAGES="attribution" bash benchmarks/device_check.sh     # one stage alone (see below)
# Settings (environment): OUT, WORK, BUDGET_S, STAGES, <STAGE>_LIMIT (seconds), DATA_ROOT (batches instead of
# building .device's), PYTHON, WHEELS (default .device/whl), RESNET9_CACHE (default .device/cache); a CPU
# rehearsal of the plumbing: DATA_ROOT=../shared/cifar10 WHEELS=none STAGES="rules graph" bash
# benchmarks/device_check.sh 5 device=cpu model.width=0.125 data.limit_train=1024 batch_size=128 epochs=2
#
# A plain call runs "gpu-tests rules graph attribution sweep", in that order (the order of issue 26: does it
# run and which rule is the default, then speed, then sweeps). The whole call keeps to BUDGET_S (default 570 s)
# so that what it measured is summarised before the call's limit: each stage runs under its own limit or
# what is left of the budget, whichever is less, and is skipped when less than 30 s are left.
#   (always)     stage CIFAR-10 from the 18 MB JPEG archive (≈ 10 s), install the wheels the image lacks, print the GPU;
#   gpu-tests    every test marked `gpu` (pytest -m gpu: tests/training/test_gpu.py -- fp16 loss scaling with fused SGD, the
#                CUDA generator's augmentation, resume, a reused model, the background writer, a cuda_graph run with
#                checkpoint and resume -- and the captured step against the eager one);
#   rules        the mission's run (its defaults, 24 epochs) with lr_finder.rule=steepest (the default) and lowest,
#                seeds 0-2, as one sweep in one process (one range test); benchmarks/rule_verdict.py applies the
#                decision rule (steepest may be at most 0.2 points below lowest on the mean), and when steepest
#                loses, the same three seeds with lr_finder.rule=fall_end follow as the candidate;
#   graph        cuda_graph=true, seeds 0-2, one sweep: beside the rules stage's default runs (same seeds, same card);
#   attribution  benchmarks/step_attribution.py at full width: six variants of the step, whole 97-step epochs;
#   sweep        benchmarks/sweep.py: a 15-job sweep's per-job overhead and wall time, and the same sweep 3 jobs
#                at a time on the one GPU (joblib) against one at a time;
# and, by name only (they do not fit the same call):
#   throughput   benchmarks/throughput.py on whole epochs (97 steps of 512) for the data paths, then SEEDS
#                (default 5) complete 24-epoch runs with the defaults (their folders are kept under $WORK/runs);
#   compile      one more complete run with compile=true (seed 0), to compare its training time and first step;
#   old-path     one run with the step as it was before warm-up and whole-epoch augmentation;
#   regret       benchmarks/lr_regret.py on the mission's run: steepest and lowest against the SGD grid, 2 seeds
#                (16 runs, about 6-7 minutes on an H100);
#   evidence     benchmarks/evidence.py: the defaults beside Page's schedule and on the staged copy passed once
#                more through JPEG q50, 3 seeds each (EVIDENCE_PARTS="schedule q50", 9 runs); the options over 5
#                seeds (EVIDENCE_PARTS=options, 40 runs) in a call of their own. Commit runs.tgz's evidence/*/ under
#                results/<date>-gpu-evidence/ and print the README's table with
#                `python benchmarks/evidence.py --table results/<date>-gpu-evidence`.
# Every complete run's row (accuracy, train time, epoch 1 against the median epoch, warm-up, and for a sweep's
# first job the seconds from its process's start) is in summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-5}
shift || true
extra=("$@")
out=${OUT:-.device/out}    # what comes back from the machine: at most 8 files (see publish)
work=${WORK:-.device/work} # everything the stages write
data=${DATA_ROOT:-.device/data}  # the batches: built from .device's archive unless DATA_ROOT names others
py=${PYTHON:-python3}
wheels=${WHEELS:-.device/whl}  # what device_prepare.sh downloaded: installed into .device/site when present
mkdir -p "$out" "$work"
exec > >(tee -a "$out/log.txt") 2>&1  # the whole log comes back, even from a call stopped at its limit
started=$(date +%s)
deadline=$((started + ${BUDGET_S:-570}))
stage() { echo; echo "== $1 (at $(( $(date +%s) - started )) s)"; }
stages=" ${STAGES:-gpu-tests rules graph attribution sweep} "
want() { [[ "$stages" == *" $1 "* ]]; }
# limited SECONDS COMMAND...: run COMMAND under SECONDS or what is left of the budget, whichever is less (a
# second signal 10 s after the first: a training job between steps may not see the first one at once)
limited() {
  local left=$((deadline - $(date +%s) - 20))
  if ((left < 30)); then echo "skipped: ${left} s left of the budget (BUDGET_S)"; return 124; fi
  timeout -k 10 "$((${1} < left ? ${1} : left))" "${@:2}"
}
# after every stage: the table of complete runs, the stages' own reports, and every run's files in one archive,
# so that what was measured comes back however the call ends (the machine returns 8 files, 2 folders deep)
publish() {
  "$py" benchmarks/device_summary.py "$work" >"$work/summary.txt" 2>&1
  for file in summary.txt gpu-tests.txt attribution.txt sweep.txt rules/verdict.txt; do
    if [ -f "$work/$file" ]; then cp "$work/$file" "$out/"; fi
  done
  tar czf "$work.tgz" --exclude='*.pt' -C "$work" . && mv "$work.tgz" "$out/runs.tgz"
}
# a sweep of complete runs with the mission's defaults: one process, its start noted for the first job's time
mission_sweep() {
  local folder=$1; shift
  mkdir -p "$folder" && date +%s.%N >"$folder/process_started"
  limited "$limit" "$py" -m resnet9.train --multirun "$@" data.root="$data" logger=none progress=false \
    checkpoint=false hydra.sweep.dir="$folder" "${extra[@]}" >"$folder.log" 2>&1
  grep -i "error\|warn" "$folder.log" | grep -v "^\[.*it/s" | tail -4
  sed -n '/^Sweep summary/,$p' "$folder.log" | tail -8
}

stage "data and packages"
[ -d "$data/cifar-10-batches-py" ] || "$py" .device/build_batches.py .device/cifar10-jpeg.tar.xz "$data" || exit 1
if [ -d "$wheels" ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .device/site \
    "$wheels"/*.whl || exit 1
  export PYTHONPATH=$PWD/.device/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export WANDB_MODE=offline PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 RESNET9_CACHE=${RESNET9_CACHE:-$PWD/.device/cache}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"

if want gpu-tests; then
stage "the GPU-only tests: pytest -m gpu"
if "$py" -c "import pytest" 2>/dev/null; then
  PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 limited "${TESTS_LIMIT:-150}" "$py" -m pytest -q -p no:cacheprovider -m gpu \
    tests/training/test_gpu.py tests/training/test_cuda_graph.py 2>&1 | tee "$work/gpu-tests.txt" | tail -15
else
  echo "pytest is not installed here"
fi
publish
fi
if want rules; then
stage "the mission's run: lr_finder.rule=steepest (the default) and lowest, seeds 0-2, one sweep"
limit=${RULES_LIMIT:-240} mission_sweep "$work/rules" seed=0,1,2 lr_finder.rule=steepest,lowest
"$py" benchmarks/rule_verdict.py "$work/rules" | tee "$work/rules/verdict.txt"
verdict=${PIPESTATUS[0]}
publish
if [ "$verdict" = 3 ]; then
  stage "steepest lost: lr_finder.rule=fall_end, seeds 0-2, as the candidate"
  limit=${CANDIDATE_LIMIT:-120} mission_sweep "$work/rules-fall_end" seed=0,1,2 lr_finder.rule=fall_end
  publish
fi
fi
if want graph; then
stage "cuda_graph=true, seeds 0-2, one sweep (the defaults' runs: the rules stage's steepest rows)"
limit=${GRAPH_LIMIT:-120} mission_sweep "$work/graph" seed=0,1,2 cuda_graph=true
publish
fi
if want attribution; then
stage "where an epoch's time goes: six variants of the step, whole epochs, interleaved"
limited "${ATTRIBUTION_LIMIT:-150}" "$py" benchmarks/step_attribution.py --width 1 --steps "${STEPS:-97}" \
  --rounds "${ROUNDS:-1}" --data-root "$data" 2>&1 | grep -v "it/s\]" | tee "$work/attribution.txt"
publish
fi
if want sweep; then
stage "sweeps: per-job overhead, 15 jobs, 3 at a time on one GPU"
limited "${SWEEP_LIMIT:-120}" "$py" benchmarks/sweep.py --jobs 15 --parallel 3 --width 1 --images 5000 --epochs 2 \
  --data-root "$data" device=cuda 2>&1 | tee "$work/sweep.txt"
publish
fi
if want throughput; then
stage "throughput and $seeds full runs"
limited "${BENCH_LIMIT:-330}" "$py" benchmarks/throughput.py --steps "${STEPS:-97}" --rounds "${ROUNDS:-3}" \
  --workers "${WORKERS:-8}" --data-root "$data" --full-run --seeds "$seeds" --out "$work/runs" checkpoint=false "$@" 2>&1 \
  | grep -v "^\[\|it/s\]" | tee "$work/throughput.txt"
fi
if want compile; then
stage "compile=true, seed 0"
limited "${COMPILE_LIMIT:-150}" "$py" -m resnet9.train compile=true seed=0 data.root="$data" logger=none \
  progress=false checkpoint=false hydra.run.dir="$work/runs/compile-seed0" "$@" 2>&1 | tail -4
fi
if want old-path; then
stage "the step before warm-up and whole-epoch augmentation, seed 0 (the same card, side by side)"
limited "${OLD_PATH_LIMIT:-90}" "$py" -m resnet9.train warmup=false augment.whole_epoch=false seed=0 \
  data.root="$data" logger=none progress=false checkpoint=false hydra.run.dir="$work/runs/old-path-seed0" "$@" \
  2>&1 | tail -2
fi
if want regret; then
stage "the range-test rules' regret at full data"
limited "${REGRET_LIMIT:-540}" "$py" benchmarks/lr_regret.py --settings "model.width=1" \
  --rules steepest lowest --batch 512 --images 50000 --test-images 10000 --epochs 24 --seeds 2 \
  --data-root "$data" --out "$work/regret.json" -- device=cuda 2>&1 | grep -v "^\[" | tee "$work/regret.txt"
fi
if want evidence; then
stage "the defaults beside Page's schedule and on a q50 copy (3 seeds), options over 5 seeds"
# shellcheck disable=SC2086
limited "${EVIDENCE_LIMIT:-540}" "$py" benchmarks/evidence.py --data-root "$data" --out "$work/evidence" \
  --work .device/evidence --parts ${EVIDENCE_PARTS:-schedule q50} -- "$@" 2>&1 | grep -v "^\[" | tail -30
fi
stage "every complete run"
publish
cat "$work/summary.txt"
stage "done"
