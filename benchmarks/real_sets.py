"""Build real development sets (people's scans and voices, split by writer / speaker) the way a user would.

    python benchmarks/real_sets.py scans  --images GZ --writers TSV_GZ --out DIR [--n-train 8000] [--n-eval 2000]
    python benchmarks/real_sets.py speech --recordings DIR_OR_GIT_DIR --out DIR
    python benchmarks/real_sets.py bengali --recordings DIR_OR_GIT_DIR --out DIR [--eval-per-digit 10] [--min-digits 8]
    (common: [--seed 0] [--fracs 0.6 0.2 0.2] [--no-shards])

Both split the *groups* (writers, speakers) three ways, disjoint and seeded: train groups, selection groups
(every recipe choice is made on these) and report groups (only reported, never chosen by). Each builder
writes what a user has -- a CSV of media files + free-form captions for training, and a CSV with a label
column per eval split -- then runs `align data shards` on them:

    DIR/train/                 shards (`data.train=DIR/train`)
    DIR/selection/, DIR/report/ CLIP_benchmark zero-shot sets (`data.val=`, `align bench`)
    DIR/split.json             seed, fractions, the groups of each split, counts, source files

scans:  real handwritten digits of MNIST's *training* images (`train-images-idx3-ubyte.gz`; a truncated copy
        is read up to its last complete image) with NIST writer ids from QMNIST's `qmnist-train-labels.tsv.gz`
        (column 0 the digit, column 2 the writer; same order as MNIST's training set, as QMNIST's README
        says). Only the training split is read: MNIST's test split is reserved and never used here.
speech: real recordings of spoken digits, one folder per speaker holding SPEAKER_D.mp3 / SPEAKER_0D.mp3 (or
        .wav/.flac), D the digit -- the layout of github.com/CaCuCkA/ukranian-spoken-digits `recordings/`
        (88 speakers, Ukrainian). A bare git directory is read with `git show` (a `fetch` mirror). A recording
        byte-identical to one of an earlier split (that repo files woman_50's ten again as woman_51's) is left out.
        The Free Spoken Digit Dataset is reserved: a file whose name carries one of its speakers is refused.
bengali: real recordings of spoken digits in Bengali, one folder per digit word (sunno ek dui tin char panch
        choy sat aat noi), many takes per speaker, the speaker's name in the file name in several spellings
        (`ek_abhijit_ (3).wav`, `PAPPU_M_8_EK_04.wav`, `srijita_dui_ (12).wav`) -- the layout of
        github.com/BachchuPaul/Bengali-Isolated-Spoken-Digit (~13,500 one-second 16 kHz clips, ~34 speakers).
        The label is the folder; files without a speaker name ("My recording 7.wav") and speakers recorded
        on fewer than --min-digits digits (name typos) are left out, and so are byte-identical copies of a
        file (one speaker's single take per digit is there 50 times). Eval splits keep at most
        --eval-per-digit takes per speaker and digit, so every unseen speaker weighs about the same.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPLITS = ("train", "selection", "report")
# free-form captions a user might have typed: {word} = "seven", {num} = "7"
SCAN_CAPTIONS = ["{word}", "a handwritten {word}", "a scanned number {word}", "{num}",
                 "the digit {num}, handwritten", "scan of a {word}"]
SPEECH_CAPTIONS = ["{word}", "someone saying {word}", "the spoken number {num}", "a voice says {word}",
                   "recording of the word {word}", "{num}, said out loud"]
# zero-shot prompts: the demo's for scans (align/demo/data.py), generalisation.py's for speech
SCAN_TEMPLATES = ["a photo of the digit {c}.", "a handwritten {c}.", "the number {c} written by hand.",
                  "a blurry image of the digit {c}.", "a low-resolution photo of the number {c}.",
                  "a white {c} on a black background."]
SPEECH_TEMPLATES = ["a recording of someone saying {c}.", "the spoken word {c}.",
                    "a voice saying the number {c}."]
RESERVED_SPEAKERS = re.compile(r"jackson|nicolas|theo|yweweler|george|lucas", re.I)   # FSDD's speakers
AUDIO_NAME = re.compile(r"^(?P<spk>.+)_(?P<digit>\d{1,2})\.(?:mp3|wav|flac)$")
# bengali: folder -> digit, and every spelling of a digit word seen in its file names (dropped to find the speaker)
BENGALI_FOLDERS = {"sunno": 0, "ek": 1, "dui": 2, "tin": 3, "char": 4, "panch": 5, "choy": 6, "sat": 7, "aat": 8,
                   "noi": 9}
BENGALI_WORDS = set(BENGALI_FOLDERS) | {"shunno", "choi", "chhoy", "sath", "aath", "ath", "noy"}
# One person, two spellings: the repo holds two sessions of the same ten people (`NAME_M_40_EK_01.wav` and
# `ek_name_1.wav`); eight names match exactly, these do not. Merged so that one voice never straddles two splits.
BENGALI_ALIASES = {"subha": "subhendhu", "tansu": "nityansh", "dabashri": "debashri"}


def split_groups(groups: Sequence, fracs: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0) -> Dict:
    """{group: split name}: the distinct groups, sorted then shuffled with `seed`, cut by `fracs`.

    Every split gets at least one group (so it needs >= 3 groups); the splits are disjoint by construction."""
    uniq = sorted(set(groups), key=str)
    if len(uniq) < 3:
        raise ValueError(f"need at least 3 groups to split three ways, got {len(uniq)}")
    order = [uniq[i] for i in np.random.default_rng(seed).permutation(len(uniq))]
    total = float(sum(fracs))
    n_train = max(1, min(len(uniq) - 2, round(len(uniq) * fracs[0] / total)))
    n_sel = max(1, min(len(uniq) - n_train - 1, round(len(uniq) * fracs[1] / total)))
    cut = {g: "train" for g in order[:n_train]}
    cut.update({g: "selection" for g in order[n_train:n_train + n_sel]})
    cut.update({g: "report" for g in order[n_train + n_sel:]})
    return cut


def read_idx_images(path: str) -> np.ndarray:
    """uint8 [N, rows, cols] from an idx3-ubyte(.gz) file; a truncated gzip yields its complete images."""
    raw = Path(path).read_bytes()
    data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 2051:
        sys.exit(f"{path}: not an idx3-ubyte image file (magic {magic})")
    k = min(n, (len(data) - 16) // (rows * cols))
    return np.frombuffer(data[16:16 + k * rows * cols], np.uint8).reshape(k, rows, cols)


def read_writers(path: str) -> np.ndarray:
    """int64 [N, 8] of QMNIST's extended labels (tsv, optionally gzipped): col 0 digit, col 2 writer id."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        return np.loadtxt(f, dtype=np.int64, ndmin=2)


def write_csv(path: Path, header: Sequence[str], rows: List[Sequence]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def caption(rng, templates: Sequence[str], label: int) -> str:
    return templates[int(rng.integers(len(templates)))].format(word=CLASSNAMES[label], num=label)


def pick(rng, idx: np.ndarray, n: int) -> np.ndarray:
    """At most n of idx, drawn without replacement, in a seeded order."""
    return idx[rng.permutation(len(idx))[:n]] if n < len(idx) else idx[rng.permutation(len(idx))]


def build_scans(a) -> dict:
    from PIL import Image
    images = read_idx_images(a.images)
    ext = read_writers(a.writers)
    n = len(images)
    labels, writers = ext[:n, 0], ext[:n, 2]
    cut = split_groups(writers.tolist(), a.fracs, a.seed)
    rng = np.random.default_rng(a.seed)
    out = Path(a.out)
    split_of = np.array([cut[w] for w in writers.tolist()])
    rows: Dict[str, list] = {}
    for split in SPLITS:
        take = pick(rng, np.flatnonzero(split_of == split), a.n_train if split == "train" else a.n_eval)
        (out / "files" / split).mkdir(parents=True, exist_ok=True)
        rows[split] = []
        for i in sorted(take.tolist()):
            f = out / "files" / split / f"mnist-train-{i:05d}.png"
            Image.fromarray(images[i]).save(f)
            label = int(labels[i])
            text = caption(rng, SCAN_CAPTIONS, label) if split == "train" else CLASSNAMES[label]
            rows[split].append((str(f.resolve()), text, int(writers[i])))
    return finish(a, out, rows, cut, "image", SCAN_TEMPLATES,
                  {"images": os.path.abspath(a.images), "images_read": n, "writers": os.path.abspath(a.writers)})


def list_recordings(src: str) -> Dict[str, bytes]:
    """{relative path: bytes} of the audio files under a folder or in a bare git dir's HEAD."""
    if (Path(src) / "HEAD").is_file() and (Path(src) / "objects").is_dir():
        names = subprocess.run(["git", "-C", src, "ls-tree", "-r", "--name-only", "HEAD"], check=True,
                               capture_output=True, text=True).stdout.split("\n")
        names = [p for p in names if AUDIO_NAME.match(os.path.basename(p))]
        return {p: subprocess.run(["git", "-C", src, "show", f"HEAD:{p}"], check=True,
                                  capture_output=True).stdout for p in names}
    return {str(p.relative_to(src)): p.read_bytes() for p in sorted(Path(src).rglob("*"))
            if p.is_file() and AUDIO_NAME.match(p.name)}


def decodable(data: bytes) -> bool:
    import io
    import soundfile
    try:
        soundfile.info(io.BytesIO(data))
        return True
    except Exception:   # libsndfile raises its own error types for unknown formats
        return False


def build_speech(a) -> dict:
    files = list_recordings(a.recordings)
    reserved = [p for p in files if RESERVED_SPEAKERS.search(p)]
    if reserved:
        sys.exit(f"{reserved[0]}: names a Free Spoken Digit Dataset speaker; that set is reserved, not used")
    items, undecodable = [], []   # (path, speaker, digit); files soundfile cannot open
    for p in sorted(files):
        m = AUDIO_NAME.match(os.path.basename(p))
        digit = int(m.group("digit"))
        if digit > 9:
            print(f"{p}: digit {digit} is not 0-9, skipped")
        elif not decodable(files[p]):
            undecodable.append(p)
        else:
            items.append((p, m.group("spk"), digit))
    if undecodable:     # before the split, so every speaker of a split really is in its shards
        print(f"{len(undecodable)} of {len(files)} recordings cannot be decoded (e.g. {undecodable[0]}: "
              f"not a format libsndfile reads), left out")
    cut = split_groups([s for _, s, _ in items], a.fracs, a.seed)
    items, copies = without_copies_across_splits(items, cut, files)
    if copies:
        print(f"{len(copies)} recordings are byte-identical to one of another split (one voice filed under two "
              f"speakers, e.g. {copies[0]}): left out of the later split")
    rng = np.random.default_rng(a.seed)
    out = Path(a.out)
    rows: Dict[str, list] = {s: [] for s in SPLITS}
    for p, spk, digit in items:
        split = cut[spk]
        f = out / "files" / split / p.replace("/", "__")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(files[p])
        text = caption(rng, SPEECH_CAPTIONS, digit) if split == "train" else CLASSNAMES[digit]
        rows[split].append((str(f.resolve()), text, spk))
    return finish(a, out, rows, cut, "audio", SPEECH_TEMPLATES, {"recordings": os.path.abspath(a.recordings),
                                                                 "undecodable_left_out": len(undecodable),
                                                                 "copies_across_splits_left_out": len(copies)})


def without_copies_across_splits(items: list, cut: Dict, files: Dict) -> tuple:
    """(items, dropped paths): an item whose bytes an item of an earlier split (train, then selection, then
    report) also has is dropped, so a recording filed under two speakers (github.com/CaCuCkA/ukranian-spoken-digits
    holds woman_50's ten recordings again as woman_51's) never scores a held-out split with a voice trained on or
    chosen by. Copies within one split stay (the seed-0 sets are unchanged: both of those speakers are in train)."""
    first: Dict[str, int] = {}                      # digest -> the earliest split index holding it
    digest = {p: hashlib.blake2b(files[p], digest_size=16).digest() for p, _, _ in items}
    for p, spk, _ in items:
        first[digest[p]] = min(first.get(digest[p], len(SPLITS)), SPLITS.index(cut[spk]))
    kept = [it for it in items if SPLITS.index(cut[it[1]]) == first[digest[it[0]]]]
    dropped = [p for p, spk, _ in items if SPLITS.index(cut[spk]) != first[digest[p]]]
    return kept, dropped


def bengali_speaker(filename: str):
    """The speaker's name (lower case) in a bengali file name, or None when it names none ("My recording 3.wav").

    The first token that is not a digit word, a number, a sex letter (M/F) or a sample rate ("16KHz"), with
    BENGALI_ALIASES applied."""
    stem = os.path.splitext(filename)[0].lower()
    tokens = [t for t in re.split(r"[_\s()\-.]+", stem) if t]
    if not tokens or tokens[0] == "my":
        return None
    name = [t for t in tokens if t not in BENGALI_WORDS and not re.fullmatch(r"\d+|[mf]|\d+khz", t)]
    return BENGALI_ALIASES.get(name[0], name[0]) if name else None


def extract_git(src: str, dest: Path) -> Path:
    """A bare git dir's HEAD tree written under dest (once); a folder is returned as it is."""
    if not ((Path(src) / "HEAD").is_file() and (Path(src) / "objects").is_dir()):
        return Path(src)
    if not dest.is_dir():
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", src, "archive", "HEAD"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def build_bengali(a) -> dict:
    root = extract_git(a.recordings, Path(a.out) / "source")
    found, nameless, undecodable, copies = [], 0, [], 0   # (path, speaker, digit)
    seen = set()                # sha1 of the bytes: one speaker's take copied 50 times is one take
    for folder, digit in BENGALI_FOLDERS.items():
        for f in sorted((root / folder).glob("*.wav")):
            spk, data = bengali_speaker(f.name), f.read_bytes()
            digest = hashlib.sha1(data).hexdigest()
            if spk is None:
                nameless += 1
            elif digest in seen:
                copies += 1
            elif not decodable(data):
                undecodable.append(str(f))
            else:
                found.append((f, spk, digit))
            seen.add(digest)
    reserved = sorted({s for _, s, _ in found if RESERVED_SPEAKERS.search(s)})
    if reserved:
        sys.exit(f"speaker {reserved[0]}: a Free Spoken Digit Dataset speaker; that set is reserved, not used")
    digits_of: Dict[str, set] = {}
    for _, spk, digit in found:
        digits_of.setdefault(spk, set()).add(digit)
    few = sorted(s for s, d in digits_of.items() if len(d) < a.min_digits)
    items = [it for it in found if it[1] not in few]
    print(f"{len(items)} recordings by {len(digits_of) - len(few)} speakers; left out: {nameless} without a "
          f"speaker name, {copies} byte-identical copies, {len(undecodable)} undecodable, speakers on "
          f"< {a.min_digits} digits: {few}")
    cut = split_groups([s for _, s, _ in items], a.fracs, a.seed)
    rng = np.random.default_rng(a.seed)
    rows: Dict[str, list] = {s: [] for s in SPLITS}
    takes: Dict[tuple, list] = {}
    for f, spk, digit in items:
        takes.setdefault((spk, digit), []).append(f)
    for (spk, digit), files in sorted(takes.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        split = cut[spk]
        keep = [files[i] for i in sorted(rng.permutation(len(files))[:a.eval_per_digit])] \
            if split != "train" else files
        for f in keep:
            text = caption(rng, SPEECH_CAPTIONS, digit) if split == "train" else CLASSNAMES[digit]
            rows[split].append((str(f.resolve()), text, spk))
    source = {"recordings": os.path.abspath(a.recordings), "without_speaker_left_out": nameless,
              "identical_copies_left_out": copies,
              "undecodable_left_out": len(undecodable), "speakers_left_out": few}
    return finish(a, Path(a.out), rows, cut, "audio", SPEECH_TEMPLATES, source)


def finish(a, out: Path, rows: Dict[str, list], cut: Dict, media: str, templates, source: dict) -> dict:
    """Write the CSVs, split.json and (unless --no-shards) the shards via `align data shards`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    (out / "templates.json").write_text(json.dumps(templates))
    for split in SPLITS:
        head = (media, "caption" if split == "train" else "label", "group")
        write_csv(out / f"{split}.csv", head, rows[split])
    summary = {"seed": a.seed, "fracs": list(a.fracs), "source": source,
               "groups": {s: sorted({str(g) for g, v in cut.items() if v == s}) for s in SPLITS},
               "samples": {s: len(rows[s]) for s in SPLITS}}
    summary["n_groups"] = {s: len(summary["groups"][s]) for s in SPLITS}
    (out / "split.json").write_text(json.dumps(summary, indent=1))
    if not a.no_shards:
        align = [sys.executable, "-m", "align.cli"]
        col = f"--{media}-col"
        subprocess.run([*align, "data", "shards", str(out / "train.csv"), "--out", str(out / "train"),
                        col, media, "--text-col", "caption", "--image-format", "png", "--overwrite"], check=True)
        for split in ("selection", "report"):
            subprocess.run([*align, "data", "shards", str(out / f"{split}.csv"), "--out", str(out / split),
                            "--layout", "clip_benchmark", col, media, "--label-col", "label",
                            "--classnames", str(out / "classnames.txt"), "--templates",
                            str(out / "templates.json"), "--image-format", "png", "--overwrite"], check=True)
    print(json.dumps({k: summary[k] for k in ("seed", "n_groups", "samples")}))
    return summary


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="kind", required=True)
    for name in ("scans", "speech", "bengali"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True)
        p.add_argument("--seed", type=int, default=0, help="seeds the group split and the subsets")
        p.add_argument("--fracs", type=float, nargs=3, default=[0.6, 0.2, 0.2],
                       help="share of the groups for train / selection / report")
        p.add_argument("--no-shards", action="store_true", help="write the CSVs and split.json only")
        if name == "scans":
            p.add_argument("--images", required=True, help="MNIST train-images-idx3-ubyte(.gz); never t10k")
            p.add_argument("--writers", required=True, help="QMNIST qmnist-train-labels.tsv.gz")
            p.add_argument("--n-train", type=int, default=8000)
            p.add_argument("--n-eval", type=int, default=2000, help="at most this many per eval split")
        elif name == "speech":
            p.add_argument("--recordings", required=True, help="folder (or bare git dir) of SPK/SPK_D.mp3")
        else:
            p.add_argument("--recordings", required=True, help="folder (or bare git dir) of DIGITWORD/*.wav")
            p.add_argument("--eval-per-digit", type=int, default=10,
                           help="at most this many takes per speaker and digit in selection / report")
            p.add_argument("--min-digits", type=int, default=8,
                           help="speakers recorded on fewer digits than this are left out")
    a = ap.parse_args(argv)
    for opt in ("images", "writers", "recordings"):     # the downloaded inputs: one line, not a traceback
        if getattr(a, opt, None) is not None and not os.path.exists(getattr(a, opt)):
            ap.error(f"--{opt} {getattr(a, opt)}: no such file or folder (download it first: see this script's "
                     f"docstring for the source of each set)")
    if a.kind == "scans" and re.search(r"t10k|test", os.path.basename(a.images), re.I):
        ap.error(f"--images {a.images}: MNIST's test split is reserved; give the training images")
    return a


def main(argv=None) -> dict:
    a = parse(argv)
    return {"scans": build_scans, "speech": build_speech, "bengali": build_bengali}[a.kind](a)


if __name__ == "__main__":
    main()
