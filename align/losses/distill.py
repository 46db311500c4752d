"""CLIP (InfoNCE) loss plus distillation from a frozen teacher, exact under multi-process gathering.

The student's in-batch similarity distributions are pulled towards a frozen teacher's, in both directions
(query -> caption and caption -> query), as open_clip's DistillClipLoss and MobileCLIP's reinforced training do.
On the valid global batch of N pairs: student embeddings (a_i, b_i), s = the student's logit_scale (exp'ed),
teacher embeddings (u_i, v_i) (any width), T = the teacher's temperature:

    p_i  = softmax_j( u_i . v_j / T )       q_i  = log_softmax_j( s a_i . b_j )      (image -> text rows)
    p'_i = softmax_j( v_i . u_j / T )       q'_i = log_softmax_j( s b_i . a_j )      (text -> image rows)
    KD   = 1/(2N) * sum_i [ KL(p_i || q_i) + KL(p'_i || q'_i) ]
    L    = CLIP + weight * KD            (CLIP: ClipLoss's symmetric InfoNCE on (a, b))

KL rather than open_clip's soft cross-entropy: they differ by the teacher's entropy, a constant, so the gradient
is the same and KD is 0 when the student matches the teacher. open_clip adds its distill term with weight 1;
MobileCLIP's (1 - lambda) * CLIP + lambda * KD is this loss times (1 - lambda) with weight = lambda / (1 - lambda).

The teacher is frozen: its embeddings are constants here (detached). Across processes (the convention of
align.losses.distributed) the teacher's embeddings are gathered beside the student's, in rank order, so every
rank builds the same global teacher similarities. Global mode: every rank computes the identical L (gradients
as ClipLoss: the gathers' backward, or local gradients times world_size without gather_with_grad). local_loss:
each rank computes its rows of both directions only, times world_size / (2N). The mean over ranks is L.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from align.errors import AlignError, ConfigError
from align.losses.clip import ClipLoss
from align.losses.distributed import as_scale, check_dist, check_pair, compact, gather_batch, scale_grad, zero_loss


class DistillClipLoss(ClipLoss):
    """InfoNCE plus weight * KL(teacher || student) of the in-batch similarity distributions; see the module
    docstring. rank, world_size, gather_with_grad, local_loss: as ClipLoss. weight >= 0: the KD term's weight;
    temperature > 0: divides the teacher's cosine similarities (the teacher's own 1/logit_scale by default,
    resolved when the teacher is loaded: align.train.teacher)."""

    takes_teacher = True

    def __init__(self, rank: int = 0, world_size: int = 1, gather_with_grad: bool = True, local_loss: bool = False,
                 weight: float = 1.0, temperature: float = 0.01):
        super().__init__(rank=rank, world_size=world_size, gather_with_grad=gather_with_grad, local_loss=local_loss)
        if not (0 <= float(weight) < float("inf")):
            raise ConfigError(f"loss.distill.weight: must be finite and >= 0, got {weight}")
        if not (0 < float(temperature) < float("inf")):
            raise ConfigError(f"loss.distill.temperature: must be > 0, got {temperature}")
        self.weight, self.temperature = float(weight), float(temperature)

    def forward(self, a: torch.Tensor, b: torch.Tensor, logit_scale, mask: Optional[torch.Tensor] = None,
                teacher_a: Optional[torch.Tensor] = None, teacher_b: Optional[torch.Tensor] = None) -> torch.Tensor:
        """a, b: [B, D] student embeddings (normalised); logit_scale: exp'ed scalar; mask: bool [B];
        teacher_a, teacher_b: [B, Dt] the teacher's embeddings of the same samples (normalised). Returns 0-dim."""
        name = type(self).__name__
        check_pair(a, b, mask, name)
        check_dist(self.rank, self.world_size, name)
        if teacher_a is None or teacher_b is None:
            raise AlignError(f"{name}: no teacher embeddings (loss.distill: the teacher did not run, or the "
                             "shards have no stored teacher members)")
        check_pair(teacher_a, teacher_b, None, f"{name} (teacher)")
        if teacher_a.shape[0] != a.shape[0]:
            raise AlignError(f"{name}: {teacher_a.shape[0]} teacher rows for a batch of {a.shape[0]}")
        s = as_scale(logit_scale, a)
        if self.world_size > 1 and not self.gather_with_grad:
            a, b = scale_grad(a, self.world_size), scale_grad(b, self.world_size)
        ta, tb = teacher_a.detach().to(a.dtype), teacher_b.detach().to(a.dtype)
        g = gather_batch([a, b, ta, tb], mask, self.rank, self.world_size, self.gather_with_grad)
        (A, B, TA, TB), start, stop = compact(g)        # [N, D], [N, D], [N, Dt], [N, Dt]
        n = A.shape[0]
        if n == 0:
            return zero_loss(*g.tensors, s)
        if self.local_loss and self.world_size > 1:
            clip = self._local(A, B, s, start, stop)
            return (clip + self.weight * self._kd(A, B, TA, TB, s, start, stop)) * (self.world_size / (2 * n))
        clip = self._global(A, B, s)
        return (clip + self.weight * self._kd(A, B, TA, TB, s, 0, n)) / (2 * n)

    def _kd(self, A, B, TA, TB, s, start: int, stop: int) -> torch.Tensor:
        """Sum over rows [start, stop) of both directions' KL(teacher || student) (forward() normalises)."""
        out = A.new_zeros(())
        for q, k, tq, tk in ((A, B, TA, TB), (B, A, TB, TA)):
            student = F.log_softmax(s * (q[start:stop] @ k.T), dim=1)           # [n_r, N]
            teacher = F.log_softmax((tq[start:stop] @ tk.T) / self.temperature, dim=1)
            out = out + F.kl_div(student, teacher, reduction="sum", log_target=True)
        return out
