#!/usr/bin/env bash
# Stage in .device/ what a lent GPU machine's call carries (it has no internet), then check the carry's size:
#   bash benchmarks/device_prepare.sh            (from a checkout with ../shared beside it; SHARED=... elsewhere)
# Run it again right before a call: it also clears what a CPU rehearsal of device_check.sh left in .device/.
# - the 18 MB JPEG archive of the staged CIFAR-10 copy and the script that rebuilds its batches there;
# - the wheels the GPU image lacks (../shared/tools/offline-wheels.sh), less those the image already holds
#   (its package list: the device tool's KINDS.md, read 2026-11-17; a second copy would shadow the image's,
#   pytest and its plugins among them) and less grad-cam, which serves `resnet9-evaluate`'s maps alone.
# .device/ is listed in .git/info/exclude, so it travels only when a call names it: carry [".device"].
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
limit_mib=64  # what one call carries in all: the working tree and .device

mkdir -p .device
cp "$shared/cifar10/cifar10-jpeg.tar.xz" "$shared/cifar10/build_batches.py" .device/
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx /.device/ "$exclude" 2>/dev/null || echo /.device/ >>"$exclude"
# what device_check.sh makes there (the batches, the installed packages, results) must not travel back out
rm -rf .device/data .device/site .device/out .device/work .device/work.tgz .device/cache .device/evidence

# grad-cam publishes no wheel, and the wheel download resolves every dependency at once: build it first, where
# pip finds it (PIP_FIND_LINKS), then leave it and what only it needs out of the carry
built=$(mktemp -d)
trap 'rm -rf "$built"' EXIT
python3 -m pip wheel -q --no-deps -w "$built" "grad-cam>=1.5,<1.6" 2>&1 | grep -v "is ignored" || true
PIP_FIND_LINKS=$built bash "$shared/tools/offline-wheels.sh" .device/whl | tail -1
image_has="cloudpickle joblib narwhals pytest pluggy iniconfig pygments packaging tabulate threadpoolctl \
  scikit_learn"
for name in grad_cam ttach $image_has; do rm -f .device/whl/"$name"-*.whl; done

tree_kib=$(git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
device_kib=$(du -sk .device | cut -f1)
total_mib=$(((tree_kib + device_kib) / 1024))
echo "carry: working tree $((tree_kib / 1024)) MiB + .device $((device_kib / 1024)) MiB = $total_mib MiB (limit $limit_mib)"
[ "$total_mib" -lt "$limit_mib" ] || { echo "over the carry limit: leave more wheels out of .device/whl"; exit 1; }
