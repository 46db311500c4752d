#!/usr/bin/env bash
# Builds the separate environment that runs LAION-CLAP's own trainer (laion_clap/training/main.py)
# as the peer in benchmarks/clap_compare.py. laion_clap 1.1.7 pins numpy<2 (and its own
# transformers/torchlibrosa/webdataset versions), so it cannot share align's environment.
#   bash tools/make_clap_env.sh [DIR]      (default DIR: .clap_env)
set -euo pipefail
DIR=${1:-.clap_env}
python3 -m venv "$DIR"
"$DIR/bin/pip" install -q --upgrade pip
"$DIR/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
"$DIR/bin/pip" install -q "laion_clap==1.1.7"
# laion_clap/training/data.py fetches three Hugging Face tokenizers at import (minutes of retries without network):
# checked offline here; benchmarks/clap_peer.py runs its trainer with the shims this machine needs.
HF_HUB_OFFLINE=1 "$DIR/bin/python" -c "import importlib.util, sys; \
sys.path.insert(0, importlib.util.find_spec('laion_clap').submodule_search_locations[0]); \
import clap_module, training.data, numpy, torch; \
print('laion_clap ready: numpy', numpy.__version__, 'torch', torch.__version__)"
