"""align/train/feed.py's Batches: each rank rolls into its next epoch on its own; an epoch with no batch is an
error, not a spin (which would leave the other ranks waiting in their next collective)."""

import pytest

from align.errors import DataError
from align.train.feed import Batches
from align.train.state import TrainState


class EpochLoader:
    """Epoch e yields sizes[e] batches (the last size repeats); counts the epochs started."""

    def __init__(self, sizes):
        self.sizes, self.epoch, self.started = sizes, 0, 0

    def state_dict(self):                      # Batches keeps the position before a multi-batch take
        return {"epoch": self.epoch, "started": self.started}

    def __iter__(self):
        self.started += 1
        if self.started > 50:                  # bounds the spin of a Batches without the empty-epoch check
            raise RuntimeError("Batches kept restarting an empty epoch")
        n = self.sizes[min(self.epoch, len(self.sizes) - 1)]
        for i in range(n):
            yield (self.epoch, i)
        self.epoch += 1


def test_batches_roll_into_the_next_epoch_whatever_its_length():
    state = TrainState()
    b = Batches(EpochLoader([1, 3, 2]), state)
    got = b.take(4) + b.take(2)
    assert got == [(0, 0), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)] and state.epoch == 2


def test_an_empty_epoch_now_and_then_is_skipped():
    """e.g. a rank whose shards this epoch are smaller than a batch"""
    state = TrainState()
    b = Batches(EpochLoader([1, 0, 0, 2]), state)
    assert b.take(3) == [(0, 0), (3, 0), (3, 1)] and state.epoch == 3


def test_a_rank_whose_epochs_stay_empty_gets_one_line_not_an_endless_loop():
    """e.g. fewer shards than ranks: this rank reads none, every epoch"""
    state = TrainState()
    b = Batches(EpochLoader([2, 0]), state)
    assert b.take(2) == [(0, 0), (0, 1)]
    with pytest.raises(DataError) as e:
        b.take(1)
    assert "10 epochs in a row gave rank 0 no batch" in str(e.value) and "\n" not in str(e.value)


def test_batches_start_the_loaders_reading_at_once():
    """The data workers make the first batches while the run finishes its set-up (restore, logs, val checks)."""
    class Starting(EpochLoader):
        def start_reading(self):
            self.reading = True

    loader = Starting([2])
    loader.reading = False
    b = Batches(loader, TrainState())
    assert loader.reading and loader.started == 0          # reading, and not a batch taken yet
    assert b.take(1) == [(0, 0)]


@pytest.mark.parametrize("content", [b"hello\n", b""])
def test_data_train_that_nothing_can_be_read_from_says_so(tmp_path, capsys, tiny_recipe, content):
    """A text file or an empty file as data.train: every shard is skipped as a corrupt tar. The run's last line
    said "use more samples than ranks x train.batch_size", as for a too-small folder; it says nothing could be
    read and why. It said so after reading the shard 10 times, naming it in a warning each time (each epoch); it
    stops at the first epoch's end, and the shard is named once."""
    import yaml

    from align.cli import main
    (tmp_path / "notes.tar").write_bytes(content)
    tiny_recipe["data"].update(train=str(tmp_path / "notes.tar"))
    del tiny_recipe["data"]["synthetic_size"]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe))
    assert main(["train", str(tmp_path / "r.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    last = err[-1]
    assert last.startswith("align: error: data: nothing in data.train could be read on rank 0: every "
                           "sample or shard was skipped (corrupt tar 1)"), last
    assert "batch_size" not in last
    assert len([ln for ln in err if ln.startswith("skipping shard ") and "notes.tar: corrupt tar" in ln]) == 1, err


def test_carve_val_split_names_the_held_out_groups_and_warns_of_lookalike_ids(tmp_path):
    """The run said only how many groups it held out, and nothing when 'Alice' trained while 'alice' was held out
    (separate ids, differing only by case): it now names the held-out groups and warns of such sets."""
    import json
    import types
    from align.config import parse_recipe
    from align.train.feed import carve_val_split
    from tests.data.stream.test_val_split import _sample
    from tests.switch_helpers import recipe
    from tests.wds_helpers import write_shard
    samples = [_sample(f"k{i}", g, i) for i, g in enumerate(["alice", "Alice", "bob", "carl"] * 2)]
    path = write_shard(tmp_path / "a.tar", samples)
    r = parse_recipe(recipe(tmp_path, "run", data={"train": [path], "val_split": {"groups_from": "speaker",
                                                                                   "groups": ["alice", "bob"]}}))
    said = []
    acc = types.SimpleNamespace(is_main_process=True, print=said.append, wait_for_everyone=lambda: None)
    out = carve_val_split(r, types.SimpleNamespace(acc=acc))
    assert out.data.val.endswith("val_split")
    assert "data.val_split: held-out groups: alice, bob" in said
    warn = [line for line in said if line.startswith("warning: data.val_split:")]
    assert len(warn) == 1 and "'Alice', 'alice (held out)'" in warn[0] and "both sides" in warn[0], said
    saved = json.load(open(tmp_path / "run" / "val_split" / "val_split.json"))
    assert saved["counts"]["held_out_groups"] == ["alice", "bob"]


def test_carve_val_split_warns_of_held_out_samples_left_out_as_copies_of_trained_ones(tmp_path):
    """A held-out sample with a trained sample's image bytes (one file filed under two speakers) is left out of
    RUN/val_split (align.data.stream.val_split); the run says so in one warning naming how many and one pair."""
    import types
    from align.config import parse_recipe
    from align.train.feed import carve_val_split
    from tests.data.stream.test_val_split import _sample
    from tests.switch_helpers import recipe
    from tests.wds_helpers import write_shard
    samples = [_sample(f"k{i}", g, i) for i, g in enumerate(["alice", "bob", "carl"] * 2)] + [_sample("kc", "alice", 1)]
    path = write_shard(tmp_path / "a.tar", samples)                 # kc (alice, held out): k1's image (bob)
    r = parse_recipe(recipe(tmp_path, "run", data={"train": [path], "val_split": {"groups_from": "speaker",
                                                                                   "groups": ["alice"]}}))
    said = []
    acc = types.SimpleNamespace(is_main_process=True, print=said.append, wait_for_everyone=lambda: None)
    carve_val_split(r, types.SimpleNamespace(acc=acc))
    warn = [line for line in said if "byte-identical" in line]
    assert warn == [f"warning: data.val_split: 1 held-out samples have an image or audio member byte-identical to a "
                    f"trained sample's (e.g. {path}:kc and {path}:k1): left out of the val set, which would score "
                    f"items trained on"], said
