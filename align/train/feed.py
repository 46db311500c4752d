"""The training stream: the loader a run draws from, its batches across epochs, and the held-out split.

  shards_from_tables       a CSV / folder of pairs in data.train (data.val) -> its shards (eval set), written once
  build_loader             shards through align.data.stream (data.val_split's held-out samples left out), or
                           synthetic inputs; a resumed run continues at its data position
  resolve_auto_image_size  an image tower's `image_size: auto` -> the training images' own size
  resolve_auto_clip_seconds an audio tower's `clip_seconds: auto` -> long enough for 99 % of the training clips
  carve_val_split          data.val_split's held-out samples written out once as RUN/val_split, the run's val set
  fit_val_tasks            eval.tasks less those with nothing to score on data.val (one line), checked before step 1
  Batches                  the loader's batches across epochs, with the data position of the last whole step
"""
import dataclasses
import os

from align.config import Recipe
from align.errors import AlignError, DataError
from align.model import AlignModel
from align.train import rundir
from align.train.state import TrainState


def build_loader(r: Recipe, model: AlignModel, rank: int, world: int, resume_state, pin_memory: bool = False):
    """The training stream: real shards through the streaming pipeline, or synthetic inputs.

    resume_state: the data position of every rank of the checkpoint (a list, index = rank); the loader
    re-partitions it when the world size, per-rank batch or number of workers changed.
    pin_memory: batches in page-locked memory (a run on CUDA: the step's non-blocking copy of a [256, 3, 224,
    224] float batch, 154 MB, then runs at the full host-to-device rate instead of through a staging copy).
    """
    if r.data.train == "synthetic":
        from align.data.stream.synthetic import SyntheticLoader
        if resume_state is not None:
            # Synthetic batches have no identity: after a change of world size or batch, continue at the
            # same fraction of the epoch.
            old = resume_state[rank] if len(resume_state) == world else resume_state[0]
            done = old["batches"] * old.get("batch_size", r.train.batch_size) * len(resume_state)
            resume_state = {"epoch": old["epoch"], "batches": done // (r.train.batch_size * world)}
        return SyntheticLoader(model, r.train.batch_size, seed=r.seed, rank=rank,
                               samples_per_epoch=r.data.synthetic_size // world, resume_state=resume_state,
                               caption=r.data.synthetic_caption)
    from align.data.stream.build import build_train_loader
    return build_train_loader(
        _train_sources(r), transforms=model.transforms(train=True), batch_size=r.train.batch_size,
        modalities=model.modalities, rank=rank, world_size=world, num_workers=r.data.num_workers, seed=r.seed,
        epoch=(resume_state or [{}])[0].get("epoch", 0), samples_per_epoch=r.data.samples_per_epoch,
        resampled=r.data.resampled, shuffle_buffer=r.data.shuffle_buffer, allow_pipe=r.data.allow_pipe,
        max_skip_frac=r.data.max_skip_frac, resume_state=resume_state, train=True, augment=r.data.augment,
        retry_budget_s=r.data.retry_budget_s, limits=r.data.limits, val_split=_val_split(r),
        text_keys=r.data.text_keys, hard_negatives=r.loss.hard_negatives, teacher=_stored_teacher(r),
        features_in_step=r.data.features_in == "step",   # the log-mel on the device: train_step finishes it
        pin_memory=pin_memory, pairs=trained_pairs(r))


def trained_pairs(r: Recipe):
    """The loss.pairs of a weight above 0 (a sample in none of them is skipped and counted: it would train
    nothing), or None (no check) when every weight is 0."""
    weights = r.loss.weights or [1.0] * len(r.loss.pairs)
    return [tuple(p) for p, w in zip(r.loss.pairs, weights) if w > 0] or None


def shards_from_tables(r: Recipe, acc, share, progress: bool = True) -> Recipe:
    """data.train entries naming a CSV / TSV / JSONL / Parquet file or a folder of pairs -> the folder of their
    shards, and such a data.val -> a CLIP_benchmark-layout folder of it (align.data.write.cached): written once
    by the main process, whose folders the others receive (they never re-read the input), then every rank reads
    them. Shards, patterns, URLs and CLIP_benchmark folders are kept as they are. config.yaml records the folders
    read. share(obj) -> rank 0's obj on every rank: StepWatch.share_object, whose wait is not bound by
    train.dist_timeout_s (a big table takes rank 0 longer than that to write)."""
    from align.data.write.cached import cached_shards, check_cached, entry_input, val_input
    check_val_exists(r)                    # before any shard is written: a recipe's default data.val may be absent
    synthetic = r.data.train == "synthetic" or not r.data.train   # (a folder named "synthetic" is not read)
    train = [] if synthetic else r.data.train if isinstance(r.data.train, list) else [r.data.train]
    entries = [u for s in train for u in ([s] if isinstance(s, str) else [s.urls] if isinstance(s.urls, str)
                                          else s.urls)]
    # (key, layout) -> input path: data.train's as training shards, data.val's as a CLIP_benchmark set
    inputs = {(u, "shards"): p for u in entries if (p := entry_input(u)) is not None}
    if r.data.val and (p := val_input(r.data.val)) is not None:
        inputs[(r.data.val, "clip_benchmark")] = p
    if not inputs:
        return r
    # the audio at the rate the audio tower reads (its sample_rate, 16 kHz by default)
    rates = [t.get("sample_rate") for t in r.model.towers.values() if isinstance(t, dict) and t.get("sample_rate")]
    built = [{k: cached_shards(p, r.data.shards_cache, limits=r.data.limits, progress=progress, printer=acc.print,
                               layout=k[1], sample_rate=max(rates, default=None))
              for k, p in inputs.items()} if acc.is_main_process else None]
    if acc.num_processes > 1:
        built = [share(built[0])]          # the other ranks wait here (a main process failing ends the launch)
        if not acc.is_main_process:
            for folder in built[0].values():
                check_cached(folder)
    folder_of = {u: f for (u, layout), f in built[0].items() if layout == "shards"}
    val = built[0].get((r.data.val, "clip_benchmark"), r.data.val)

    def swap(u):
        return folder_of.get(u, u)
    new = [swap(s) if isinstance(s, str) else dataclasses.replace(
        s, urls=swap(s.urls) if isinstance(s.urls, str) else [swap(u) for u in s.urls]) for s in train]
    return dataclasses.replace(r, data=dataclasses.replace(
        r.data, val=val, train=r.data.train if synthetic else new if isinstance(r.data.train, list) else new[0]))


def check_val_exists(r: Recipe) -> None:
    """One DataError line when data.val names no file or folder (it is always local: a CLIP_benchmark folder, a
    table or a folder of pairs). A recipe's own default can be the cause: `align train demo data.train=X` keeps
    the demo's data.val."""
    from align.errors import DataError
    path = os.path.expanduser(r.data.val or "")
    if path and not os.path.exists(path):
        where = "" if os.path.isabs(path) else f" (relative to {os.getcwd()})"
        raise DataError(f"data.val: {r.data.val!r} does not exist{where}; give data.val=DIR|CSV of held-out "
                        f"items, or data.val=null to train without a held-out set")


def _stored_teacher(r: Recipe) -> tuple:
    """The modalities whose teacher embeddings the shards carry (loss.distill.teacher=stored), else ()."""
    if r.loss.distill is None or r.loss.distill.teacher != "stored":
        return ()
    from align.train.teacher import teacher_modalities
    return tuple(teacher_modalities(r.loss.pairs))


def resolve_auto_image_size(r: Recipe, printer=print) -> Recipe:
    """An open_clip image tower's `vision_cfg.image_size: auto` -> the median longest side of the training
    shards' images, a multiple of its patch size (align.data.tools.stats.image_size_stats, the number `align data
    stats` prints). Every rank reads the same images, so all agree without a collective; config.yaml records
    the number, so align.load and export rebuild the same model."""
    import copy
    tower = r.model.towers.get("image") or {}
    vision = (tower.get("config") or {}).get("vision_cfg") or {}
    if vision.get("image_size") != "auto":
        return r
    from align.data.tools.stats import image_size_stats
    patch = vision.get("patch_size") or 4
    st = image_size_stats(_train_sources(r), multiple=patch, allow_pipe=r.data.allow_pipe)
    if not st["images"]:
        raise AlignError(f"model.towers.image: image_size auto found no image in data.train={r.data.train!r}")
    r = copy.deepcopy(r)
    r.model.towers["image"]["config"]["vision_cfg"]["image_size"] = st["image_size"]
    if isinstance(r.model.open_clip, dict) and "vision_cfg" in r.model.open_clip:
        r.model.open_clip["vision_cfg"]["image_size"] = st["image_size"]
    printer(f"image_size: auto -> {st['image_size']} px (median longest side of {st['images']} training images: "
            f"{st['width']['median']:g}x{st['height']['median']:g}; a multiple of the patch size {patch})")
    return r


def resolve_auto_clip_seconds(r: Recipe, printer=print) -> Recipe:
    """An audio tower's `clip_seconds: auto` -> the 99th percentile of the training clips' durations after the
    tower's own silence trimming (`trim_db`), rounded up to 0.1 s (align.data.tools.stats.audio_duration_stats,
    the number `align data stats` prints): the clip then holds nearly every recording whole, where a fixed 1 s
    crops the longer words in training and evaluation alike. Every rank reads the same clips, so all agree
    without a collective; config.yaml records the number, so align.load and export rebuild the same model."""
    import copy
    auto = [m for m, t in r.model.towers.items() if isinstance(t, dict) and t.get("clip_seconds") == "auto"]
    if not auto:
        return r
    from align.data.tools.stats import audio_duration_stats
    r = copy.deepcopy(r)
    for m in auto:
        st = audio_duration_stats(_train_sources(r), clip_seconds_measure(r.model.towers[m], f"model.towers.{m}"),
                                  allow_pipe=r.data.allow_pipe, limits=r.data.limits)
        if not st["clips"]:
            raise AlignError(f"model.towers.{m}: clip_seconds auto found no readable audio in "
                             f"data.train={r.data.train!r}")
        r.model.towers[m]["clip_seconds"] = st["clip_seconds"]
        sec = st["seconds"]
        printer(f"clip_seconds: auto -> {st['clip_seconds']:g} s (99th percentile of {st['clips']} training clips "
                f"after trimming: {sec['p99']:g} s; median {sec['median']:g} s, longest {sec['max']:g} s)")
    return r


def clip_seconds_measure(tower: dict, where: str = "model.towers.audio"):
    """seconds(wave, rate) of one recording as an audio tower with these recipe keys crops it: after its silence
    trimming (`trim_db`), the same in training and evaluation."""
    from align.towers.audio_features import AudioFrontend, trim_silence
    # the front end's own check of the key (the other keys at their defaults, which are valid)
    trim_db = AudioFrontend(trim_db=tower.get("trim_db", AudioFrontend.trim_db)).validate(where).trim_db

    def seconds(wave, rate: int) -> float:
        return (trim_silence(wave, rate, trim_db) if trim_db > 0 else wave).shape[0] / rate
    return seconds


def _train_sources(r: Recipe):
    """data.train as SourceSpecs (with their weights): what the loader reads, and what the `auto` sizes are read
    from, spread over the shards of every source."""
    from align.data.stream.sources import SourceSpec
    train = r.data.train if isinstance(r.data.train, list) else [r.data.train]
    return [SourceSpec(urls=s) if isinstance(s, str) else SourceSpec(urls=s.urls, weight=s.weight) for s in train]


def _val_split(r: Recipe):
    if r.data.val_split is None:
        return None
    from align.data.stream.val_split import ValSplit
    return ValSplit.from_config(r.data.val_split, r.seed)


def carve_val_split(r: Recipe, eng) -> Recipe:
    """data.val_split: its held-out samples copied (rank 0, once per split) into RUN/val_split, a CLIP_benchmark-
    layout val set; returns the recipe with data.val pointing there (and eval.tasks without those that have
    nothing to score on it, said in one line). The training stream never reads those samples (build_loader).
    eng: the run's align.train.setup.Engine."""
    split = _val_split(r)
    if split is None:
        return r
    from align.data.stream.sources import SourceSpec, resolve_sources
    from align.data.stream.val_split import write_val_set
    train = r.data.train if isinstance(r.data.train, list) else [r.data.train]
    specs = [SourceSpec(urls=s) if isinstance(s, str) else SourceSpec(urls=s.urls, weight=s.weight) for s in train]
    urls = [u for src in resolve_sources(specs, allow_pipe=r.data.allow_pipe, warn=False) for u in src.urls]
    out = os.path.join(r.output_dir, rundir.VAL_SPLIT)
    if eng.acc.is_main_process:
        counts = write_val_set(split, urls, out, classnames=_classnames_beside(urls), allow_pipe=r.data.allow_pipe,
                               limits=r.data.limits)
        groups, skipped = counts.get("groups", {}), counts.get("skipped", {})
        eng.acc.print(f"data.val_split: held out {counts['held_out']} samples"
                      + (f" of {groups['held_out']} groups" if split.groups_from else "")
                      + f" ({split.describe()}) -> {out}; training on {counts['trained']}"
                      + (f" of {groups['trained']} groups" if split.groups_from else "")
                      + (f"; {counts['no_group']} without {split.groups_from!r} are used by neither"
                         if counts["no_group"] else "")
                      + (f"; skipped {sum(skipped.values())} while copying ("
                         + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) + ")" if skipped else ""))
        _say_groups(counts, split, eng.acc.print)
    eng.acc.wait_for_everyone()
    # (the tasks with nothing to score on the held-out samples, e.g. zero-shot without class names beside the
    # shards, are left out by fit_val_tasks, as for any data.val)
    return dataclasses.replace(r, data=dataclasses.replace(r.data, val=out))


def _say_groups(counts: dict, split, printer) -> None:
    """The held-out groups by name (all in RUN/val_split/val_split.json), one warning per set of group ids that
    differ only by case, Unicode form or a number's spelling, and one for held-out samples left out as byte copies
    of trained ones (align.data.stream.val_split)."""
    names = counts.get("held_out_groups") or []
    if names:
        printer(f"data.val_split: held-out groups: {', '.join(names[:20])}" + (" ..." if len(names) > 20 else ""))
    for same in counts.get("lookalike_groups") or []:
        both = any(g.endswith(" (held out)") for g in same) and not all(g.endswith(" (held out)") for g in same)
        printer(f"warning: data.val_split: {split.groups_from!r} values {', '.join(map(repr, same))} differ only by "
                f"case, Unicode form or a number's spelling and are separate groups"
                + ("; they fall on both sides: if they are one group, the held-out figure measures it trained on"
                   if both else "") + " (make them one spelling in the data, or name all of them in groups)")
    copies = counts.get("copies_of_trained")
    if copies:
        printer(f"warning: data.val_split: {copies['count']} held-out samples have an image or audio member "
                f"byte-identical to a trained sample's (e.g. {' and '.join(copies['example'])}): left out of the "
                "val set, which would score items trained on")


def fit_val_tasks(r: Recipe, modalities, printer=print) -> Recipe:
    """Before the first step: eval.tasks less those with nothing to score on data.val, said in one line
    (align.train.evaluate.check_val_set; one DataError line when none is left)."""
    from align.train.evaluate import check_val_set
    tasks, dropped = check_val_set(r.data.val, r.eval.tasks, modalities, best_metric=r.eval.best_metric)
    if not dropped:
        return r
    printer(f"data.val: eval.tasks {', '.join(dropped)} {'has' if len(dropped) == 1 else 'have'} nothing to score on "
            f"{r.data.val} (its items have no captions, or no class names to prompt with); evaluating "
            f"{', '.join(tasks)}")
    return dataclasses.replace(r, eval=dataclasses.replace(r.eval, tasks=tasks))


def _classnames_beside(urls: list):
    """The class names `align data shards` wrote beside local shards (classes.json), or None."""
    import json
    for u in urls[:1]:
        path = os.path.join(os.path.dirname(u), "classes.json")
        if os.path.isfile(path):
            with open(path) as f:
                names = json.load(f)
            return names if isinstance(names, list) and names else None
    return None


class Batches:
    """The loader's batches across epochs; TrainState.epoch follows the loader's own epoch.

    The loader moves on to its next epoch by itself when one runs out. After an elastic resume from ranks
    in different epochs, that may be the rest of an older epoch than the checkpoint's
    (align.data.stream.resume), so the epoch is read from the loader, never counted here.

    A take that fails (a source down, a data worker killed: align.train.dataworkers) leaves `position()` at
    the data position of the last complete step, also when some of the step's micro-batches were handed out.
    """

    def __init__(self, loader, state: TrainState):
        self.loader, self.state = loader, state
        state.epoch = loader.epoch     # this rank's own epoch (ranks of a checkpoint may be in different ones)
        self.it = iter(loader)     # made now: its seed draw comes before the RNG restore of a resume
        if hasattr(loader, "start_reading"):
            loader.start_reading()  # the workers make the first batches while the run finishes its set-up
        self._before = None        # the position before a take that failed part-way

    def take(self, n: int) -> list:
        from align.train.dataworkers import raise_if_died
        raise_if_died()            # a worker died during the last step: stop here, between steps
        self._before = self.loader.state_dict() if n > 1 else None
        got = []
        try:
            for _ in range(n):
                got.append(self._next())
        except BaseException:
            if not got:
                self._before = None        # nothing of this step was handed out: the loader's own position
            raise
        self._before = None
        return got

    def position(self):
        """The data position after the last complete step (what a checkpoint written now must record)."""
        return self._before if self._before is not None else self.loader.state_dict()

    MAX_EMPTY_EPOCHS = 10

    def _raise_if_nothing_was_readable(self) -> None:
        """Every sample and shard read so far was skipped (a text file or an empty tar as data.train, shards that
        all turned out unreadable; the counts are the run's, a resume's included) when an epoch ends: say that at
        once, not after MAX_EMPTY_EPOCHS more readings of the same shards, nor "use more samples than ranks x
        train.batch_size"."""
        skipped = dict(getattr(self.loader, "skipped", None) or {})
        if skipped and sum(skipped.values()) >= getattr(self.loader, "seen", 0):
            reasons = ", ".join(f"{r} {c}" for r, c in sorted(skipped.items(), key=lambda rc: -rc[1])[:3])
            raise DataError(f"data: nothing in data.train could be read on rank {os.environ.get('RANK', '0')}: "
                            f"every sample or shard was skipped ({reasons}); the warnings above name them, "
                            f"`align data inspect PATTERN` checks each shard")

    def _next(self):
        empty = -1                     # epochs started here that gave no batch (the one running may be a rest)
        from align.train.dataworkers import as_worker_death
        while True:
            try:
                return next(self.it)
            except StopIteration:
                empty += 1
                self._raise_if_nothing_was_readable()      # (an epoch that gave a batch read a sample)
                if empty >= self.MAX_EMPTY_EPOCHS:
                    # e.g. fewer shards than ranks, or fewer samples than a batch (a small folder in data.train):
                    # retrying would spin for ever, the other ranks waiting
                    batch = getattr(getattr(self.loader, "dataset", None), "batch_size", None)
                    raise DataError(f"data: {empty} epochs in a row gave rank {os.environ.get('RANK', '0')} no batch "
                                    f"(an epoch needs at least {'one batch' if batch is None else f'{batch} samples'} "
                                    f"per rank and data worker, incomplete batches are dropped, and a rank reads every "
                                    f"world_size-th shard: use more samples than ranks x train.batch_size, in more "
                                    f"shards than ranks x data.num_workers)")
                self.state.epoch = self.loader.epoch
                self.it = iter(self.loader)
            except Exception as exn:       # torch: "DataLoader worker (pid N) exited unexpectedly", or a dead
                died = as_worker_death(exn)  # worker's half-sent batch (ConnectionResetError); else re-raised
                if died is None:
                    raise
                raise died from None
