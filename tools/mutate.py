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
WRK = "tests/data/stream/test_worker.py"
ELA = "tests/data/stream/test_resume.py"
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
    M("loss.compact.given_mask_trusted_as_all_valid", "align/losses/distributed.py",
      "return GatheredBatch(list(tensors), mask, 0, n, all_valid=not given)",
      "return GatheredBatch(list(tensors), mask, 0, n, all_valid=True)", ["tests/losses/test_clip_loss.py"]),
    M("step.false_host_mask_dropped", "align/train/step.py",
      'return m.device.type == "cpu" and bool(m.all())', 'return m.device.type == "cpu"',
      ["tests/train/test_step.py"], "a mask with False rows dropped before the loss: padding scored as pairs"),
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
    M("exact.rerank_threshold_one_margin", "align/bench/exact.py",
      "thr = _down(_lo(vals[:, k - 1].double(), u) - 2 * a, u)", "thr = _down(_lo(vals[:, k - 1].double(), u) - a, u)",
      ["tests/bench/test_exact.py"]),
    M("zeroshot.classnames_sorted", "align/bench/zeroshot.py",
      "return list(names), get_templates(templates), name", "return sorted(names), get_templates(templates), name",
      ["tests/bench/test_zeroshot.py"]),
    M("probe.linear.tie_break_on_val_loss_dropped", "align/bench/probes.py",
      "best_C = min(Cs, key=lambda c: (-val_acc[c], val_loss[c], c))", "best_C = min(Cs, key=lambda c: (-val_acc[c], c))",
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
      "loader = build_loader(r, eng.core, eng.rank, eng.world, data_resume)",
      "loader = build_loader(r, eng.core, eng.rank, eng.world, None)", [RES]),
    M("resume.samples_anchor_not_restored", "align/train/optim.py", "                setattr(fn, key, saved[key])",
      "                pass", ["tests/train/test_elastic.py"]),
    M("resume.scheduler_not_restored", "align/train/setup.py",
      "restore_scheduler(eng.scheduler, saved[\"scheduler\"])", "pass", [SW + "::test_restored_scheduler_follows_the_schedule"]),
    M("resume.scheduler_from_the_checkpoint", "align/train/optim.py",
      "group[\"lr\"] = base * fn(scheduler.last_epoch)", "pass", [SW + "::test_restored_scheduler_follows_the_schedule"]),
    M("resume.rng_not_restored", "align/train/setup.py",
      "load_checkpoint(path, rank=eng.rank, restore_rng=True)", "pass",
      [RES, "tests/train/test_state.py::test_resume_restores_the_rng_states_the_checkpoint_saved"]),
    M("resume.transforms_not_seeded_per_sample", "align/data/stream/decode.py",
      "        with _GlobalRngs(seed, restore_rng):\n            return self._decode(raw, epoch, seed)\n",
      "        return self._decode(raw, epoch, seed)\n",
      [WRK + "::test_a_samples_random_transforms_do_not_depend_on_the_layout_or_a_resume"]),
    M("resume.transforms_seeded_by_the_reader", "align/data/stream/worker.py",
      "decoded = self.decoder(sample, epoch)",
      "decoded = self.decoder(dict(sample, __url__=f\"{sample[URL]}{self.rank}\"), epoch)",
      [WRK + "::test_a_samples_random_transforms_do_not_depend_on_the_layout_or_a_resume"]),
    M("elastic.plan_quota_remainder_dropped", "align/data/stream/resume.py",
      "quotas = [per + (1 if w < extra else 0) for w in range(n)]", "quotas = [per for w in range(n)]",
      [ELA + "::test_plan_quotas_keep_the_remainder_of_a_ranks_batches"],
      note="issue 19: a resume silently lost batches and still reported 0 dropped"),
    M("elastic.only_the_newest_epoch_resumed", "align/data/stream/resume.py",
      "first = min(st[\"epoch\"] for st in states)", "first = max(st[\"epoch\"] for st in states)",
      [ELA + "::test_resume_at_every_checkpoint_of_ranks_in_different_epochs"]),
    M("elastic.segmented_rest_re_dealt_on_resume", "align/data/stream/loader.py",
      "own is not None and \"segments_left\" not in own", "own is not None and \"segments\" not in own",
      [ELA + "::test_kill_and_resume_inside_a_segmented_epoch_is_bitwise"]),
    M("stream.short_last_batch_kept_in_training", "align/data/stream/worker.py",
      "        if run.pending and not self.drop_last:", "        if run.pending:",
      [WRK + "::test_training_drops_each_workers_short_last_batch_eval_keeps_it"],
      note="issue 19: no test checked that training drops it"),
    M("stream.training_rng_shifted_by_decoding", "align/data/stream/worker.py",
      "if info is not None else rng_preserving(self._stream(lw, plan))", "if True else None",
      [WRK + "::test_reading_leaves_the_training_processs_rngs_alone"]),
    M("stream.all_skipped_guard_off", "align/data/stream/worker.py",
      "if run.good == 0 and run.read >= MAX_ALL_SKIPPED:", "if False:",
      [WRK + "::test_everything_skipped_stops_ordinary_epochs_and_elastic_segments"]),
    M("media.to_mono_last_axis", "align/media/audio.py", "w = w.mean(axis=int(np.argmin(w.shape)))",
      "w = w.mean(axis=-1)", ["tests/media/test_audio.py::test_to_mono_downmixes_channels_first_and_channels_last"],
      note="issue 19: channels-first [C, T] became a C-sample wave"),
    M("resume.dataloader_seed_from_global_rng", "align/data/stream/loader.py",
      "generator=torch.Generator().manual_seed(plan.epoch), ", "",
      [WRK + "::test_reading_leaves_the_training_processs_rngs_alone", RES]),
    M("resume.auto_ignored", "align/train/setup.py",
      "return rundir.newest_checkpoint(r.output_dir)", "return None", [SW + "::test_resume_auto_none_and_path"]),
    M("preempt.not_checked", "align/train/loop.py",
      "            stop_if_preempted(eng, state, loader, r, log, preempt)\n", "",
      ["tests/train/test_preemption.py"], "issue 25: SIGTERM killed the run with no checkpoint"),
    M("runlock.not_held", "align/train/setup.py", 'if int(os.environ.get("RANK", "0")) != 0:',
      "if True:",
      ["tests/test_runlock.py::test_align_train_on_a_live_run_dir_is_refused_and_changes_no_file"],
      "issue 25: two runs on one output_dir interleaved their metrics"),
    M("shards.out_not_locked", "align/data/write/shards.py", 'with RunLock(out, what="shard job (align data shards)"):',
      "if True:", ["tests/data/write/test_shards.py::test_a_busy_out_is_refused_in_one_line_and_a_finished_job_leaves_no_lock"],
      "issue 25: two shard jobs on one --out"),
    M("val_split.not_filtered", "align/data/stream/worker.py", "            stream = self.val_split.train_filter(stream)\n",
      "            pass\n", ["tests/data/stream/test_val_split.py::test_training_never_sees_a_held_out_group_and_evaluates_on_it"],
      "issue 20: training read the held-out groups it was evaluated on"),
    M("export.best_ignored", "align/export/__init__.py", "    model = load(_default_checkpoint(model_path)).eval()",
      "    model = load(model_path).eval()",
      ["tests/data/stream/test_val_split.py::test_training_never_sees_a_held_out_group_and_evaluates_on_it"],
      "issue 20: export took the last checkpoint, not the best by the held-out metric"),
    M("text_keys.not_passed", "align/train/feed.py", "        text_keys=r.data.text_keys, hard_negatives", "        text_keys=None, hard_negatives",
      ["tests/data/stream/test_text_keys.py::test_the_recipe_key_reaches_the_training_stream"],
      "issue 22: data.text_keys was accepted and ignored"),
    M("text_keys.weights_ignored", "align/data/stream/decode.py", "    x, acc = rng.random() * sum(w for _, w, _ in have), 0.0",
      "    x, acc = rng.random() * len(have), 0.0",
      ["tests/data/stream/test_text_keys.py::test_keys_are_drawn_by_weight_and_captions_equally_over_epochs"],
      "issue 22: caption sources drawn uniformly, not by weight"),
    M("truncation.not_counted", "align/data/stream/decode.py", "            self.noted[CAPTION_TRUNCATED] += 1",
      "            pass", ["tests/data/stream/test_text_keys.py::test_captions_cut_at_the_context_length_are_counted_in_the_run_summary"],
      "issue 22: captions cut at the context length went uncounted"),
    M("long_text.not_stretched", "align/towers/open_clip_towers.py",
      "            mine[k] = stretch_positions(mine[k], v.shape[0])\n", "",
      ["tests/towers/test_open_clip_towers.py::test_long_text_from_a_pretrained_checkpoint_stretches_its_positions"],
      "issue 22: a longer context over a pretrained checkpoint failed on the positional embedding"),
    M("dataworker.death_not_deferred", "align/train/setup.py",
      "        with deferred_worker_errors():\n            yield\n", "        yield\n",
      ["tests/train/test_dataworkers.py::test_a_killed_data_worker_stops_with_one_line_and_a_checkpoint_and_resume_loses_nothing"],
      "issue 25: a SIGKILLed data worker ended the run in torch's traceback, raised mid-step"),
    M("dataworker.part_taken_step_counted", "align/train/feed.py",
      "return self._before if self._before is not None else self.loader.state_dict()",
      "return self.loader.state_dict()",
      ["tests/train/test_dataworkers.py::test_a_take_that_fails_part_way_keeps_the_last_complete_steps_data_position"]),
    M("storage.partial_checkpoint_kept", "align/train/storage.py",
      "partial=os.path.join(ckpt_dir, tmp_name(name))):", "partial=None):",
      ["tests/train/test_storage.py::test_a_full_disk_at_a_checkpoint_is_one_line_and_the_resume_logs_no_step_twice"],
      "issue 25: a full disk left .step-N.tmp behind"),
    M("storage.cut_metrics_row_kept", "align/train/storage.py", "            f.truncate(end)\n", "            pass\n",
      ["tests/train/test_storage.py::test_a_full_disk_at_a_metrics_line_is_one_line_and_cuts_the_file_back_to_whole_lines"]),
    M("checkpoint.manifest_not_verified", "align/train/rundir.py",
      "        problem = verify(ckpt)\n        if problem is None:", "        problem = None\n        if problem is None:",
      ["tests/train/test_manifest.py::test_resume_auto_falls_back_from_a_truncated_checkpoint_with_one_line"]),
    M("resume.none_ignored", "align/train/setup.py",
      "    return None if r.resume == \"none\" else r.resume\n", "    return r.resume\n",
      [SW + "::test_resume_auto_none_and_path"]),
    M("resume.path_ignored", "align/train/setup.py",
      "    return None if r.resume == \"none\" else r.resume\n", "    return None\n",
      [SW + "::test_resume_auto_none_and_path"]),
    M("resume.fresh_start_among_checkpoints", "align/train/setup.py", "    if here and not inside:\n",
      "    if False:\n", [SW + "::test_a_fresh_start_into_a_run_with_checkpoints_is_refused"]),
    M("stats.auto_sizes_from_the_first_shard", "align/data/tools/stats.py", "    k = min(len(urls), SPREAD_SHARDS)\n",
      "    k = 1\n", ["tests/data/tools/test_stats.py::"
                     "test_the_auto_sizes_read_every_shard_and_every_source_not_the_first_samples"]),
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
    M("switch.loss.type", "align/train/setup.py", "loss_fn = build_loss(r.loss.type,", "loss_fn = build_loss(\"clip\",",
      [SW + "::test_loss_type_and_temperature_init_match_a_plain_reference"]),
    M("switch.loss.pairs", "align/train/setup.py", "pairs=[tuple(p) for p in r.loss.pairs]", "pairs=[(\"image\", \"text\")]",
      [SW + "::test_loss_pairs_and_weights_through_training"]),
    M("switch.loss.weights", "align/train/setup.py", "weights = r.loss.weights or [1.0] * len(r.loss.pairs)",
      "weights = [1.0] * len(r.loss.pairs)", [SW + "::test_loss_pairs_and_weights_through_training"]),
    M("switch.loss.chunk_size", "align/train/setup.py", "{\"chunk_size\": r.loss.chunk_size}", "{\"chunk_size\": 4096}",
      [SW + "::test_chunked_clip_computes_logits_chunk_size_rows_at_a_time"]),
    # -- data.* -----------------------------------------------------------------------------------
    M("switch.data.train", "align/train/feed.py", "if r.data.train == \"synthetic\":", "if True:",
      [DSW + "::test_train_on_shards_trains_every_sample_of_an_epoch_once"]),
    M("switch.data.train.weight", "align/train/feed.py",
      "sources = [SourceSpec(urls=s) if isinstance(s, str) else SourceSpec(urls=s.urls, weight=s.weight)",
      "sources = [SourceSpec(urls=s) if isinstance(s, str) else SourceSpec(urls=s.urls, weight=1.0)", [DSW + "::test_source_weights_set_the_mix"]),
    M("switch.data.samples_per_epoch", "align/train/feed.py", "samples_per_epoch=r.data.samples_per_epoch,",
      "samples_per_epoch=None,", [DSW + "::test_samples_per_epoch_sets_the_epoch_length"]),
    M("switch.data.resampled", "align/train/feed.py", "resampled=r.data.resampled,", "resampled=False,",
      [DSW + "::test_resampled_draws_shards_with_replacement"]),
    M("switch.data.shuffle_buffer", "align/train/feed.py", "shuffle_buffer=r.data.shuffle_buffer,",
      "shuffle_buffer=1000,", [DSW + "::test_shuffle_buffer"]),
    M("switch.data.num_workers", "align/train/feed.py", "num_workers=r.data.num_workers,", "num_workers=0,",
      [DSW + "::test_num_workers_decode_in_worker_processes"]),
    M("switch.data.allow_pipe", "align/train/feed.py", "shuffle_buffer=r.data.shuffle_buffer, allow_pipe=r.data.allow_pipe,",
      "shuffle_buffer=r.data.shuffle_buffer, allow_pipe=True,",
      [DSW + "::test_installed_align_script_refuses_pipe_unless_the_recipe_allows_it"]),
    M("switch.data.max_skip_frac", "align/train/feed.py", "max_skip_frac=r.data.max_skip_frac,", "max_skip_frac=None,",
      [DSW + "::test_max_skip_frac_from_the_recipe_stops_the_run"]),
    M("switch.data.synthetic_size", "align/train/feed.py", "samples_per_epoch=r.data.synthetic_size // world",
      "samples_per_epoch=10000 // world", [SW + "::test_batch_size_epochs_and_synthetic_size"]),
    M("switch.data.synthetic_caption", "align/train/feed.py", "caption=r.data.synthetic_caption)",
      "caption=\"Dummy caption\")", [SW + "::test_synthetic_caption_is_the_text_trained_on"]),
    M("switch.data.val", "align/train/loop.py",
      "evaluate(eng, r, state.step) if r.data.val else {}", "evaluate(eng, r, state.step) if False else {}",
      [SW + "::test_eval_every_tasks_best_metric_and_batch_size"]),
    # -- train.* ----------------------------------------------------------------------------------
    M("switch.train.batch_size", "align/train/feed.py", "SyntheticLoader(model, r.train.batch_size,",
      "SyntheticLoader(model, 8,", [SW + "::test_batch_size_epochs_and_synthetic_size"]),
    M("switch.train.max_steps", "align/train/setup.py", "total_steps = r.train.max_steps\n",
      "total_steps = r.train.max_steps and r.train.max_steps + 1\n", [SW + "::test_optimizer_and_schedule_settings_reach_every_step"]),
    M("switch.train.epochs", "align/train/setup.py", "total_steps = r.train.epochs * max(", "total_steps = 1 * max(",
      [SW + "::test_batch_size_epochs_and_synthetic_size"]),
    M("switch.train.accum_steps", "align/train/loop.py", "micro = batches.take(r.train.accum_steps)",
      "micro = batches.take(1)", [SW + "::test_gradcache_gradients_equal_one_dense_large_batch_step"]),
    M("switch.train.accum_steps.gradcache_bypassed", "align/train/step.py",
      "loss = gradcache_step(embed, micro, eng.objective,",
      "loss = gradcache_step(embed, micro[:1], eng.objective,",
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
    M("switch.train.grad_clip", "align/train/step.py", "if grad_clip:", "if False:",
      [SW + "::test_grad_clip_bounds_the_applied_gradient_norm"]),
    M("switch.train.precision", "align/train/setup.py", "mp = {\"fp32\": \"no\", \"bf16\": \"bf16\", \"fp16\": \"fp16\"}[r.train.precision]",
      "mp = \"no\"", ["tests/train/test_train.py::test_bf16_autocast_runs_on_cpu"]),
    M("switch.train.precision.fp16_refusal", "align/train/setup.py", "if r.train.precision == \"fp16\" and not accel:",
      "if False:", ["tests/train/test_train.py::test_fp16_is_refused_without_a_gpu"]),
    M("switch.train.checkpoint_every", "align/train/loop.py",
      "if r.train.checkpoint_every and state.step % r.train.checkpoint_every == 0:", "if False:",
      [SW + "::test_checkpoint_every_and_keep_last"]),
    M("switch.train.keep_last", "align/train/setup.py", "        prune_checkpoints(ckpt_dir, r.train.keep_last)",
      "        prune_checkpoints(ckpt_dir, 2)", [SW + "::test_checkpoint_every_and_keep_last"]),
    M("switch.train.log_every", "align/train/metrics.py", "if state.step % self.r.train.log_every == 0",
      "if state.step % 2 == 0", [SW + "::test_log_every"]),
    M("switch.train.compile", "align/train/setup.py", "if r.train.compile:", "if False:",
      [SW + "::test_compile_trains_the_compiled_model"]),
    M("switch.train.grad_checkpointing", "align/train/setup.py", "if r.train.grad_checkpointing:", "if False:",
      [SW + "::test_grad_checkpointing_saves_fewer_activations"]),
    M("switch.train.max_bad_steps", "align/train/state.py", "if self.bad_in_row >= max_bad_steps:",
      "if self.bad_in_row >= 5:", [SW + "::test_max_bad_steps"]),
    M("switch.train.num_threads", "align/train/setup.py", "if tc.num_threads:", "if False:",
      [SW + "::test_num_threads_and_deterministic_are_applied_then_restored"]),
    M("switch.train.deterministic", "align/train/setup.py", "if tc.deterministic:", "if False:",
      [SW + "::test_num_threads_and_deterministic_are_applied_then_restored"]),
    M("switch.train.wandb_project", "align/train/metrics.py", "    if r.train.wandb_project:\n        try:",
      "    if False:\n        try:",
      ["tests/train/test_train.py::test_wandb_logging_when_enabled"]),
    M("switch.seed", "align/train/loop.py", "set_seed(r.seed)", "set_seed(0)", [SW + "::test_seed_sets_the_initial_weights"]),
    # -- eval.* -----------------------------------------------------------------------------------
    M("switch.eval.every", "align/train/loop.py", "if r.eval.every and r.data.val and", "if False and",
      [SW + "::test_eval_every_tasks_best_metric_and_batch_size"]),
    M("switch.eval.tasks", "align/train/metrics.py", "tasks=r.eval.tasks,", "tasks=[\"zeroshot\", \"retrieval\"],",
      [SW + "::test_eval_every_tasks_best_metric_and_batch_size"]),
    M("switch.eval.batch_size", "align/train/metrics.py", "batch_size=r.eval.batch_size,", "batch_size=256,",
      [SW + "::test_eval_every_tasks_best_metric_and_batch_size"]),
    M("switch.eval.best_metric", "align/train/setup.py",
      "if state.improves(eng.watch.share(results.get(r.eval.best_metric))):",
      "if state.improves(eng.watch.share(None)):",
      [SW + "::test_eval_every_tasks_best_metric_and_batch_size"]),
    # -- safety and counting ----------------------------------------------------------------------
    M("safety.weights_only_off", "align/train/checkpoint.py",
      "obj = torch.load(path, map_location=\"cpu\", weights_only=True)",
      "obj = torch.load(path, map_location=\"cpu\", weights_only=False)", ["tests/train/test_checkpoint.py"]),
    # -- checkpoints and run dirs (issue 19) --------------------------------------------------------
    # the sharded-checkpoint check looks only for the single-file model: align.load, export, init_from
    M("checkpoint.dcp_not_recognised", "align/train/rundir.py",
      "return os.path.isfile(os.path.join(path, MODEL)) or is_sharded_checkpoint(path)",
      "return os.path.isfile(os.path.join(path, MODEL))", ["tests/train/test_rundir.py"]),
    M("checkpoint.sharded_flag_ignored", "align/train/rundir.py",
      "if state is not None and \"sharded\" in state:", "if False:", ["tests/train/test_rundir.py"]),
    M("checkpoint.leftover_tmp_not_removed", "align/train/checkpoint.py",
      "        shutil.rmtree(tmp, ignore_errors=True)\n        os.makedirs(tmp)", "        os.makedirs(tmp)",
      ["tests/train/test_checkpoint.py::test_a_leftover_tmp_dir_of_the_same_step_is_replaced_by_the_next_save"]),
    M("init_from.siglip_bias_from_scale", "align/train/init_from.py",
      "model.logit_bias.copy_(scales[\"logit_bias\"].reshape(()))",
      "model.logit_bias.copy_(scales[\"logit_scale\"].reshape(()))",
      ["tests/train/test_init_from.py::test_siglip_bias_is_restored_from_the_source_bias_not_its_scale"]),
    # -- the training step (issue 19) -------------------------------------------------------------
    M("step.nan_step_counted", "align/train/state.py", "        self.bad_in_row += 1\n",
      "        self.bad_in_row += 1\n        self.step += 1\n",
      ["tests/train/test_state.py::test_a_nan_step_advances_neither_the_step_nor_the_schedule"]),
    M("step.torch_settings_not_restored", "align/train/setup.py", "        torch.set_num_threads(saved[0])\n",
      "        pass\n", [SW + "::test_num_threads_and_deterministic_are_applied_then_restored"]),
    M("step.determinism_not_restored", "align/train/setup.py",
      "        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])\n", "        pass\n",
      [SW + "::test_num_threads_and_deterministic_are_applied_then_restored"]),
    M("faults.corrupt_tar_not_counted", "align/data/stream/sources.py",
      "faults.record(CORRUPT_TAR, f\"shard {url}\", repr(exn), per_sample=False)", "pass",
      ["tests/data/write/test_custom_data_e2e.py"]),
    M("faults.counted_twice", "align/data/stream/faults.py", "self._delta[reason] += 1", "self._delta[reason] += 2",
      ["tests/data/write/test_custom_data_e2e.py"]),
    # -- RNN towers (issue 22, item 3) ------------------------------------------------------------
    M("towers.rnn.backward_reads_padding", "align/towers/rnn.py",
      "idx = torch.where(t < n, n - 1 - t, t)", "idx = x.shape[1] - 1 - t.expand(n.shape[0], -1)",
      ["tests/towers/test_rnn.py"], "the backward RNN starts at the padding (plain flip)"),
    M("towers.rnn.mean_over_padding", "align/towers/rnn.py",
      "return (x * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True)", "return x.mean(dim=1)",
      ["tests/towers/test_rnn.py"]),
    M("towers.rnn.last_pools_final_step", "align/towers/rnn.py",
      "last = x.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, h)).squeeze(1)", "last = x[:, -1, :h]",
      ["tests/towers/test_rnn.py"]),
    M("towers.rnn.lock_skips_embedding", "align/towers/rnn.py",
      "return [self.token_embedding]", "return []", ["tests/towers/test_rnn.py"],
      "lock(unlocked_groups=all) would leave the embedding frozen"),
    M("towers.rnn.checkpoint_drops_lengths", "align/towers/rnn.py",
      "x = checkpoint(layer, x, lengths, use_reentrant=False)",
      "x = checkpoint(layer, x, torch.full_like(lengths, x.shape[1]), use_reentrant=False)",
      ["tests/towers/test_rnn.py"]),
    # -- a CLI that explains itself (issue 22, item 5) --------------------------------------------
    M("cli.help.defaults_not_shown", "align/cli.py",
      'return h + " (default: %(default)s)"', "return h", ["tests/test_cli.py"]),
    M("cli.help.option_without_help", "align/cli.py",
      's.add_argument("--shard-size", type=int, default=1000, help="samples per shard")',
      's.add_argument("--shard-size", type=int, default=1000)', ["tests/test_cli.py"]),
    M("cli.help_keys.recipe_values_dropped", "align/cli.py",
      'value = f"  = {_yaml_value(set_here)}" if set_here is not dataclasses.MISSING else ""', 'value = ""',
      ["tests/test_cli.py"]),
    M("cli.recipes_show.header_dropped", "align/cli.py",
      "sys.stdout.write(f.read())", 'sys.stdout.write("".join(ln for ln in f if not ln.startswith("#")))',
      ["tests/test_cli.py"]),
    M("config.help.field_without_help", "align/config.py",
      'seed: int = _key(0, help="seed of weights, data order and augmentation")', "seed: int = 0",
      ["tests/test_config.py"]),
    M("config.help_keys.sources_skipped", "align/config_keys.py",
      'out += recipe_keys(inner, key + "[].")', "pass", ["tests/test_config.py", "tests/test_cli.py"]),
    # -- hard negatives (issue 22, item 4) --------------------------------------------------------
    M("loss.hard_negatives.mask_ignored", "align/losses/hard_negatives.py",
      'hard = hard.masked_fill(~NM[start:stop], float("-inf"))', "hard = hard",
      ["tests/losses/test_hard_negatives.py"]),
    M("loss.hard_negatives.rows_of_rank_0", "align/losses/hard_negatives.py",
      'torch.einsum("nd,nkd->nk", q, NEG[start:stop])', 'torch.einsum("nd,nkd->nk", q, NEG[:stop - start])',
      ["tests/losses/test_hard_negatives.py"], "local_loss: rank 1 scores rank 0's negatives"),
    M("loss.hard_negatives.no_grad_scale", "align/losses/hard_negatives.py",
      "a, b, neg = (scale_grad(t, self.world_size) for t in (a, b, neg))",
      "a, b = (scale_grad(t, self.world_size) for t in (a, b))", ["tests/losses/test_hard_negatives.py"]),
    M("data.negatives.not_read", "align/data/stream/decode.py",
      'out["neg"] = captions(raw[NEG_EXT]) if NEG_EXT in raw else []', 'out["neg"] = []',
      ["tests/data/stream/test_decode_negatives.py"]),
    M("data.negatives.mask_not_set", "align/data/stream/decode.py",
      'neg[i, :n], mask[i, :n] = s["neg_text"], True', 'neg[i, :n] = s["neg_text"]',
      ["tests/data/stream/test_decode_negatives.py"]),
    M("data.shards.neg_col_ignored", "align/data/write/sample.py",
      "negs = _negatives(row.values.get(job.neg_col), base, job.limits) if job.neg_col else []", "negs = []",
      ["tests/data/write/test_shards.py::test_neg_col_writes_hard_negatives_as_neg_txt"]),
    # -- issue 22: hard negatives in training, distillation -----------------------------------------
    M("train.hard_negatives.loader_off", "align/train/feed.py",
      "hard_negatives=r.loss.hard_negatives, teacher=_stored_teacher(r))", "teacher=_stored_teacher(r))",
      ["tests/train/test_train_loss_inputs.py::test_hard_negatives_join_the_loss_at_step_1"],
      "the recipe's loss.hard_negatives never reached the loader"),
    M("train.hard_negatives.not_in_loss", "align/losses/multipair.py",
      'extra = {"neg": features[NEG_TEXT], "neg_mask": (masks or {}).get(NEG_TEXT)}', "pass",
      ["tests/train/test_train_loss_inputs.py::test_hard_negatives_join_the_loss_at_step_1"],
      "the negatives were embedded but never given to the loss"),
    M("train.hard_negatives.mask_dropped", "align/train/step.py",
      "        out[NEG_TEXT] = batch[mask_key(NEG_TEXT)]\n", "        pass\n",
      ["tests/train/test_train_loss_inputs.py::test_hard_negatives_join_the_loss_at_step_1"],
      "padded negative slots scored as real negatives"),
    M("loss.distill.one_direction", "align/losses/distill.py",
      "for q, k, tq, tk in ((A, B, TA, TB), (B, A, TB, TA)):", "for q, k, tq, tk in ((A, B, TA, TB),):",
      ["tests/losses/test_distill.py"]),
    M("loss.distill.teacher_temperature", "align/losses/distill.py",
      "teacher = F.log_softmax((tq[start:stop] @ tk.T) / self.temperature, dim=1)",
      "teacher = F.log_softmax((tq[start:stop] @ tk.T), dim=1)", ["tests/losses/test_distill.py"]),
    M("loss.distill.teacher_not_gathered", "align/losses/distill.py",
      "g = gather_batch([a, b, ta, tb], mask, self.rank, self.world_size, self.gather_with_grad)\n"
      "        (A, B, TA, TB), start, stop = compact(g)",
      "g = gather_batch([a, b], mask, self.rank, self.world_size, self.gather_with_grad)\n"
      "        (A, B), start, stop = compact(g)\n        TA, TB = ta, tb",
      ["tests/losses/test_distill.py"], "each rank's teacher similarities over its own rows only"),
    M("loss.distill.local_rows", "align/losses/distill.py",
      "student = F.log_softmax(s * (q[start:stop] @ k.T), dim=1)",
      "student = F.log_softmax(s * (q[:stop - start] @ k.T), dim=1)", ["tests/losses/test_distill.py"]),
    M("train.distill.teacher_ignored", "align/train/step.py",
      "    if getattr(eng, \"teacher\", None) is None:", "    if True:",
      ["tests/train/test_train_loss_inputs.py::test_distill_online_and_stored_teachers_give_the_reference_loss_at_step_1"],
      "the frozen teacher never ran: the loss had no teacher embeddings"),
    M("train.distill.weight_ignored", "align/train/setup.py",
      "loss_opts.update(weight=r.loss.distill.weight, temperature=distill_temperature)",
      "loss_opts.update(temperature=distill_temperature)",
      ["tests/train/test_train_loss_inputs.py::test_distill_online_and_stored_teachers_give_the_reference_loss_at_step_1"],
      "loss.distill.weight ignored (the class default 1 used)"),
    M("train.distill.own_temperature_ignored", "align/train/teacher.py",
      "temperature = cfg.temperature or math.exp(-float(model.logit_scale.detach()))",
      "temperature = cfg.temperature or 0.01",
      ["tests/train/test_train_loss_inputs.py::test_distill_online_and_stored_teachers_give_the_reference_loss_at_step_1"]),
    M("data.stored_teacher.wrong_member", "align/data/stream/stored_teacher.py",
      "out[PREFIX + m] = torch.from_numpy(v.astype(np.float32))",
      "out[PREFIX + m] = torch.from_numpy(v.astype(np.float32)).flip(0)",
      ["tests/train/test_train_loss_inputs.py::test_distill_online_and_stored_teachers_give_the_reference_loss_at_step_1"]),
    M("data.reinforce.wrong_row", "align/data/write/reinforce.py",
      "np.save(buf, np.asarray(embs[m][row], dtype=np.float32), allow_pickle=False)",
      "np.save(buf, np.asarray(embs[m][0], dtype=np.float32), allow_pickle=False)",
      ["tests/data/write/test_reinforce.py"], "every sample stored the first sample's teacher embedding"),
    M("train.hard_negatives.gradcache_masks", "align/train/gradcache.py",
      "t.dim() == 0 or t.shape[0] != n:", "t.shape != (n,):",
      ["tests/train/test_train_loss_inputs.py::test_hard_negatives_under_gradcache_give_the_same_step_1_loss"],
      "GradCache refused the [b, K] mask of the negatives"),
    # -- retrieval app (issue 21) -----------------------------------------------------------------
    M("retrieval.embed.resume_ignores_markers", "align/retrieval/embed.py",
      "    if not (os.path.isfile(p) and os.path.isfile(os.path.join(out_dir, f\"{part}.parquet\"))):",
      "    if True:", ["tests/retrieval/test_embed.py"]),
    M("retrieval.embed.no_renormalise", "align/retrieval/embed.py",
      "    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)", "    pass",
      ["tests/retrieval/test_filter.py"]),
    M("retrieval.index.untuned", "align/retrieval/index_build.py",
      "    set_(best[name])", "    set_(values[0])", ["tests/retrieval/test_index_build.py"]),
    M("retrieval.index.reload_without_rerank", "align/retrieval/search.py",
      "        if settings.get(\"refine\"):", "        if False:", ["tests/retrieval/test_index_build.py"]),
    M("bench.embed.batch_as_a_list", "align/bench/embed.py",
      "    if good and len({tuple(t.shape) for t in good}) == 1:", "    if False:", ["tests/bench/test_embed.py"]),
    M("bench.embed.skips_uncounted", "align/bench/embed.py",
      "            skipped += len(errs)", "            skipped += 0", ["tests/bench/test_embed.py"]),
    M("bench.index.list_major_wrong_query", "align/bench/index.py",
      "qt[torch.from_numpy(pairs // p)]", "qt[torch.from_numpy(pairs % p)]", ["tests/bench/test_index.py"]),
    M("retrieval.filter.keeps_the_copy", "align/retrieval/filter.py",
      "if j > i and j not in dropped:", "if j < i and j not in dropped:", ["tests/retrieval/test_filter.py"]),
    M("retrieval.filter.cut_inclusive", "align/retrieval/filter.py",
      "for i in np.flatnonzero(scored & (scores < threshold)):",
      "for i in np.flatnonzero(scored & (scores <= threshold)):", ["tests/retrieval/test_filter.py"]),
    M("retrieval.serve.binds_everywhere", "align/retrieval/serve.py",
      "def make_server(index_dir: str, model, host: str = \"127.0.0.1\"",
      "def make_server(index_dir: str, model, host: str = \"0.0.0.0\"", ["tests/retrieval/test_serve.py"]),
    # -- sweep (align/sweep): pruning stops the run; the space is checked by the recipe; choices map back ----
    M("sweep.prune.never_stops", "align/sweep/trial.py",
      "if rc is None and trial.should_prune():", "if rc is None and False:", ["tests/sweep/test_study.py"]),
    M("sweep.space.values_unchecked", "align/sweep/space.py",
      "            parse_recipe(data)", "            pass", ["tests/sweep/test_space.py"]),
    M("sweep.choice.label_not_value", "align/sweep/space.py",
      "return self.values[self.labels.index(stored)] if self.kind == \"choice\" else stored", "return stored",
      ["tests/sweep/test_space.py"]),
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
