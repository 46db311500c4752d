#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.sh on the lent GPU machine (Python 3.12, x86-64, no network): the packages
# align's check needs that its image lacks (it has torch, torchvision, accelerate, numpy, pillow, pyyaml,
# pandas, pyarrow, scipy, timm, transformers, safetensors, regex, tqdm, scikit-learn, tensorboard, matplotlib).
# Run here, in the repository root, where pip reaches PyPI; versions are this environment's (PYTHON):
#   bash benchmarks/gpu_check_wheels.sh [DIR]      # default DIR .whl (then added to git's info/exclude)
# then, on the device (carry: [".whl"]):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site && PYTHON=python3 bash benchmarks/gpu_check.sh "$OUT"
# pycocoevalcap (clip_benchmark's captioning metrics, ~100 MB) is left out on purpose: gpu_check gives the
# clip_benchmark CLI a stand-in for it. The working tree plus .whl must stay under the 64 MiB a call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PKGS="open_clip_torch ftfy wcwidth webdataset braceexpand faiss-cpu soundfile cffi pycparser clip-benchmark flufl.lock atpublic"
DIR=${1:-.whl}
if [ "$DIR" = .whl ]; then
  EXCL=$(git rev-parse --git-path info/exclude)
  grep -qx '/.whl/' "$EXCL" 2>/dev/null || echo '/.whl/' >> "$EXCL"
fi
mkdir -p "$DIR"
for name in $PKGS; do
  v=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null || true)
  spec=$name${v:+==$v}
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DIR" "$spec"
done
ls -la "$DIR"
du -sh "$DIR"
