"""Mutation check: plant one-line bugs in the core modules and make sure the tests catch each of them.

    python tools/mutate.py                 # every mutation (~30 min on 2 busy cores)
    python tools/mutate.py --only loss     # ids containing "loss"
    python tools/mutate.py --list          # the list, nothing run

Each mutation is (id, file, exact source snippet, replacement, tests). The snippet is text, not a line
number, so the list survives edits elsewhere in a file; a snippet that is missing or occurs more than
once is reported as STALE (fix the list). The repository's files (git ls-files, tracked and untracked
but not ignored) are copied to a temporary directory once (once per job with --jobs N); each mutation
is applied there, the listed tests run (`pytest -x -q -m "not slow"`, with a timeout), and the file is
restored before the next one. Your tree is never modified.

A mutation is KILLED when its tests fail (or time out), SURVIVED when they pass. The listed tests
must pass on the unmutated copy first (the baseline), or the run stops. Exit status 0 only when every
mutation is killed and none is stale. It runs before a release, not in CI (see README, Tests).
"""
import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Mutation:
    id: str
    file: str
    snippet: str
    replacement: str
    tests: List[str]
    note: str = ""


M = Mutation
SW = "tests/train/test_train_switches.py"
DSW = "tests/train/test_train_data_switches.py"
RES = "tests/train/test_train_resume_shards.py"
MUTATIONS = [
    # -- losses: each against its plain reference -----------------------------------------------
    M("loss.clip.one_direction", "align/losses/clip.py",
      "+ F.cross_entropy(logits.T, labels, reduction=\"sum\"))", "+ 0 * F.cross_entropy(logits.T, labels, reduction=\"sum\"))",
      ["tests/losses/test_clip_loss.py"]),
    M("loss.clip.normalisation", "align/losses/clip.py",
      "return self._global(A, B, s) / (2 * n)", "return self._global(A, B, s) / n", ["tests/losses/test_clip_loss.py"]),
    M("loss.clip.local_labels", "align/losses/clip.py",
      "labels = torch.arange(start, stop, device=A.device)", "labels = torch.arange(0, stop - start, device=A.device)",
      ["tests/losses/test_losses_distributed.py"]),
    M("loss.siglip.positive_sign", "align/losses/siglip.py",
      "return F.softplus(z).sum() - z.diagonal(offset=offset).sum()",
      "return F.softplus(z).sum() + z.diagonal(offset=offset).sum()", ["tests/losses/test_siglip_loss.py"]),
    M("loss.siglip.bias_dropped", "align/losses/siglip.py",
      "z = s * (x @ y.T) + t", "z = s * (x @ y.T)", ["tests/losses/test_siglip_loss.py"]),
    M("loss.chunked.column_rescale", "align/losses/chunked.py",
      "col_sum.mul_(torch.exp(col_max - new_max))", "col_sum.mul_(1.0)", ["tests/losses/test_chunked_loss.py"]),
    M("loss.chunked.local_one_direction", "align/losses/chunked.py",
      "+ chunked_infonce_sum(B, A, s, start, stop, self.chunk_size, False))",
      "+ 0 * chunked_infonce_sum(B, A, s, start, stop, self.chunk_size, False))",
      ["tests/losses/test_losses_distributed.py"]),
    M("loss.gather.local_slice_without_grad", "align/losses/distributed.py",
      "    parts[rank] = x\n", "    pass\n", ["tests/losses/test_losses_distributed.py"]),
    M("loss.gather.backward_slice", "align/losses/distributed.py",
      "out = total[r * n:(r + 1) * n]", "out = total[:n]", ["tests/losses/test_losses_distributed.py"]),
    M("loss.multipair.weights", "align/losses/multipair.py",
      "total = w * loss if total is None else total + w * loss", "total = loss if total is None else total + loss",
      ["tests/losses/test_multipair_loss.py"]),
    # -- retrieval and zero-shot metrics ----------------------------------------------------------
    M("retrieval.recall_at_k_off_by_one", "align/bench/retrieval.py",
      "return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}",
      "return {k: float(hits[:, :k + 1].any(axis=1).mean()) for k in ks}", ["tests/bench/test_retrieval.py"]),
    M("retrieval.missing_results_hit", "align/bench/retrieval.py",
      "return valid & (g == np.asarray(query_groups)[:, None])", "return g == np.asarray(query_groups)[:, None]",
      ["tests/bench/test_retrieval.py"]),
    M("zeroshot.class_vectors_not_renormalised", "align/bench/zeroshot.py",
      "out.append(v / v.norm())", "out.append(v)", ["tests/bench/test_zeroshot.py"]),
    M("probe.fusion.zscore_on_all_rows", "align/bench/probes.py",
      "mu, sd = xtr[fit_idx].mean(0), xtr[fit_idx].std(0) + 1e-6", "mu, sd = xtr.mean(0), xtr.std(0) + 1e-6",
      ["tests/bench/test_probes.py"]),
    M("probe.fusion.keeps_last_not_best", "align/bench/probes.py",
      "if vloss < best[0] - 1e-6:", "if True:", ["tests/bench/test_probes.py"]),
    M("probe.cca.ridge_unscaled", "align/bench/probes.py",
      "caa += reg * np.trace(caa) / len(caa) * np.eye(len(caa))", "caa += reg * np.eye(len(caa))",
      ["tests/bench/test_probes.py"]),
    M("probe.cca_runner.names_swapped", "align/bench/probe_tasks.py",
      "name_a=q, name_b=g)", "name_a=g, name_b=q)", ["tests/bench/test_probe_tasks.py"]),
    # -- tar reader -------------------------------------------------------------------------------
    M("reader.padding_not_skipped", "align/wds/reader.py",
      "_read_exact(stream, padded - size, \"tar padding\")", "pass", ["tests/wds/test_reader.py"]),
    M("reader.ustar_prefix_dropped", "align/wds/reader.py",
      "raw = prefix + b\"/\" + raw", "raw = raw", ["tests/wds/test_reader.py"]),
    M("reader.old_style_regular_dropped", "align/wds/reader.py",
      "_REGULAR = (b\"0\", b\"\\x00\", b\"7\")", "_REGULAR = (b\"0\", b\"7\")", ["tests/wds/test_reader.py"],
      note="helper A adds the old-style (type \\0) member test; verify after merging"),
    M("reader.signed_checksum_dropped", "align/wds/reader.py",
      "if stored != computed and stored != computed - 256 * high:", "if stored != computed:",
      ["tests/wds/test_reader.py"], note="helper A adds the signed-checksum test; verify after merging"),
    # -- resume wiring ----------------------------------------------------------------------------
    M("resume.data_position_dropped", "align/train/loop.py",
      "loader = build_loader(r, core, rank, world, data_resume)",
      "loader = build_loader(r, core, rank, world, None)", [RES]),
    M("resume.samples_anchor_not_restored", "align/train/optim.py", "                setattr(fn, key, saved[key])",
      "                pass", ["tests/train/test_elastic.py"]),
    M("resume.scheduler_not_restored", "align/train/loop.py",
      "restore_scheduler(scheduler, saved[\"scheduler\"])", "pass", [SW + "::test_restored_scheduler_follows_the_schedule"]),
    M("resume.scheduler_from_the_checkpoint", "align/train/optim.py",
      "group[\"lr\"] = base * fn(scheduler.last_epoch)", "pass", [SW + "::test_restored_scheduler_follows_the_schedule"]),
    M("resume.rng_not_restored", "align/train/loop.py",
      "load_checkpoint(resume_path, rank=rank, restore_rng=True)", "pass", [RES]),
    M("resume.worker_transforms_seeded_only_at_worker_start", "align/data/stream/loader.py",
      "                if in_worker:\n", "                if False:\n", [RES]),
    M("resume.dataloader_seed_from_global_rng", "align/data/stream/loader.py",
      "generator=torch.Generator().manual_seed(plan.epoch), ", "", [RES]),
    M("resume.auto_ignored", "align/train/loop.py",
      "return found[-1] if found else None", "return None", [SW + "::test_resume_auto_none_and_path"]),
    M("resume.none_ignored", "align/train/loop.py",
      "    if r.resume == \"none\":\n        return None\n", "", [SW + "::test_resume_auto_none_and_path"]),
    M("resume.path_ignored", "align/train/loop.py", "    return r.resume\n", "    return None\n",
      [SW + "::test_resume_auto_none_and_path"]),
    # -- model.* ----------------------------------------------------------------------------------
    M("switch.model.embed_dim", "align/model.py",
      "towers[modality] = build_tower(tcfg, modality, model_cfg.embed_dim)",
      "towers[modality] = build_tower(tcfg, modality, 16)", [SW + "::test_embed_dim_and_open_clip_config_shape_the_model"]),
    M("switch.model.init_logit_scale", "align/model.py",
      "init_logit_scale=model_cfg.init_logit_scale,", "init_logit_scale=math.log(1 / 0.07),",
      [SW + "::test_loss_type_and_temperature_init_match_a_plain_reference"]),
    M("switch.model.max_logit_scale", "align/model.py",
      "max_logit_scale=model_cfg.max_logit_scale,", "max_logit_scale=100.0,",
      [SW + "::test_max_logit_scale_clamps_the_temperature"]),
    M("switch.model.init_logit_bias", "align/model.py",
      "init_logit_bias=model_cfg.init_logit_bias)",
      "init_logit_bias=None if model_cfg.init_logit_bias is None else -10.0)",
      [SW + "::test_loss_type_and_temperature_init_match_a_plain_reference"]),
    M("switch.model.towers.text.trim_padding", "align/towers/open_clip_towers.py",
      "self.trim_padding = bool(cfg.get(\"trim_padding\", True))", "self.trim_padding = True",
      [SW + "::test_text_trim_padding_false_runs_the_full_context"]),
    M("switch.model.towers.image.grad_checkpointing", "align/towers/open_clip_towers.py",
      "if cfg.get(\"grad_checkpointing\"):", "if False:", [SW + "::test_grad_checkpointing_saves_fewer_activations"]),
    # -- loss.* -----------------------------------------------------------------------------------
    M("switch.loss.type", "align/train/loop.py", "loss_fn = build_loss(r.loss.type,", "loss_fn = build_loss(\"clip\",",
      [SW + "::test_loss_type_and_temperature_init_match_a_plain_reference"]),
    M("switch.loss.pairs", "align/train/loop.py", "pairs=[tuple(p) for p in r.loss.pairs]", "pairs=[(\"image\", \"text\")]",
      [SW + "::test_loss_pairs_and_weights_through_training"]),
    M("switch.loss.weights", "align/train/loop.py", "weights = r.loss.weights or [1.0] * len(r.loss.pairs)",
      "weights = [1.0] * len(r.loss.pairs)", [SW + "::test_loss_pairs_and_weights_through_training"]),
    M("switch.loss.chunk_size", "align/train/loop.py", "{\"chunk_size\": r.loss.chunk_size}", "{\"chunk_size\": 4096}",
      [SW + "::test_chunked_clip_computes_logits_chunk_size_rows_at_a_time"]),
    # -- data.* -----------------------------------------------------------------------------------
    M("switch.data.train", "align/train/loop.py", "if r.data.train == \"synthetic\":", "if True:",
      [DSW + "::test_train_on_shards_trains_every_sample_of_an_epoch_once"]),
    M("switch.data.train.weight", "align/train/loop.py", "SourceSpec(urls=s.urls, weight=s.weight)",
      "SourceSpec(urls=s.urls, weight=1.0)", [DSW + "::test_source_weights_set_the_mix"]),
    M("switch.data.samples_per_epoch", "align/train/loop.py", "samples_per_epoch=r.data.samples_per_epoch,",
      "samples_per_epoch=None,", [DSW + "::test_samples_per_epoch_sets_the_epoch_length"]),
    M("switch.data.resampled", "align/train/loop.py", "resampled=r.data.resampled,", "resampled=False,",
      [DSW + "::test_resampled_draws_shards_with_replacement"]),
    M("switch.data.shuffle_buffer", "align/train/loop.py", "shuffle_buffer=r.data.shuffle_buffer,",
      "shuffle_buffer=1000,", [DSW + "::test_shuffle_buffer"]),
    M("switch.data.num_workers", "align/train/loop.py", "num_workers=r.data.num_workers,", "num_workers=0,",
      [DSW + "::test_num_workers_decode_in_worker_processes"]),
    M("switch.data.allow_pipe", "align/train/loop.py", "allow_pipe=r.data.allow_pipe,", "allow_pipe=True,",
      [DSW + "::test_installed_align_script_refuses_pipe_unless_the_recipe_allows_it"]),
    M("switch.data.max_skip_frac", "align/train/loop.py", "max_skip_frac=r.data.max_skip_frac,", "max_skip_frac=None,",
      [DSW + "::test_max_skip_frac_from_the_recipe_stops_the_run"]),
    M("switch.data.synthetic_size", "align/train/loop.py", "samples_per_epoch=r.data.synthetic_size // world",
      "samples_per_epoch=10000 // world", [SW + "::test_batch_size_epochs_and_synthetic_size"]),
    M("switch.data.synthetic_caption", "align/train/loop.py", "caption=r.data.synthetic_caption)",
      "caption=\"Dummy caption\")", [SW + "::test_synthetic_caption_is_the_text_trained_on"]),
    M("switch.data.val", "align/train/loop.py",
      "state[\"step\"]) if r.data.val else {}", "state[\"step\"]) if False else {}",
      [SW + "::test_eval_every_tasks_best_metric_and_batch_size"]),
    # -- train.* ----------------------------------------------------------------------------------
    M("switch.train.batch_size", "align/train/loop.py", "SyntheticLoader(model, r.train.batch_size,",
      "SyntheticLoader(model, 8,", [SW + "::test_batch_size_epochs_and_synthetic_size"]),
    M("switch.train.max_steps", "align/train/loop.py", "total_steps = r.train.max_steps\n",
      "total_steps = r.train.max_steps and r.train.max_steps + 1\n", [SW + "::test_optimizer_and_schedule_settings_reach_every_step"]),
    M("switch.train.epochs", "align/train/loop.py", "total_steps = r.train.epochs * max(", "total_steps = 1 * max(",
      [SW + "::test_batch_size_epochs_and_synthetic_size"]),
    M("switch.train.accum_steps", "align/train/loop.py", "micro = [next_batch() for _ in range(r.train.accum_steps)]",
      "micro = [next_batch() for _ in range(1)]", [SW + "::test_gradcache_gradients_equal_one_dense_large_batch_step"]),
    M("switch.train.accum_steps.gradcache_bypassed", "align/train/loop.py",
      "loss = gradcache_step(lambda mb: model(mb), micro, compute_loss,",
      "loss = gradcache_step(lambda mb: model(mb), micro[:1], compute_loss,",
      [SW + "::test_gradcache_gradients_equal_one_dense_large_batch_step"]),
    # each parameter group carries its own lr (train.tower_lr, layer_decay): train.lr reaches it here
    M("switch.train.lr", "align/train/optim.py", "base = float(tower_lr.get(m, tc.lr))",
      "base = float(tower_lr.get(m, 5e-4))",
      [SW + "::test_optimizer_and_schedule_settings_reach_every_step"]),
    M("switch.train.weight_decay", "align/train/optim.py", "\"weight_decay\": 0.0 if skip else tc.weight_decay,",
      "\"weight_decay\": 0.0 if skip else 0.2,", [SW + "::test_optimizer_and_schedule_settings_reach_every_step"]),
    M("switch.train.betas", "align/train/optim.py", "betas=tuple(tc.betas)", "betas=(0.9, 0.98)",
      [SW + "::test_optimizer_and_schedule_settings_reach_every_step"]),
    M("switch.train.eps", "align/train/optim.py", "eps=tc.eps)", "eps=1e-6)",
      [SW + "::test_optimizer_and_schedule_settings_reach_every_step"]),
    M("switch.train.warmup_steps", "align/train/optim.py", "WarmupCosine(tc.warmup_steps, total_steps, tc.min_lr_ratio)",
      "WarmupCosine(0, total_steps, tc.min_lr_ratio)", [SW + "::test_optimizer_and_schedule_settings_reach_every_step"]),
    M("switch.train.min_lr_ratio", "align/train/optim.py", "WarmupCosine(tc.warmup_steps, total_steps, tc.min_lr_ratio)",
      "WarmupCosine(tc.warmup_steps, total_steps, 0.0)", [SW + "::test_optimizer_and_schedule_settings_reach_every_step"]),
    M("switch.train.grad_clip", "align/train/loop.py", "if r.train.grad_clip:", "if False:",
      [SW + "::test_grad_clip_bounds_the_applied_gradient_norm"]),
    M("switch.train.precision", "align/train/loop.py", "mp = {\"fp32\": \"no\", \"bf16\": \"bf16\", \"fp16\": \"fp16\"}[r.train.precision]",
      "mp = \"no\"", ["tests/train/test_train.py::test_bf16_autocast_runs_on_cpu"]),
    M("switch.train.precision.fp16_refusal", "align/train/loop.py", "if r.train.precision == \"fp16\" and not accel:",
      "if False:", ["tests/train/test_train.py::test_fp16_is_refused_without_a_gpu"]),
    M("switch.train.checkpoint_every", "align/train/loop.py",
      "if r.train.checkpoint_every and state[\"step\"] % r.train.checkpoint_every == 0:", "if False:",
      [SW + "::test_checkpoint_every_and_keep_last"]),
    M("switch.train.keep_last", "align/train/loop.py", "                prune_checkpoints(ckpt_dir, r.train.keep_last)",
      "                prune_checkpoints(ckpt_dir, 2)", [SW + "::test_checkpoint_every_and_keep_last"]),
    M("switch.train.log_every", "align/train/loop.py", "if state[\"step\"] % r.train.log_every == 0",
      "if state[\"step\"] % 2 == 0", [SW + "::test_log_every"]),
    M("switch.train.compile", "align/train/loop.py", "if r.train.compile:", "if False:",
      [SW + "::test_compile_trains_the_compiled_model"]),
    M("switch.train.grad_checkpointing", "align/train/loop.py", "if r.train.grad_checkpointing:", "if False:",
      [SW + "::test_grad_checkpointing_saves_fewer_activations"]),
    M("switch.train.max_bad_steps", "align/train/loop.py", "if bad_in_row >= r.train.max_bad_steps:",
      "if bad_in_row >= 5:", [SW + "::test_max_bad_steps"]),
    M("switch.train.num_threads", "align/train/loop.py", "if r.train.num_threads:", "if False:",
      [SW + "::test_num_threads_and_deterministic_are_applied"]),
    M("switch.train.deterministic", "align/train/loop.py", "if r.train.deterministic:", "if False:",
      [SW + "::test_num_threads_and_deterministic_are_applied"]),
    M("switch.train.wandb_project", "align/train/loop.py", "    if r.train.wandb_project:\n        try:",
      "    if False:\n        try:",
      ["tests/train/test_train.py::test_wandb_logging_when_enabled"]),
    M("switch.seed", "align/train/loop.py", "set_seed(r.seed)", "set_seed(0)", [SW + "::test_seed_sets_the_initial_weights"]),
    # -- eval.* -----------------------------------------------------------------------------------
    M("switch.eval.every", "align/train/loop.py", "if r.eval.every and r.data.val and", "if False and",
      [SW + "::test_eval_every_tasks_best_metric_and_batch_size"]),
    M("switch.eval.tasks", "align/train/loop.py", "tasks=r.eval.tasks,", "tasks=[\"zeroshot\", \"retrieval\"],",
      [SW + "::test_eval_every_tasks_best_metric_and_batch_size"]),
    M("switch.eval.batch_size", "align/train/loop.py", "batch_size=r.eval.batch_size,", "batch_size=256,",
      [SW + "::test_eval_every_tasks_best_metric_and_batch_size"]),
    M("switch.eval.best_metric", "align/train/loop.py",
      "metric = res.get(r.eval.best_metric) if r.eval.best_metric else None", "metric = None",
      [SW + "::test_eval_every_tasks_best_metric_and_batch_size"]),
    # -- safety and counting ----------------------------------------------------------------------
    M("safety.weights_only_off", "align/train/checkpoint.py",
      "obj = torch.load(path, map_location=\"cpu\", weights_only=True)",
      "obj = torch.load(path, map_location=\"cpu\", weights_only=False)", ["tests/train/test_checkpoint.py"]),
    M("faults.corrupt_tar_not_counted", "align/data/stream/sources.py",
      "faults.record(CORRUPT_TAR, f\"shard {url}\", repr(exn), per_sample=False)", "pass",
      ["tests/data/write/test_custom_data_e2e.py"]),
    M("faults.counted_twice", "align/data/stream/faults.py", "self._delta[reason] += 1", "self._delta[reason] += 2",
      ["tests/data/write/test_custom_data_e2e.py"]),
    # -- retrieval app (issue 21) -----------------------------------------------------------------
    M("retrieval.embed.resume_ignores_markers", "align/retrieval/embed.py",
      "    if not (os.path.isfile(p) and os.path.isfile(os.path.join(out_dir, f\"{part}.parquet\"))):",
      "    if True:", ["tests/retrieval/test_embed.py"]),
    M("retrieval.embed.no_renormalise", "align/retrieval/embed.py",
      "    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)", "    pass",
      ["tests/retrieval/test_filter.py"]),
    M("retrieval.index.untuned", "align/retrieval/index_build.py",
      "    set_(best[name])", "    set_(values[0])", ["tests/retrieval/test_index_build.py"]),
    M("retrieval.filter.keeps_the_copy", "align/retrieval/filter.py",
      "if j > i and j not in dropped:", "if j < i and j not in dropped:", ["tests/retrieval/test_filter.py"]),
    M("retrieval.filter.cut_inclusive", "align/retrieval/filter.py",
      "for i in np.flatnonzero(scored & (scores < threshold)):",
      "for i in np.flatnonzero(scored & (scores <= threshold)):", ["tests/retrieval/test_filter.py"]),
    M("retrieval.serve.binds_everywhere", "align/retrieval/serve.py",
      "def make_server(index_dir: str, model, host: str = \"127.0.0.1\"",
      "def make_server(index_dir: str, model, host: str = \"0.0.0.0\"", ["tests/retrieval/test_serve.py"]),
]


def repo_files(root: str) -> List[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p and os.path.isfile(os.path.join(root, p))]


def copy_repo(root: str, dest: str) -> None:
    for rel in repo_files(root):
        os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(os.path.join(root, rel), os.path.join(dest, rel))


def run_tests(copy: str, tests: List[str], timeout: float) -> str:
    """'pass', 'fail' or 'timeout' for `pytest -x -q tests` run inside the copy."""
    env = dict(os.environ, PYTHONPATH=copy, PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    try:
        out = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout,
                             start_new_session=True)
    except subprocess.TimeoutExpired:
        return "timeout"
    if out.returncode == 5:       # no tests collected: a stale test id, not a kill
        return "no tests"
    return "pass" if out.returncode == 0 else "fail"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], help="run mutations whose id contains this (repeatable)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per test run (default 600)")
    ap.add_argument("--list", action="store_true", help="print the mutations and exit")
    ap.add_argument("--jobs", type=int, default=1, help="mutations tested at once, each in its own copy (default 1)")
    args = ap.parse_args(argv)
    muts = [m for m in MUTATIONS if not args.only or any(s in m.id for s in args.only)]
    if args.list:
        for m in muts:
            print(f"{m.id:48s} {m.file}  -> {' '.join(m.tests)}" + (f"  [{m.note}]" if m.note else ""))
        return 0

    t0 = time.perf_counter()
    stale = []
    for m in muts:
        text = open(os.path.join(ROOT, m.file)).read()
        if text.count(m.snippet) != 1:
            stale.append(m)
            print(f"STALE     {m.id}: snippet found {text.count(m.snippet)} times in {m.file}: {m.snippet!r}")
    todo = [m for m in muts if m not in stale]
    results = {}
    with tempfile.TemporaryDirectory(prefix="align-mutate-") as tmp:
        copies = [os.path.join(tmp, f"repo{j}") for j in range(max(1, args.jobs))]
        for c in copies:
            copy_repo(ROOT, c)
        base_tests = sorted({t for m in todo for t in m.tests})
        print(f"baseline: {len(base_tests)} test targets on the unmutated copy ...", flush=True)
        base = run_tests(copies[0], base_tests, args.timeout * 3)
        if base != "pass":
            print(f"baseline {base}: the listed tests must pass before mutating (run them: pytest {' '.join(base_tests)})")
            return 2
        print(f"baseline passed in {time.perf_counter() - t0:.0f}s", flush=True)
        free = queue.Queue()
        for c in copies:
            free.put(c)
        lock = threading.Lock()

        def one(m):
            copy = free.get()       # a copy of the repo no other job is mutating now
            try:
                path = os.path.join(copy, m.file)
                original = open(path).read()
                t1 = time.perf_counter()
                try:
                    with open(path, "w") as f:
                        f.write(original.replace(m.snippet, m.replacement, 1))
                    outcome = run_tests(copy, m.tests, args.timeout)
                finally:
                    with open(path, "w") as f:
                        f.write(original)
            finally:
                free.put(copy)
            verdict = {"pass": "SURVIVED", "fail": "killed", "timeout": "killed (timeout)",
                       "no tests": "STALE (no tests collected)"}[outcome]
            with lock:
                results[m.id] = verdict
                note = f"  [{m.note}]" if m.note else ""
                print(f"[{len(results):3d}/{len(todo)}] {verdict:16s} {m.id}  ({time.perf_counter() - t1:.0f}s){note}",
                      flush=True)

        with ThreadPoolExecutor(max_workers=len(copies)) as pool:
            list(pool.map(one, todo))
    killed = sum(v.startswith("killed") for v in results.values())
    survived = [k for k, v in results.items() if v == "SURVIVED"]
    stale_ids = [m.id for m in stale] + [k for k, v in results.items() if v.startswith("STALE")]
    print(f"\n{killed}/{len(muts)} mutations killed, {len(survived)} survived, {len(stale_ids)} stale, "
          f"in {time.perf_counter() - t0:.0f}s")
    for k in survived:
        print(f"  survived: {k}")
    for k in stale_ids:
        print(f"  stale: {k}")
    return 0 if not survived and not stale_ids else 1


if __name__ == "__main__":
    sys.exit(main())
