"""align/train/elastic.py: the LR schedule continues by samples seen when the global batch changes on resume."""
import math

import torch

from align.train.elastic import continue_by_samples, schedule_by_samples
from align.train.optim import WarmupCosine, build_scheduler


class _TC:
    lr, warmup_steps, min_lr_ratio = 1.0, 3, 0.1


def _sched(total):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return opt, build_scheduler(opt, _TC, total)


def test_same_global_batch_is_silent_and_unchanged():
    _, plain = _sched(20)
    _, s = _sched(20)
    schedule_by_samples(s, 64)
    for _ in range(12):
        plain.step()
        s.step()
        assert s.get_last_lr() == plain.get_last_lr()
    assert continue_by_samples(s, 12, 12 * 64, 64, 20) == (20, None)


def test_changed_global_batch_follows_samples_seen_and_survives_a_save():
    ref = WarmupCosine(3, 20, 0.1)                     # the schedule in steps of the first global batch (8)
    opt, s = _sched(20)
    schedule_by_samples(s, 8)
    for _ in range(4):
        s.step()                                       # 4 steps x 8 = 32 samples
    saved = s.state_dict()
    opt2, s2 = _sched(999)                             # a resumed run builds its own, then loads
    schedule_by_samples(s2, 24)
    s2.load_state_dict(saved)
    total, note = continue_by_samples(s2, 4, 32, 24, 999)
    assert total == 4 + math.ceil((160 - 32) / 24) and "from 8 to 24" in note and "(32 of 160)" in note
    for step in range(5, total + 1):
        s2.step()
        samples = 32 + (step - 4) * 24
        assert math.isclose(s2.get_last_lr()[0], ref(samples / 8), rel_tol=1e-12)
    # A later resume restores the re-anchored schedule from the state dict alone.
    _, s3 = _sched(999)
    schedule_by_samples(s3, 24)
    s3.load_state_dict(s2.state_dict())
    assert continue_by_samples(s3, total, 32 + (total - 4) * 24, 24, 999)[1] is None
    assert s3.lr_lambdas[0](total) == s2.lr_lambdas[0](total)


def test_changed_global_batch_is_noticed_through_restore_scheduler():
    """train.py resumes with optim.restore_scheduler (the recipe's schedule, the checkpoint's step): the
    samples-seen anchor must come from the checkpoint, or a changed global batch goes unnoticed."""
    from align.train.optim import restore_scheduler
    ref = WarmupCosine(3, 20, 0.1)
    _, s = _sched(20)
    schedule_by_samples(s, 8)
    for _ in range(4):
        s.step()                                       # 32 samples at global batch 8
    _, s2 = _sched(20)                                 # the same recipe, resumed at global batch 24
    schedule_by_samples(s2, 24)
    restore_scheduler(s2, s.state_dict())
    total, note = continue_by_samples(s2, 4, 32, 24, 20)
    assert note is not None and "from 8 to 24" in note and "(32 of 160)" in note
    assert total == 4 + math.ceil((160 - 32) / 24)
    s2.step()
    assert math.isclose(s2.get_last_lr()[0], ref((32 + 24) / 8), rel_tol=1e-12)
