"""The end line of `align embed` (EmbedSummary) and, under `accelerate launch` / torchrun, this process's place in
the launch (dist_env) and the launch's totals gathered onto process 0 (launch_totals), so one line says them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Optional

ORDER = ("image", "audio", "text")     # the order modalities are embedded, stored and named in


@dataclass
class EmbedSummary:
    parts: int = 0
    done_before: int = 0           # parts skipped because a previous run finished them
    items: int = 0                 # samples read by this process
    vectors: Dict[str, int] = field(default_factory=dict)
    skipped: int = 0               # samples that failed to decode
    seconds: float = 0.0

    def line(self, out: str, rank: int = 0, world: int = 1, launch: bool = False) -> str:
        """One process's line (`process r/w:` when world > 1), or (launch) the totals of a launch's `world`."""
        who = f"{world} processes: " if launch else (f"process {rank}/{world}: " if world > 1 else "")
        vec = ", ".join(f"{m} {n}" for m, n in self.vectors.items()) or "none"
        rate = self.items / self.seconds if self.seconds > 0 else 0.0
        return (f"embed: {who}{self.parts} part(s) ({self.done_before} already done), {self.items} samples, "
                f"vectors: {vec}, {self.skipped} skipped, {rate:.1f} samples/s, {self.seconds:.1f} s -> {out}")


def dist_env() -> tuple:
    """(rank, world size) from accelerate launch / torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def launch_totals(summary: EmbedSummary, rank: int, world: int) -> Optional[EmbedSummary]:
    """Under `accelerate launch` / torchrun (WORLD_SIZE > 1 and the launcher's MASTER_ADDR): every process's
    summary gathered over a gloo group, so that one line says the launch's totals (seconds: the slowest
    process's); that sum on rank 0, None on the others (which print nothing). Without a launcher (RANK and
    WORLD_SIZE set by hand) or with one process: `summary` itself, its line naming its process."""
    import dataclasses
    if world <= 1 or not os.environ.get("MASTER_ADDR"):
        return summary
    from datetime import timedelta

    import torch.distributed as dist
    made = not dist.is_initialized()
    if made:        # a day: a process whose share takes longer than the others' is waited for, not an error
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(hours=24))
    try:
        got = [None] * world
        dist.all_gather_object(got, dataclasses.asdict(summary))
    finally:
        if made:
            dist.destroy_process_group()
    if rank != 0:
        return None
    total = EmbedSummary(seconds=max(g["seconds"] for g in got))
    for g in got:
        total.parts += g["parts"]
        total.done_before += g["done_before"]
        total.items += g["items"]
        total.skipped += g["skipped"]
        for m, n in g["vectors"].items():
            total.vectors[m] = total.vectors.get(m, 0) + n
    total.vectors = {m: total.vectors[m] for m in ORDER if m in total.vectors}
    return total
