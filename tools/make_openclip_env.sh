#!/usr/bin/env bash
# Builds the separate environment that runs open_clip's own trainer (open_clip_train) as the
# baseline for benchmarks/throughput.py. open_clip_train pins webdataset <= 0.2.86 and fails on
# webdataset 1.x, so it cannot share align's environment.
#   bash tools/make_openclip_env.sh [DIR]      (default DIR: .bench_env)
set -euo pipefail
DIR=${1:-.bench_env}
python3 -m venv "$DIR"
"$DIR/bin/pip" install -q --upgrade pip
"$DIR/bin/pip" install -q torch torchvision "open_clip_torch[training]" "webdataset==0.2.86" pandas
"$DIR/bin/python" -c "import open_clip_train.main, webdataset; print('open_clip_train ready, webdataset', webdataset.__version__)"
