"""align.errors: what is printed of the data (printable) against a plain per-character reference."""
import unicodedata

from align.errors import printable

BIDI = {0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
ESCAPED = BIDI | {0x2028, 0x2029, *range(0xD800, 0xE000)}    # and line/paragraph separators, lone surrogates


def _reference(text: str) -> str:
    """Each C0/C1 control, bidi control, line/paragraph separator or surrogate as Python's escape of it, everything
    else as it is."""
    out = []
    for ch in text:
        cp = ord(ch)
        if cp < 0x20 or 0x7F <= cp <= 0x9F or cp in ESCAPED:
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)


def test_printable_escapes_controls_and_bidi_overrides_and_keeps_every_other_character():
    import random
    rng = random.Random(0)
    pool = [chr(c) for c in range(0, 0x250)] + [chr(c) for c in range(0x2000, 0x2070)] + list("语音写法 café é 🙂")
    for _ in range(200):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 40)))
        assert printable(text) == _reference(text), text
    shown = printable("photo\u202egpj.exe")          # would print as "photoexe.jpg"
    assert shown == "photo\\u202egpj.exe" and unicodedata.category(shown[5]) != "Cf"
    assert printable("k\x1b]0;x\x07") == "k\\x1b]0;x\\x07" and printable(7) == "7"


def test_printable_escapes_line_separators_and_lone_surrogates_so_the_line_prints_as_one_line():
    import io
    import random
    rng = random.Random(1)
    pool = [chr(c) for c in range(0xD7F0, 0xE010)] + list("\u2028\u2029\u2027\u202a abc é")
    for _ in range(100):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 20)))
        assert printable(text) == _reference(text), text
    shown = printable("cat\u2028dog\u2029 bad\udcff.jpg é")
    assert shown == "cat\\u2028dog\\u2029 bad\\udcff.jpg é" and len(shown.splitlines()) == 1
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    print(shown, file=out)                             # the raw text: UnicodeEncodeError, surrogates not allowed
