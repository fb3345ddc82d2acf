#!/usr/bin/env bash
# Packs what benchmarks/gpu_session.sh needs on a lent GPU machine into .gpu/ (git-ignored via .git/info/exclude):
# that machine has torch, numpy, opencv, scikit-learn and matplotlib but no network, so it gets the Fashion-MNIST
# files, a wheel of this checkout and the pure-Python wheels ultralytics needs. polars, which ultralytics also needs,
# has a 54 MB runtime wheel that does not fit the 64 MiB transfer with the data, so benchmarks/gpu_shim stands in for
# its one use on the training path (reading results.csv; plots are off).
#
#   bash benchmarks/gpu_prepare.sh [classify.tgz]   # the optional archive of an earlier session's classify runs
#                                                   # (unpacked to .gpu/prev) feeds a DETECT_ONLY=1 rerun
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/data .gpu/whl
data=${FASHIONKIT_DATA:-/usr/share/datasets/fashion-mnist}
cp "$data"/*-ubyte.gz .gpu/data/
cp -r benchmarks/gpu_shim .gpu/shim
if [ $# -ge 1 ]; then mkdir -p .gpu/prev && tar xzf "$1" -C .gpu/prev; fi
.venv/bin/pip wheel -q --no-deps --no-build-isolation -w .gpu/whl .
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
.venv/bin/pip download -q --no-deps --only-binary=:all: -d .gpu/whl \
    "ultralytics==$(version ultralytics)" "ultralytics-thop==$(version ultralytics-thop)"
du -sh .gpu
