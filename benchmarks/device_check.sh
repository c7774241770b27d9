#!/usr/bin/env bash
# Every GPU check of the speed issue in one command, for a lent GPU machine (no internet there).
#
# Here, once:   mkdir -p .device && cp ../shared/cifar10/cifar10-jpeg.tar.xz ../shared/cifar10/build_batches.py .device/
#               echo /.device/ >> .git/info/exclude && bash ../shared/tools/offline-wheels.sh .device/whl
# There:        bash benchmarks/device_check.sh [SEEDS] [extra Hydra overrides for the full runs...]
#               (carry .device; results land in $OUT, or in .device/out when OUT is unset)
#
# It stages CIFAR-10 from the 18 MB JPEG archive, installs the wheels the image lacks, prints the GPU, runs
# benchmarks/throughput.py on whole epochs (97 steps of 512) and then SEEDS (default 5) complete 24-epoch runs.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-5}
shift || true
out=${OUT:-.device/out}
mkdir -p "$out"
[ -d .device/data/cifar-10-batches-py ] || python3 .device/build_batches.py .device/cifar10-jpeg.tar.xz .device/data
if [ -d .device/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .device/site .device/whl/*.whl
  export PYTHONPATH=$PWD/.device/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export WANDB_MODE=offline PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
steps=${STEPS:-97}
python3 benchmarks/throughput.py --steps "$steps" --rounds "${ROUNDS:-5}" --data-root .device/data \
  --full-run --seeds "$seeds" "$@" 2>&1 | tee "$out/throughput.txt"
