"""Result tables: fractions (accuracy, recall) in %, counts and hyperparameters as they are."""
import pytest

from align.bench import BENCHMARKS
from align.bench.report import is_fraction, markdown_table, summary_line, write_markdown

# every metric a shipped runner names that is NOT a fraction of items
NOT_FRACTIONS = {"best_C", "n_components", "reg", "n_train", "n_test", "mean_canonical_corr"}


@pytest.mark.parametrize("name", sorted(BENCHMARKS.names()))
def test_every_runner_metric_is_classified(name):
    """A runner's metric names (its metric_keys) are fractions unless they are counts / hyperparameters: a new
    metric name has to be placed on one side, not multiplied by 100 by default."""
    keys = getattr(BENCHMARKS.get(name), "metric_keys", None)
    if keys is None:
        pytest.skip(f"{name} declares no metric names")
    for k in keys({}):
        assert is_fraction(k) == (k not in NOT_FRACTIONS), k


def test_counts_and_hyperparameters_are_not_scaled(tmp_path):
    r = {"dataset": "d", "model": "m", "pretrained": "p", "task": "cca_retrieval",
         "metrics": {"image_retrieval_recall@1": 0.25, "mean_canonical_corr": 0.5, "n_components": 12.0,
                     "reg": 0.001, "n_train": 300.0, "n_test": 40.0}}
    lp = {"dataset": "d", "model": "m", "pretrained": "p", "task": "linear_probe",
          "metrics": {"acc1": 0.5, "mean_per_class_recall": 0.125, "best_C": 3.16}}
    fu = {"dataset": "d", "model": "m", "pretrained": "p", "task": "fusion_probe",
          "metrics": {"image+audio (concat)/acc1": 0.75}}
    md = markdown_table([r, lp, fu])
    for metric, cell in (("image_retrieval_recall@1", "25.00"), ("mean_canonical_corr", "0.5"),
                         ("n_components", "12"), ("reg", "0.001"), ("n_train", "300"), ("n_test", "40"),
                         ("acc1", "50.00"), ("mean_per_class_recall", "12.50"), ("best_C", "3.16"),
                         ("image+audio (concat)/acc1", "75.00")):
        assert f"| {metric} | {cell} |" in md, (metric, md)
    assert "acc1=50.00, mean_per_class_recall=12.50" in summary_line(lp)
    write_markdown([r], str(tmp_path / "results.md"))
    assert "| n_train | 300 |" in (tmp_path / "results.md").read_text()


def test_a_second_result_on_one_dataset_gets_rows_of_its_own():
    """Two suite entries on one dataset (other templates, another index), two models: before, the second entry's
    numbers overwrote the first's cells (acc1 20.00 / 30.00 vanished from results.md without a word)."""
    def res(model, acc1):
        return {"dataset": "cls", "model": model, "pretrained": "p", "task": "zeroshot_classification",
                "modality": "image", "metrics": {"acc1": acc1}}

    table = markdown_table([res("a", 0.2), res("a", 0.25), res("b", 0.3), res("b", 0.35)])
    rows = [line for line in table.splitlines() if "acc1" in line]
    assert rows == ["| cls | zeroshot_classification | image | acc1 | 20.00 | 30.00 |",
                    "| cls #2 | zeroshot_classification | image | acc1 | 25.00 | 35.00 |"]
    one = markdown_table([res("a", 0.2), {**res("a", 0.5), "modality": "audio"}])   # other settings: one row each
    assert "| cls | zeroshot_classification | audio | acc1 | 50.00 |" in one and "#2" not in one


def test_the_mean_over_datasets_counts_each_dataset_once_and_no_model_short_of_one():
    """results.md's mean table against a plain mean: per (task, modalities, metric) two or more datasets report;
    a model lacking one of them gets '-', and a dataset's second result (#2) does not enter the mean."""
    import random
    rng = random.Random(0)

    def res(ds, model, acc1, modality="image"):
        return {"dataset": ds, "model": model, "pretrained": "p", "task": "zeroshot_classification",
                "modality": modality, "metrics": {"acc1": acc1, "n_test": 40.0}}

    a = {d: rng.random() for d in ("x", "y", "z")}
    b = {d: rng.random() for d in ("x", "y")}                     # b has no result on z (a failed entry)
    results = [res(d, "a", v) for d, v in a.items()] + [res(d, "b", v) for d, v in b.items()]
    results += [res("x", "a", 0.99), res("solo", "a", 0.5, "audio")]      # a second result on x; one audio set
    from align.bench.report import mean_table
    table = mean_table(results)
    assert table.splitlines()[2:] == [f"| zeroshot_classification | image | acc1 | 3 | {100 * sum(a.values()) / 3:.2f} | - |"]
    assert mean_table([res("x", "a", 0.5)]) == ""                  # one dataset: no mean table
    assert mean_table([res("x", "a", 0.2), res("y", "a", 0.6)]).splitlines()[2] == \
        "| zeroshot_classification | image | acc1 | 2 | 40.00 |"
