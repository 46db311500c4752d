"""LAION-CLAP's side of benchmarks/clap_compare.py; runs in .clap_env (tools/make_clap_env.sh), never imports align.

    .clap_env/bin/python benchmarks/clap_peer.py shards --csv CSV --out DIR/NAME/train [--sample-rate 48000]
    .clap_env/bin/python benchmarks/clap_peer.py train --max-len N -- ARGS_OF_LAION_CLAP_TRAINING_MAIN ...
    .clap_env/bin/python benchmarks/clap_peer.py zeroshot --ckpt CKPT --amodel PANN-6 --csv CSV --classnames F
                                                          --templates F --max-len N --out JSON

shards: the CSV's (audio, caption) rows as webdataset shards in the layout laion_clap/training/data.py reads
(DIR/NAME/train/shard-N.tar of KEY.flac + KEY.json {"text": caption}, and sizes.json), the audio resampled to
its model's 48 kHz (its data.py reads the flac as it is and never resamples).
train: laion_clap's own trainer (laion_clap/training/main.py, unchanged) with four shims, each for a fault
found on this machine (benchmarks/RESULTS.md, "LAION-CLAP's trainer on the same real speech"):
  1. training/data.py fetches the BERT, RoBERTa and BART tokenizers from the Hugging Face hub at import: with
     no network, minutes of retries (transformers 5.25 then builds them empty). HF_HUB_OFFLINE=1 and stubs;
     tmodel "transformer" (the CLIP BPE shipped in the wheel) never calls them.
  2. PANN-6 / PANN-10 (Cnn6, Cnn10) take a waveform tensor but training/train.py hands every audio model the
     batch dict; their forward gets the dict's "waveform" (else: "TypeError: unhashable type: 'slice'" in
     torchlibrosa). Cnn14 and HTS-AT already read the dict.
  3. webdataset's torch_audio decoder needs torchaudio, which has no build for torch 2.14 on the index (the
     newest is 2.11.1); soundfile decodes the flac to the same (tensor [channels, samples], rate).
  4. get_data() never passes max_len, so every clip is padded to 480,000 samples (10 s at 48 kHz) and main.py
     has no option for it: --max-len sets it (the clips' own length here).
zeroshot: zero-shot accuracy on a CSV (audio, label[, group]): every class prompt (template x class name)
embedded with the model's get_text_embedding, averaged per class and normalised (CLIP's recipe, as `align
bench`), each clip with get_audio_embedding after the training pipeline's own get_audio_features.
"""
from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import io
import json
import os
import re
import sys
import tarfile
import time


def shim() -> None:
    """Make laion_clap's trainer importable and runnable here (shims 1-3 of the docstring)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers
    for cls in (transformers.BertTokenizer, transformers.RobertaTokenizer, transformers.BartTokenizer):
        cls.from_pretrained = classmethod(lambda c, *a, **k: None)
    # laion_clap's trainer imports `clap_module` / `training` as top-level packages (it is run from its folder)
    sys.path.insert(0, importlib.util.find_spec("laion_clap").submodule_search_locations[0])
    import clap_module.pann_model as pann
    for model in (pann.Cnn6, pann.Cnn10):
        def forward(self, input, mixup_lambda=None, device=None, _orig=model.forward):
            if isinstance(input, dict):
                input = input["waveform"].to(device=device, non_blocking=True)
            return _orig(self, input, mixup_lambda, device)
        model.forward = forward
    import webdataset
    webdataset.torch_audio = soundfile_audio


def soundfile_audio(key, data):
    """webdataset decoder: (float32 tensor [channels, samples], rate) for audio keys, None otherwise."""
    import numpy as np
    import soundfile
    import torch
    if re.sub(r".*[.]", "", key) not in ("flac", "mp3", "sox", "wav", "m4a", "ogg", "wma"):
        return None
    wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(wave.T)), rate


def read_csv(path: str) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_wave(path: str, rate: int):
    """float32 mono waveform of an audio file at `rate` Hz."""
    import librosa
    import numpy as np
    import soundfile
    wave, sr = soundfile.read(path, dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    return np.asarray(librosa.resample(wave, orig_sr=sr, target_sr=rate) if sr != rate else wave, np.float32)


def cmd_shards(a) -> None:
    import soundfile
    rows = read_csv(a.csv)
    os.makedirs(a.out, exist_ok=True)
    sizes = {}
    for start in range(0, len(rows), a.per_shard):
        name = f"shard-{start // a.per_shard:06d}.tar"
        with tarfile.open(os.path.join(a.out, name), "w") as tar:
            for i, row in enumerate(rows[start:start + a.per_shard], start):
                buf = io.BytesIO()
                soundfile.write(buf, load_wave(row["audio"], a.sample_rate), a.sample_rate, format="FLAC")
                for ext, data in (("flac", buf.getvalue()), ("json", json.dumps({"text": row["caption"]}).encode())):
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        sizes[name] = len(rows[start:start + a.per_shard])
    with open(os.path.join(a.out, "sizes.json"), "w") as f:
        json.dump(sizes, f)
    print(f"wrote {len(rows)} samples in {len(sizes)} shards to {a.out} at {a.sample_rate} Hz")


def cmd_train(a) -> None:
    shim()
    import training.data as data
    import training.main as main
    data.get_wds_dataset = functools.partial(data.get_wds_dataset, max_len=a.max_len)   # shim 4
    sys.argv = ["laion_clap/training/main.py", *a.rest]
    start = time.time()
    main.main()
    print(f"laion_clap training: {time.time() - start:.1f} s wall", flush=True)


def cmd_zeroshot(a) -> None:
    shim()
    import numpy as np
    import torch
    from clap_module import create_model, tokenize
    from training.data import get_audio_features
    model, cfg = create_model(a.amodel, "transformer", "", precision="fp32", device="cpu", enable_fusion=False)
    state = torch.load(a.ckpt, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict({k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()})
    model.eval()
    classes = [c for c in open(a.classnames).read().split("\n") if c]
    templates = [t for t in open(a.templates).read().split("\n") if t]
    rows = read_csv(a.csv)
    with torch.no_grad():
        weights = []
        for c in classes:
            # get_text_embedding expects a tokenizer dict (RoBERTa); for "transformer" it is encode_text + normalise
            emb = torch.nn.functional.normalize(model.encode_text(tokenize([t.format(c=c) for t in templates]),
                                                                  "cpu"), dim=-1)
            mean = emb.mean(0)
            weights.append(mean / mean.norm())
        weights = torch.stack(weights)
        preds = []
        for start in range(0, len(rows), a.batch_size):
            batch = []
            for row in rows[start:start + a.batch_size]:
                wave = torch.from_numpy(load_wave(row["audio"], cfg["audio_cfg"]["sample_rate"]))
                batch.append(get_audio_features({}, wave, a.max_len, "rand_trunc", "pad", cfg["audio_cfg"]))
            preds += (model.get_audio_embedding(batch) @ weights.T).argmax(1).tolist()
        labels = [classes.index(r["label"]) for r in rows]
        correct = int(np.sum(np.array(preds) == np.array(labels)))
    result = {"csv": os.path.abspath(a.csv), "ckpt": os.path.abspath(a.ckpt), "n": len(rows),
              "acc1": round(correct / len(rows), 4), "templates": templates}
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("n", "acc1")}))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("shards", help="CSV (audio, caption) -> laion_clap webdataset shards + sizes.json")
    p.add_argument("--csv", required=True)
    p.add_argument("--out", required=True, help="DATASETPATH/NAME/train")
    p.add_argument("--sample-rate", type=int, default=48000, help="its models' rate (model_configs: 48000)")
    p.add_argument("--per-shard", type=int, default=1000)
    p = sub.add_parser("train", help="laion_clap/training/main.py with the shims; its arguments after --")
    p.add_argument("--max-len", type=int, required=True, help="samples each clip is padded / cut to")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p = sub.add_parser("zeroshot", help="zero-shot acc1 of a checkpoint on a CSV (audio, label)")
    for opt in ("--ckpt", "--csv", "--classnames", "--templates", "--out"):
        p.add_argument(opt, required=True)
    p.add_argument("--amodel", default="PANN-6")
    p.add_argument("--max-len", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    a = ap.parse_args(argv)
    if a.cmd == "train" and a.rest[:1] == ["--"]:
        a.rest = a.rest[1:]
    {"shards": cmd_shards, "train": cmd_train, "zeroshot": cmd_zeroshot}[a.cmd](a)


if __name__ == "__main__":
    main()
