"""`align sweep`: recipe settings chosen by the held-out val metric, with Optuna (pip install 'align-clip[sweep]').

  space   SPACE.yaml: dotted recipe keys -> distributions, checked against the recipe's schema (align.config)
  trial   one trial: a run dir trained by `align train` in a child process; eval.jsonl watched, SIGTERM to prune
  study   the Optuna study and its storage (SQLite by default, any RDB URL), the loop, kill-and-rerun resume
  report  the summary table (console, CSV, Markdown) and the plot of the metric against each setting

At the app layer: it imports align.config and align.train's run-dir names and val-set checks; only
align.cli imports it. `from align.sweep import run_sweep` (lazy: importing the package imports no Optuna).
"""


def __getattr__(name):
    if name == "run_sweep":
        from align.sweep.study import run_sweep
        return run_sweep
    raise AttributeError(f"module 'align.sweep' has no attribute {name!r}")
