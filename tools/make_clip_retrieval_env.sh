#!/usr/bin/env bash
# Builds the separate environment that runs clip-retrieval's `inference` as the baseline for
# benchmarks/retrieval_embed.py. clip-retrieval 2.45 pins webdataset<0.3, numpy<2 and pyarrow<16
# (align needs webdataset 1.x), so it cannot share align's environment. Its clip loader (all_clip ->
# openai clip) imports pkg_resources, which setuptools >= 81 no longer ships: pin setuptools below 70.
#   bash tools/make_clip_retrieval_env.sh [DIR]      (default DIR: .cr_env)
set -euo pipefail
DIR=${1:-.cr_env}
python3 -m venv "$DIR"
"$DIR/bin/pip" install -q torch torchvision
"$DIR/bin/pip" install -q clip-retrieval "setuptools<70"
"$DIR/bin/python" -c "import clip_retrieval.clip_inference.main, all_clip, webdataset; print('clip-retrieval ready, webdataset', webdataset.__version__)"
