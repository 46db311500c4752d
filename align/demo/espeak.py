"""Offline text-to-speech with eSpeak NG, loaded from `espeakng-loader` via ctypes.

`synthesize("seven", voice="en-us+f3", rate=160, pitch=60)` returns a mono
float32 wave at 16 kHz with leading/trailing silence trimmed. The library is
initialised once per process (AUDIO_OUTPUT_SYNCHRONOUS: audio arrives in a
callback during `espeak_Synth`); eSpeak keeps global state, so every call
holds a module lock. A forked child gets a fresh lock and loads a private copy
of the library: calling `espeak_Initialize` a second time on the globals it
inherited leaves phoneme pointers into freed tables (seen as "Invalid
instruction ... for phoneme" and a hung child), and a fresh copy also makes
the child synthesise exactly what a fresh process would.

Determinism: eSpeak's wave generator keeps function-static state (pitch
flutter phase, AGC) across utterances, so the same call can differ by a few
samples depending on what the process synthesised before. Only the first
utterances of a fresh process are reproducible; `align.demo.data` therefore
synthesises fixed chunks of samples in fresh worker processes.
"""
import ctypes
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import numpy as np

from align.media.audio import resample
from align.errors import AlignError

SAMPLE_RATE = 16000            # what synthesize() returns unless told otherwise
RATE_RANGE = (80, 450)         # words per minute accepted by espeak_SetParameter(espeakRATE)
PITCH_RANGE = (0, 100)         # espeakPITCH, 50 = the voice's normal pitch

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH = 1, 3
_EE_OK, _EE_NOT_FOUND = 0, 2

# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events); return 0 = go on
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)


class _VoiceStruct(ctypes.Structure):
    """espeak_VOICE; `languages` is a list of (priority byte, NUL-terminated name), NUL-ended."""

    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p),
                ("identifier", ctypes.c_char_p), ("gender", ctypes.c_ubyte),
                ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte), ("xx1", ctypes.c_ubyte),
                ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


class Voice(NamedTuple):
    """One installed eSpeak NG voice; pass `voice` (or `name`) to synthesize(voice=...)."""

    voice: str                 # "en-US": the voice file name, what `voice=` accepts
    name: str                  # "English (America)"
    identifier: str            # "gmw/en-US" (file under espeak-ng-data/voices)
    languages: Tuple[str, ...]  # ("en-us", "en"): languages it speaks, by priority
    gender: str                # "male" | "female" | ""


class _Engine:
    """The loaded library plus the buffer its synth callback fills (one per process).

    private: load a copy of the shared object under a new name, so the dynamic
    loader gives it its own globals (a forked child whose parent had loaded it).
    """

    def __init__(self, private: bool = False):
        try:
            import espeakng_loader
        except ImportError:
            raise AlignError("speech synthesis needs the espeakng-loader package "
                             "(pip install espeakng-loader)") from None
        lib_path = espeakng_loader.get_library_path()
        self.data_path = espeakng_loader.get_data_path()
        self.lib_path = lib_path if not private else _private_copy(lib_path)
        try:
            lib = ctypes.CDLL(self.lib_path)
        except OSError as e:
            raise AlignError(f"cannot load eSpeak NG library {self.lib_path}: {e}") from None
        finally:
            if private:  # the mapping stays; nothing is left on disk
                shutil.rmtree(os.path.dirname(self.lib_path), ignore_errors=True)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceStruct))
        self.has_rand_seed = hasattr(lib, "espeak_ng_SetRandSeed")  # eSpeak NG >= 1.52
        if self.has_rand_seed:
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_ng_SetRandSeed.restype = None
        # buflength 0 = default 60 ms callback chunks; returns the native rate (22050) or -1
        sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), 0)
        if sr <= 0:
            raise AlignError(f"eSpeak NG failed to initialise with data at {self.data_path}")
        self.lib = lib
        self.sample_rate = int(sr)
        self.chunks: List[bytes] = []
        self._callback = _SYNTH_CALLBACK(self._on_audio)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, n, events) -> int:
        if n > 0 and wav:
            self.chunks.append(ctypes.string_at(wav, 2 * n))  # n int16 samples
        return 0


def _private_copy(lib_path: str) -> str:
    """Copy the library into a new temporary folder; returns the copy's path."""
    folder = tempfile.mkdtemp(prefix="align-espeak-")
    dst = os.path.join(folder, os.path.basename(lib_path))
    try:
        shutil.copyfile(lib_path, dst)
    except OSError as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise AlignError(f"cannot copy eSpeak NG library {lib_path} to {folder} for a forked "
                         f"process: {e}") from None
    return dst


_lock = threading.Lock()
_engine: Optional[_Engine] = None
_engine_pid: Optional[int] = None
_loaded = False                # this address space already holds an initialised eSpeak


def _reset_after_fork() -> None:
    # A lock held by another thread at fork time would never be released in the
    # child; give the child a fresh lock and make it initialise eSpeak again.
    global _lock, _engine, _engine_pid
    _lock = threading.Lock()
    _engine, _engine_pid = None, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _get_engine() -> _Engine:
    """Call with `_lock` held."""
    global _engine, _engine_pid
    global _loaded
    if _engine is None or _engine_pid != os.getpid():
        _engine, _engine_pid = _Engine(private=_loaded), os.getpid()
        _loaded = True
    return _engine


def available_voices() -> List[Voice]:
    """All voices eSpeak NG has installed (about 140 languages)."""
    with _lock:
        eng = _get_engine()
        arr = eng.lib.espeak_ListVoices(None)
        out = []
        i = 0
        while arr[i]:
            v = arr[i].contents
            langs = []
            p = v.languages
            while p and ctypes.string_at(p, 1) != b"\0":  # priority byte, then the name
                lang = ctypes.string_at(p + 1)
                langs.append(lang.decode("utf-8", "replace"))
                p += 1 + len(lang) + 1
            ident = (v.identifier or b"").decode("utf-8", "replace")
            out.append(Voice(voice=ident.rsplit("/", 1)[-1],
                             name=(v.name or b"").decode("utf-8", "replace"), identifier=ident,
                             languages=tuple(langs),
                             gender={1: "male", 2: "female"}.get(v.gender, "")))
            i += 1
        return out


def available_variants() -> List[str]:
    """Voice variants that can be appended as `voice+variant` (e.g. "m3", "f2", "klatt")."""
    with _lock:
        root = Path(_get_engine().data_path) / "voices" / "!v"
    return sorted(p.name for p in root.iterdir() if p.is_file())


def synthesize(text: str, voice: str = "en", rate: int = 175, pitch: int = 50, *,
               sample_rate: int = SAMPLE_RATE, trim_db: Optional[float] = 40.0,
               seed: int = 0) -> Tuple[np.ndarray, int]:
    """Speak `text`; returns (mono float32 wave [T] in [-1, 1], sample_rate).

    voice: a voice file name from `available_voices()` ("en", "en-us",
    "en-gb-scotland", ...; case-insensitive), optionally with a variant
    from `available_variants()`: "en-us+f3".
    rate: words per minute in RATE_RANGE; pitch: 0-100 (50 = normal).
    trim_db: cut leading/trailing audio quieter than the peak minus this many
    dB (keeping 10 ms of margin); None keeps the silence. seed: eSpeak's noise
    generator seed (used by Klatt voices). May return an empty wave if the
    text has nothing to say (e.g. only punctuation).
    """
    if not isinstance(text, str) or not text.strip():
        raise AlignError(f"synthesize: text must be a non-empty string, got {text!r}")
    if not isinstance(voice, str) or not voice or "\0" in voice:
        raise AlignError(f"synthesize: voice must be a voice name like 'en-us', got {voice!r}")
    for what, value, (lo, hi) in (("rate", rate, RATE_RANGE), ("pitch", pitch, PITCH_RANGE)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise AlignError(f"synthesize: {what} must be an integer in [{lo}, {hi}], got {value!r}")
    with _lock:
        eng = _get_engine()
        base, _, variant = voice.partition("+")
        # eSpeak silently ignores unknown variants, so check the file ourselves
        if variant and not (Path(eng.data_path) / "voices" / "!v" / variant).is_file():
            raise AlignError(f"synthesize: unknown eSpeak NG voice variant {variant!r} in "
                             f"voice {voice!r} (see align.demo.espeak.available_variants())")
        err = eng.lib.espeak_SetVoiceByName(voice.encode("utf-8"))
        if err != _EE_OK:
            what = "unknown eSpeak NG voice" if err == _EE_NOT_FOUND else f"error {err} selecting voice"
            raise AlignError(f"synthesize: {what} {base!r} "
                             f"(see align.demo.espeak.available_voices())")
        # parameters after the voice: selecting a voice resets them
        eng.lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        eng.lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        if eng.has_rand_seed:
            eng.lib.espeak_ng_SetRandSeed(int(seed))
        eng.chunks = []
        data = text.encode("utf-8") + b"\0"
        err = eng.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        pcm = b"".join(eng.chunks)
        eng.chunks = []
        native_sr = eng.sample_rate
    if err != _EE_OK:
        raise AlignError(f"synthesize: eSpeak NG failed on {text[:40]!r} (error {err})")
    wave = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0  # [T] at native_sr
    wave = resample(wave, native_sr, sample_rate)
    if trim_db is not None:
        wave = trim_silence(wave, sample_rate, trim_db)
    return np.clip(wave, -1.0, 1.0), sample_rate


def trim_silence(wave: np.ndarray, sr: int, trim_db: float = 40.0, margin_s: float = 0.01) -> np.ndarray:
    """Drop leading/trailing samples quieter than peak * 10^(-trim_db/20), keeping `margin_s`."""
    wave = np.asarray(wave, dtype=np.float32)
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak == 0.0:
        return wave[:0].copy()
    loud = np.flatnonzero(np.abs(wave) >= peak * 10.0 ** (-trim_db / 20.0))
    pad = int(round(margin_s * sr))
    return wave[max(0, loud[0] - pad): loud[-1] + 1 + pad].copy()
