"""Tests for align.demo.espeak: eSpeak NG synthesis through ctypes."""
import multiprocessing as mp
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from align.demo import espeak
from align.errors import AlignError


def _f0(wave, sr, fmin=60, fmax=500, frame=0.04, thr=0.15):
    """Median YIN pitch (Hz) over loud frames: a plain reference pitch tracker."""
    n, tmax, tmin = int(frame * sr), int(sr / fmin), int(sr / fmax)
    found = []
    for s in range(0, len(wave) - n - tmax, n // 2):
        x = wave[s:s + n + tmax].astype(np.float64)
        if np.sqrt(np.mean(x[:n] ** 2)) < 0.05 * np.abs(wave).max():
            continue
        d = np.array([np.sum((x[:n] - x[t:t + n]) ** 2) for t in range(1, tmax + 1)])
        cmnd = d * np.arange(1, tmax + 1) / np.maximum(np.cumsum(d), 1e-12)  # cmnd[t-1] <-> lag t
        below = np.flatnonzero(cmnd[tmin - 1:] < thr)
        if len(below):
            t = below[0] + tmin
            while t < tmax and cmnd[t] < cmnd[t - 1]:  # walk down to the local minimum
                t += 1
            found.append(sr / t)
    assert found, "no voiced frames found"
    return float(np.median(found))


def test_synthesize_returns_audible_speech_at_16k():
    wave, sr = espeak.synthesize("seven")
    assert sr == 16000 and wave.dtype == np.float32 and wave.ndim == 1
    assert 0.15 < len(wave) / sr < 1.5                     # one word
    assert np.sqrt(np.mean(wave ** 2)) > 0.02               # not silent
    assert np.abs(wave).max() <= 1.0
    # trimmed: the ends are within the 10 ms margin of audible sound
    loud = np.flatnonzero(np.abs(wave) >= np.abs(wave).max() * 0.01)
    assert loud[0] <= 0.011 * sr and len(wave) - 1 - loud[-1] <= 0.011 * sr


def test_sample_rate_option_and_rate_changes_duration():
    w8, sr8 = espeak.synthesize("seven", sample_rate=8000)
    w16, _ = espeak.synthesize("seven")
    assert sr8 == 8000 and abs(len(w8) / 8000 - len(w16) / 16000) < 0.05
    slow, _ = espeak.synthesize("seventy seven", rate=100)
    fast, _ = espeak.synthesize("seventy seven", rate=350)
    assert len(slow) > 1.8 * len(fast)


def test_pitch_and_voice_change_the_sound():
    low, sr = espeak.synthesize("nine", voice="en", pitch=15)
    high, _ = espeak.synthesize("nine", voice="en", pitch=90)
    assert _f0(high, sr) > 1.3 * _f0(low, sr)
    male, _ = espeak.synthesize("nine", voice="en-us", pitch=50)
    female, _ = espeak.synthesize("nine", voice="en-us+f3", pitch=50)
    assert _f0(female, sr) > 1.4 * _f0(male, sr)
    scot, _ = espeak.synthesize("nine", voice="en-gb-scotland", pitch=50)
    n = min(len(male), len(scot))
    assert len(male) != len(scot) or not np.allclose(male[:n], scot[:n], atol=1e-3)


def test_bad_arguments_raise_one_clear_error():
    with pytest.raises(AlignError, match="unknown eSpeak NG voice 'xx-nope'"):
        espeak.synthesize("one", voice="xx-nope")
    with pytest.raises(AlignError, match="unknown eSpeak NG voice variant 'nope'"):
        espeak.synthesize("one", voice="en+nope")
    with pytest.raises(AlignError, match=r"rate must be an integer in \[80, 450\]"):
        espeak.synthesize("one", rate=5)
    with pytest.raises(AlignError, match="pitch"):
        espeak.synthesize("one", pitch=101)
    with pytest.raises(AlignError, match="non-empty"):
        espeak.synthesize("  ")


def test_available_voices_and_variants():
    voices = espeak.available_voices()
    by_voice = {v.voice.lower(): v for v in voices}
    assert "en-us" in by_voice and "en-us" in by_voice["en-us"].languages
    assert len(voices) > 50
    variants = espeak.available_variants()
    assert {"f3", "m3", "klatt"} <= set(variants)
    w, _ = espeak.synthesize("two", voice=by_voice["en-us"].name)  # full names work too
    assert w.size > 0


def test_trim_silence_keeps_margin():
    sr = 16000
    tone = 0.5 * np.sin(np.arange(1600) * 0.2).astype(np.float32)
    padded = np.concatenate([np.zeros(8000, np.float32), tone, np.zeros(4000, np.float32)])
    out = espeak.trim_silence(padded, sr, trim_db=40, margin_s=0.01)
    assert abs(len(out) - (len(tone) + 2 * 160)) <= 4
    assert espeak.trim_silence(np.zeros(100, np.float32), sr).size == 0


def test_threads_share_the_engine_safely():
    ref, sr = espeak.synthesize("three")
    results, errors = [], []

    def work():
        try:
            for _ in range(3):
                results.append(espeak.synthesize("three")[0])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12
    # eSpeak's carried-over state moves things by a few samples, never more
    assert all(abs(len(r) - len(ref)) < 0.02 * sr for r in results)


def _child_synth(word):
    wave, sr = espeak.synthesize(word)
    return wave, sr, espeak._engine_pid == os.getpid(), espeak._engine.lib_path


def _fresh_process_synth(word):
    code = ("import sys, numpy as np; from align.demo import espeak; "
            f"w, _ = espeak.synthesize({word!r}); sys.stdout.buffer.write(w.tobytes())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=120)
    return np.frombuffer(out.stdout, dtype=np.float32)


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_forked_children_load_their_own_engine_even_if_forked_mid_call():
    # the parent synthesised with other voices first, so its eSpeak globals are
    # far from fresh; a child that re-initialised them in place could read
    # freed phoneme tables (a hang in CI) and spoke differently from a fresh process
    for voice in ("en-gb-scotland", "de", "en-us+f3"):
        espeak.synthesize("four", voice=voice)
    parent_lib = espeak._engine.lib_path
    # fork while the parent holds the engine lock (as if another thread were
    # synthesising): children must get a fresh lock instead of deadlocking
    # maxtasksperchild=1: each word in a child that spoke nothing before (on a loaded machine one child took
    # both, and eSpeak's carried-over state made its "five" 13 samples longer than a fresh process's)
    with espeak._lock:
        pool = mp.get_context("fork").Pool(2, maxtasksperchild=1)
    try:
        out = pool.map_async(_child_synth, ["four", "five"]).get(timeout=60)
    finally:
        pool.terminate()
    for (wave, sr, own_engine, lib), word in zip(out, ["four", "five"]):
        assert sr == 16000 and own_engine and lib != parent_lib
        assert not os.path.exists(lib)            # the private copy is not left on disk
        np.testing.assert_array_equal(wave, _fresh_process_synth(word))
    # the parent's own engine is untouched by its children
    assert espeak._engine.lib_path == parent_lib and espeak.synthesize("four")[0].size > 0
