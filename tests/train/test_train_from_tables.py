"""`align train RECIPE data.train=voices/` / `data.train=speech.csv`: a user's folder of wav+txt or CSV trains the
shipped small recipes with nothing else given; the shards are written once (align.data.write.cached), every
rank reads the same ones, and data.val_split's groups come from the user's own columns / folder names."""
import csv
import json
import os

import pytest
import yaml

from align.cli import main
from tests.data.write.test_cached import speech_csv, write_wav


def voices_folder(root, speakers=("anna", "ben", "cleo", "dev"), per_speaker=4):
    """root/SPEAKER/i.wav + i.txt: a folder of pairs whose first path field is the speaker."""
    for s, spk in enumerate(speakers):
        for i in range(per_speaker):
            write_wav(root / spk / f"{i}.wav", 10 * s + i, seconds=0.3, sr=16000)
            (root / spk / f"{i}.txt").write_text(f"a voice says {'zero one two three'.split()[i]}")
    return root


def tiny_run(tmp_path, name, train, *more):
    return ["train", "small-audio-text", f"data.train={train}", f"data.shards_cache={tmp_path / 'cache'}",
            f"output_dir={tmp_path / name}", "train.max_steps=2", "train.batch_size=4", "train.checkpoint_every=0",
            "data.num_workers=0", "data.shuffle_buffer=4", "eval.tasks=[retrieval]", "--no-progress", *more]


def test_small_audio_text_trains_from_a_folder_of_wav_and_txt_with_held_out_speakers(tmp_path, capsys):
    voices = voices_folder(tmp_path / "voices")
    assert main(tiny_run(tmp_path, "run", voices, "data.val_split={groups_from: 'audio:0', groups: [dev]}")) in (0, None)
    out = capsys.readouterr().out
    assert f"data.train: {voices} is a folder input, not shards: writing 16 rows" in out
    assert "data.train: 16 samples in 16 shards" in out
    assert "data.val_split: held out 4 samples of 1 groups" in out and "training on 12 of 3 groups" in out
    read = yaml.safe_load(open(tmp_path / "run" / "config.yaml"))["data"]["train"]     # the shards it read
    assert json.load(open(os.path.join(read, "cache.json")))["input"] == str(voices)
    assert json.load(open(tmp_path / "run" / "summary.json"))["steps"] == 2
    # a second run on the same folder (a sweep's next trial) reads the same shards, writing nothing
    assert main(tiny_run(tmp_path, "run2", voices, "train.max_steps=1")) in (0, None)
    assert f"data.train: {voices} -> its shards in {read} (written earlier)" in capsys.readouterr().out


def test_a_data_val_that_does_not_exist_is_one_line_before_any_shard_is_written(tmp_path, capsys, monkeypatch):
    """`align train demo data.train=X` keeps the demo recipe's data.val (align_demo/data/val): one line naming the
    key and the way out, and the train CSV is not written into the cache first."""
    monkeypatch.chdir(tmp_path)
    table = speech_csv(tmp_path, n=8)
    code = main(["train", "demo", f"data.train={table}", f"data.shards_cache={tmp_path / 'cache'}",
                 f"output_dir={tmp_path / 'run'}", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code not in (0, None) and len(err) == 1, err
    assert err[0].startswith("align: ") and "data.val: 'align_demo/data/val' does not exist (relative to " in err[0]
    assert "data.val=null" in err[0] and str(tmp_path) in err[0]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()   # no empty run folder left
    code = main(tiny_run(tmp_path, "runs/run2", table, f"data.val={tmp_path / 'nowhere.csv'}"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code not in (0, None) and len(err) == 1
    assert f"data.val: '{tmp_path / 'nowhere.csv'}' does not exist;" in err[0]
    assert not (tmp_path / "runs").exists()                  # the parent it created goes too
    (tmp_path / "mine").mkdir()                              # a folder the user made stays, and so does its file
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for out in ("mine", "mine/run3"):
        assert main(tiny_run(tmp_path, out, table, f"data.val={tmp_path / 'nowhere.csv'}")) not in (0, None)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_the_shards_carry_the_audio_at_the_audio_towers_rate(tmp_path):
    table = speech_csv(tmp_path, n=8)
    assert main(tiny_run(tmp_path, "run", table, "model.towers.audio.sample_rate=24000", "train.max_steps=1")) \
        in (0, None)
    read = yaml.safe_load(open(tmp_path / "run" / "config.yaml"))["data"]["train"]
    assert json.load(open(os.path.join(read, "cache.json")))["sample_rate"] == 24000


def test_a_folder_with_nothing_to_pair_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("no pairs here")
    code = main(tiny_run(tmp_path, "run", tmp_path / "empty"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code not in (0, None) and len(err) == 1 and str(tmp_path / "empty") in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_two_processes_train_from_one_csv_written_once(tmp_path):
    """Rank 0 writes the CSV's shards (and the val CSV's eval set) while rank 1 waits; both read them (16 shards:
    one list, split by rank)."""
    from tests.train.test_train_multiprocess import ACCELERATE
    import subprocess
    table, val = speech_csv(tmp_path, n=32), labelled_csv(tmp_path, "val_captions.csv", label=False)
    cmd = ACCELERATE + ["--num_processes", "2", "--num_machines", "1", "-m", "align.cli"] + tiny_run(
        tmp_path, "ddp", table, "train.max_steps=3", f"data.val={val}")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert (res.stdout + res.stderr).count("is a csv input, not shards: writing 32 rows") == 1
    assert (res.stdout + res.stderr).count(f"data.val: {val} is a csv input, not shards: writing 9 rows") == 1
    summary = json.load(open(tmp_path / "ddp" / "summary.json"))
    assert summary["steps"] == 3 and any("retrieval" in k for k in summary["metrics"])
    assert len(list((tmp_path / "cache" / "shards").iterdir())) == 2          # the training shards and the val set


@pytest.mark.slow
def test_other_ranks_wait_for_a_cache_build_longer_than_the_collective_timeout(tmp_path):
    """A big CSV takes rank 0 longer to write than train.dist_timeout_s bounds a collective: the other ranks
    wait on the long-timeout group (as for an evaluation) instead of failing. Induced by holding the cache
    folder's lock from here (another writer) for 4x the collective timeout (dist_timeout_s 5 -> 10 s)."""
    from tests.train.test_train_multiprocess import ACCELERATE
    import subprocess
    import time
    from align.data.write.cached import cache_folder
    from align.runlock import RunLock
    table = speech_csv(tmp_path, n=16)
    folder = cache_folder(table, str(tmp_path / "cache"))
    os.makedirs(folder)
    cmd = ACCELERATE + ["--num_processes", "2", "--num_machines", "1", "-m", "align.cli"] + tiny_run(
        tmp_path, "ddp", table, "train.max_steps=2", "train.dist_timeout_s=5")
    with RunLock(folder, what="shard job"):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(40)
        assert proc.poll() is None, proc.communicate()[0][-3000:]     # still waiting, not failed
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "another process is writing" in out and out.count("is a csv input, not shards: writing 16 rows") == 1
    assert json.load(open(tmp_path / "ddp" / "summary.json"))["steps"] == 2


@pytest.mark.slow
def test_a_rank0_stopped_during_the_cache_build_ends_the_launch_in_one_line(tmp_path):
    """The long wait above has no time bound, so a rank 0 that stops in it (SIGSTOP, a frozen node) held the
    others for a day. Induced: rank 0 waits on the cache folder (held from here), then is SIGSTOPped; rank 1
    sees rank 0's run-dir lock heartbeat stop and ends the launch with one line within train.lock_timeout_s."""
    from tests.train.test_train_multiprocess import ACCELERATE
    import signal
    import subprocess
    import time
    from align.data.write.cached import cache_folder
    from align.runlock import INFO_NAME, RunLock, read_holder
    table = speech_csv(tmp_path, n=16)
    folder = cache_folder(table, str(tmp_path / "cache"))
    os.makedirs(folder)
    cmd = ACCELERATE + ["--num_processes", "2", "--num_machines", "1", "-m", "align.cli"] + tiny_run(
        tmp_path, "ddp", table, "train.lock_timeout_s=3")
    log = tmp_path / "launch.log"
    pid = None
    with RunLock(folder, what="shard job"), open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            t0 = time.time()
            while "another process is writing" not in log.read_text() and time.time() - t0 < 180:
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.5)
            pid = read_holder(str(tmp_path / "ddp" / INFO_NAME))["pid"]      # rank 0 holds the run dir
            time.sleep(2)                                                      # rank 1 is in its wait
            os.kill(pid, signal.SIGSTOP)
            stopped = time.time()
            proc.wait(timeout=120)
            ended = time.time() - stopped
        finally:
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert proc.returncode != 0, text[-3000:]
    lines = [ln for ln in text.splitlines() if "stopped refreshing the run dir's lock" in ln]
    assert len(lines) == 1 and f"pid {pid}" in lines[0] and "rank 1 waited" in lines[0], text[-3000:]
    assert "train.lock_timeout_s=3" in lines[0]
    print(f"the launch ended {ended:.1f} s after the SIGSTOP: {lines[0]}")
    assert ended < 60, ended          # 3 s of no heartbeat, then the launcher's teardown of the stopped rank


def test_a_folder_smaller_than_a_batch_is_one_line_saying_so(tmp_path, capsys):
    """6 clips, batch 8: every epoch ends before its first batch; the line says how many samples an epoch needs."""
    voices = voices_folder(tmp_path / "voices", speakers=("anna", "ben"), per_speaker=3)
    code = main(tiny_run(tmp_path, "run", voices, "train.batch_size=8"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code not in (0, None) and len(err) == 1
    assert "no batch (an epoch needs at least 8 samples per rank and data worker" in err[0]


def labelled_csv(tmp_path, name="val.csv", n=9, label=True):
    """A user's held-out speakers as a CSV: `path`, `label` (the class name), `speaker` (or captions, no label)."""
    rows = []
    for i in range(n):
        write_wav(tmp_path / "val_clips" / f"v{i}.wav", 100 + i)
        word = "one two three".split()[i % 3]
        rows.append((f"val_clips/v{i}.wav", word if label else f"a voice says {word}", f"h{i % 2}"))
    with open(tmp_path / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("path", "label" if label else "caption", "speaker"))
        w.writerows(rows)
    return tmp_path / name


def test_data_val_takes_a_csv_of_held_out_speakers_written_once_as_an_eval_set(tmp_path, capsys):
    """data.val=val.csv with a label column: written as a CLIP_benchmark set (class names, zero-shot templates)
    in the cache, scored at the end; a second run reads it; a CSV of captions is a retrieval set."""
    table, val = speech_csv(tmp_path, n=16), labelled_csv(tmp_path)
    assert main(tiny_run(tmp_path, "run", table, f"data.val={val}", "eval.tasks=[zeroshot]")) in (0, None)
    out = capsys.readouterr().out
    assert f"data.val: {val} is a csv input, not shards: writing 9 rows" in out
    read = yaml.safe_load(open(tmp_path / "run" / "config.yaml"))["data"]["val"]     # the eval set it scored on
    assert sorted(open(os.path.join(read, "classnames.txt")).read().split()) == ["one", "three", "two"]
    assert json.load(open(os.path.join(read, "cache.json")))["input"] == str(val)
    metrics = json.load(open(tmp_path / "run" / "summary.json"))["metrics"]
    assert 0 <= metrics["audio/zeroshot/acc1"] <= 1 and "audio/zeroshot/acc1" in out
    # the same input as training shards is another folder (the layout is in the hash)
    assert len(list((tmp_path / "cache" / "shards").iterdir())) == 2
    # the shipped recipe's tasks, [zeroshot, retrieval]: a labelled set has no captions to retrieve, said in one line
    assert main(tiny_run(tmp_path, "run2", table, f"data.val={val}", "eval.tasks=[zeroshot, retrieval]",
                         "train.max_steps=1")) in (0, None)
    out = capsys.readouterr().out
    assert f"data.val: {val} -> its shards in {read} (written earlier)" in out
    assert f"data.val: eval.tasks retrieval has nothing to score on {read}" in out and "evaluating zeroshot" in out
    assert set(json.load(open(tmp_path / "run2" / "summary.json"))["metrics"]) >= {"audio/zeroshot/acc1"}
    captions = labelled_csv(tmp_path, "val_captions.csv", label=False)
    assert main(tiny_run(tmp_path, "run3", table, f"data.val={captions}", "train.max_steps=1")) in (0, None)
    metrics = json.load(open(tmp_path / "run3" / "summary.json"))["metrics"]
    assert any("retrieval" in k for k in metrics) and not any("zeroshot" in k for k in metrics), metrics


def test_a_val_csv_a_task_cannot_use_is_one_line_before_training(tmp_path, capsys):
    """Captions only (no label column) with eval.tasks=[zeroshot]: nothing to score, said before the first step."""
    table, captions = speech_csv(tmp_path, n=16), labelled_csv(tmp_path, "val_captions.csv", label=False)
    code = main(tiny_run(tmp_path, "run", table, f"data.val={captions}", "eval.tasks=[zeroshot]"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code not in (0, None) and len(err) == 1 and "eval.tasks: 'zeroshot' has nothing to score" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()
