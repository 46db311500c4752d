"""What this session's input checks cost beside the decode they guard, per file:

- the cut-short check (align.media.truncation.truncation: the container's length fields against the bytes there,
  and for MP3 a walk over the frame headers) on a WAV, an AIFF and an MP3 of --seconds, against decode_audio of
  the same bytes (which runs the check first);
- the blake2b digest each held-out and trained image/audio member gets in `data.val_split`'s one pass (the
  byte-copy check; that pass copies members undecoded, so the digest is its main added cost), beside decoding the
  same member for scale.

    python benchmarks/decode_checks_cost.py [--seconds 10 600] [--repeats 5]

Prints one line per figure, best of --repeats; nothing is written to disk.
"""
import argparse
import hashlib
import io

import numpy as np
from checksum_cost import best   # run as a script: benchmarks/ is on sys.path


def encoded(wave: np.ndarray, sr: int, fmt: str) -> bytes:
    import soundfile as sf
    buf = io.BytesIO()
    kw = {"subtype": "MPEG_LAYER_III"} if fmt == "MP3" else {}
    sf.write(buf, wave, sr, format=fmt, **kw)
    return buf.getvalue()


def main() -> None:
    from PIL import Image

    from align.media.audio import decode_audio
    from align.media.image import decode_image
    from align.media.truncation import truncation

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, nargs="+", default=[10.0, 600.0], help="audio lengths to measure")
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    for seconds in a.seconds:
        wave = (0.1 * rng.standard_normal(int(seconds * a.sample_rate))).astype(np.float32)
        for fmt in ("WAV", "AIFF", "MP3"):
            data = encoded(wave, a.sample_rate, fmt)
            assert truncation(data) is None, fmt
            check = best(lambda: truncation(data), a.repeats)
            decode = best(lambda: decode_audio(data, "x"), a.repeats)
            digest = best(lambda: hashlib.blake2b(data, digest_size=8).digest(), a.repeats)
            print(f"{fmt} {seconds:g} s ({len(data) / 1e6:.2f} MB): cut-short check {check * 1e3:.3f} ms, "
                  f"blake2b {digest * 1e3:.3f} ms, decode_audio {decode * 1e3:.3f} ms "
                  f"(check {100 * check / decode:.2f} %, digest {100 * digest / decode:.2f} % of the decode)")
    for side in (224, 512):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        data = buf.getvalue()
        digest = best(lambda: hashlib.blake2b(data, digest_size=8).digest(), a.repeats)
        decode = best(lambda: decode_image(data), a.repeats)
        print(f"JPEG {side}x{side} ({len(data) / 1e3:.0f} kB): blake2b {digest * 1e3:.3f} ms, decode_image "
              f"{decode * 1e3:.2f} ms (digest {100 * digest / decode:.2f} % of the decode)")


if __name__ == "__main__":
    main()
