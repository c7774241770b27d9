#!/usr/bin/env bash
# Every GPU check in one command, for a lent GPU machine (no internet there).
#
# Here, once:   mkdir -p .device && cp ../shared/cifar10/cifar10-jpeg.tar.xz ../shared/cifar10/build_batches.py .device/
#               echo /.device/ >> .git/info/exclude && bash ../shared/tools/offline-wheels.sh .device/whl
#               (grad-cam ships no wheel: build it into .device/whl first, as that script does for antlr4)
#               python3 -m pip download -q --only-binary=:all: --python-version 3.12 -d .device/whl pytest
#               (pytest and its two small dependencies, for the gpu-tests stage; the image has none)
# There:        bash benchmarks/device_check.sh [SEEDS] [extra Hydra overrides for the full runs...]
#               (carry .device; results land in $OUT, or in .device/out when OUT is unset)
#               STAGES="regret" bash benchmarks/device_check.sh     # one stage alone (see below)
#
# Stages, each under its own time limit so that one slow stage cannot take the others' time; STAGES names the
# ones to run (default: "gpu-tests attribution graph sweep"; all of them do not fit one lent machine's 15 min):
#   (always)     stage CIFAR-10 from the 18 MB JPEG archive, install the wheels the image lacks, print the GPU;
#   gpu-tests    every test marked `gpu` (pytest -m gpu: tests/training/test_gpu.py -- fp16 loss scaling with fused SGD, the
#                CUDA generator's augmentation, resume, a reused model, the background writer, a cuda_graph run with
#                checkpoint and resume -- and the captured step against the eager one), where pytest is installed;
#   attribution  benchmarks/step_attribution.py at full width: six variants of the step, whole epochs (issue 11);
#   graph        cuda_graph=true runs of seeds 0-2 beside one default run (seed 0), same card (issue 11);
#   throughput   benchmarks/throughput.py on whole epochs (97 steps of 512) for the data paths, then SEEDS
#                (default 5) complete 24-epoch runs with the defaults (their folders are kept under $OUT/runs);
#   compile      one more complete run with compile=true (seed 0), to compare its training time and first step;
#   old-path     one run with the step as it was before warm-up and whole-epoch augmentation (issue 11);
#   sweep        benchmarks/sweep.py: a 15-job sweep's per-job overhead and wall time, and the same sweep 3 jobs
#                at a time on the one GPU (joblib) against one at a time (issue 10);
#   regret       benchmarks/lr_regret.py on the mission's run (issue 15): full width and data, batch 512, 24 epochs,
#                2 seeds, today's rule (steepest) and the previous one (lowest) against the SGD grid: 16 runs,
#                about 6-7 minutes on an H100;
#   evidence     benchmarks/evidence.py (issue 14): the defaults beside Page's schedule and on the staged copy
#                passed once more through JPEG q50, 3 seeds each (EVIDENCE_PARTS="schedule q50", 9 runs); the
#                options over 5 seeds (EVIDENCE_PARTS=options, 40 runs) in a lent device run of their own. Commit
#                $OUT/evidence/*/ under results/<date>-gpu-evidence/ and print the README's table with
#                `python benchmarks/evidence.py --table results/<date>-gpu-evidence`.
# Every complete run's row (accuracy, train time, epoch 1 against the median epoch, warm-up) is in summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-5}
shift || true
out=${OUT:-.device/out}
mkdir -p "$out"
started=$(date +%s)
stage() { echo; echo "== $1 (at $(( $(date +%s) - started )) s)"; }
stages=" ${STAGES:-gpu-tests attribution graph sweep} "
want() { [[ "$stages" == *" $1 "* ]]; }

stage "data and packages"
[ -d .device/data/cifar-10-batches-py ] || python3 .device/build_batches.py .device/cifar10-jpeg.tar.xz .device/data || exit 1
if [ -d .device/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .device/site \
    .device/whl/*.whl || exit 1
  export PYTHONPATH=$PWD/.device/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export WANDB_MODE=offline PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 RESNET9_CACHE=$PWD/.device/cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"

if want gpu-tests; then
stage "the GPU-only tests: pytest -m gpu (needs pytest on the machine)"
if python3 -c "import pytest" 2>/dev/null; then
  timeout "${TESTS_LIMIT:-240}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/training/test_gpu.py tests/training/test_cuda_graph.py \
    2>&1 | tee "$out/gpu-tests.txt" | tail -15
else
  echo "pytest is not installed here: add its wheels to .device/whl (see this script's header)"
fi
fi
if want attribution; then
stage "where an epoch's time goes: six variants of the step, whole epochs, interleaved (issue 11)"
timeout "${ATTRIBUTION_LIMIT:-200}" python3 benchmarks/step_attribution.py --width 1 --steps "${STEPS:-97}" \
  --rounds "${ROUNDS:-3}" --data-root .device/data 2>&1 | grep -v "it/s\]" | tee "$out/attribution.txt"
fi
if want graph; then
stage "cuda_graph=true, seeds 0-2, beside the defaults, seed 0 (issue 11: the same card)"
for run in graph-seed0:"cuda_graph=true seed=0" graph-seed1:"cuda_graph=true seed=1" \
           graph-seed2:"cuda_graph=true seed=2" default-seed0:"seed=0"; do
  # shellcheck disable=SC2086
  timeout "${GRAPH_LIMIT:-60}" python3 -m resnet9.train ${run#*:} data.root=.device/data logger=none progress=false \
    checkpoint=false hydra.run.dir="$out/runs/${run%%:*}" "$@" 2>&1 | grep -i "warn\|error" | tail -2
done
fi
if want throughput; then
stage "throughput and $seeds full runs"
timeout "${BENCH_LIMIT:-330}" python3 benchmarks/throughput.py --steps "${STEPS:-97}" --rounds "${ROUNDS:-3}" \
  --workers "${WORKERS:-8}" --data-root .device/data --full-run --seeds "$seeds" --out "$out/runs" checkpoint=false "$@" 2>&1 \
  | grep -v "^\[\|it/s\]" | tee "$out/throughput.txt"
fi

if want compile; then
stage "compile=true, seed 0"
timeout "${COMPILE_LIMIT:-150}" python3 -m resnet9.train compile=true seed=0 data.root=.device/data logger=none \
  progress=false checkpoint=false hydra.run.dir="$out/runs/compile-seed0" "$@" 2>&1 | tail -4
fi
if want old-path; then
stage "the step before warm-up and whole-epoch augmentation, seed 0 (issue 11: the same card, side by side)"
timeout "${OLD_PATH_LIMIT:-90}" python3 -m resnet9.train warmup=false augment.whole_epoch=false seed=0 \
  data.root=.device/data logger=none progress=false checkpoint=false hydra.run.dir="$out/runs/old-path-seed0" "$@" \
  2>&1 | tail -2
fi
[ -d "$out/runs" ] && python3 - "$out/runs" <<'PY' | tee "$out/summary.txt"
import json, pathlib, statistics, sys
rows = []
for path in sorted(pathlib.Path(sys.argv[1]).glob("*/metrics.json")):
    m = json.loads(path.read_text())
    if m.get("status") != "completed":
        print(f"{path.parent.name}: {m.get('status')} {m.get('error', '')}")
        continue
    epochs = [r["train_time_s"] for r in m["epochs"]]
    rows.append((path.parent.name, 100 * m["final_test_acc"], m["train_time_s"], m.get("first_step_s", float("nan")),
                 sum(r["epoch_time_s"] for r in m["epochs"]), m["lr_min"], m["lr_max"], epochs[0],
                 statistics.median(epochs), m["timings"].get("warmup_s", 0.0), m["precision"]))
print("| run | final test acc (%) | train time (s) | first step (s) | with evaluation (s) | LRMIN | LRMAX "
      "| epoch 1 (s) | median epoch (s) | warm-up (s) | precision |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for name, acc, train, first, total, lo, hi, first_epoch, median, warmup, precision in rows:
    print(f"| {name} | {acc:.2f} | {train:.2f} | {first:.2f} | {total:.2f} | {lo:.4g} | {hi:.4g} "
          f"| {first_epoch:.2f} | {median:.2f} | {warmup:.2f} | {precision} |")
seeds = [r[1] for r in rows if r[0].startswith("seed")]
if len(seeds) > 1:
    print(f"\nseeds: {len(seeds)}, mean {statistics.fmean(seeds):.2f} ± {statistics.stdev(seeds):.2f} %")
PY
if want sweep; then
stage "sweeps: per-job overhead, 15 jobs, 3 at a time on one GPU"
timeout "${SWEEP_LIMIT:-200}" python3 benchmarks/sweep.py --jobs 15 --parallel 3 --width 1 --images 5000 --epochs 2 \
  --data-root .device/data device=cuda 2>&1 | tee "$out/sweep.txt"
fi
if want regret; then
stage "the range-test rules' regret at full data (issue 15)"
timeout "${REGRET_LIMIT:-540}" python3 benchmarks/lr_regret.py --settings "model.width=1" \
  --rules steepest lowest --batch 512 --images 50000 --test-images 10000 --epochs 24 --seeds 2 \
  --data-root .device/data --out "$out/regret.json" -- device=cuda 2>&1 | grep -v "^\[" | tee "$out/regret.txt"
fi
if want evidence; then
stage "issue 14: the defaults beside Page's schedule and on a q50 copy (3 seeds), options over 5 seeds"
# EVIDENCE_PARTS="schedule q50" (9 runs) and "options" (40 runs) fit different lent device runs
# shellcheck disable=SC2086
timeout "${EVIDENCE_LIMIT:-540}" python3 benchmarks/evidence.py --data-root .device/data --out "$out/evidence" \
  --work .device/evidence --parts ${EVIDENCE_PARTS:-schedule q50} -- "$@" 2>&1 | grep -v "^\[" | tail -30
fi
stage "done"
