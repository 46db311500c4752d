"""Zero-shot acc@k / mean per-class recall and retrieval recall@k, through the exact index the benchmarks search
with, against per-sample loops over float64 scores (ties to the lower row): tied class vectors and gallery rows,
one sample, one class, exactly 5 classes, k beyond the gallery, a query that is a gallery row."""
import numpy as np
import pytest

from align.bench.index import build_index, search
from align.bench.retrieval import recall_at_ks
from align.bench.zeroshot import zeroshot_metrics


def _norm(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ranked(q, g):
    """Per query the gallery rows by float64 score, best first, ties to the lower row (a plain sort)."""
    s = q.astype(np.float64) @ g.astype(np.float64).T
    return [sorted(range(len(g)), key=lambda j: (-s[i, j], j)) for i in range(len(q))]


def _plain_zeroshot(x, classes, labels):
    order = _ranked(x, classes)
    out = {"acc1": float(np.mean([o[0] == y for o, y in zip(order, labels)]))}
    if len(classes) >= 5:
        out["acc5"] = float(np.mean([y in o[:5] for o, y in zip(order, labels)]))
    per_class = []
    for c in sorted(set(labels.tolist())):
        mine = [o[0] == c for o, y in zip(order, labels) if y == c]
        per_class.append(sum(mine) / len(mine))
    out["mean_per_class_recall"] = float(np.mean(per_class))
    return out


@pytest.mark.parametrize("n,c,case", [(1, 1, "plain"), (1, 7, "plain"), (40, 5, "tied_classes"),
                                      (60, 12, "tied_classes"), (25, 3, "samples_are_classes"),
                                      (50, 9, "some_classes_absent")])
def test_zeroshot_metrics_through_the_exact_index_equal_a_per_sample_loop(n, c, case):
    rng = np.random.default_rng(n * 100 + c)
    classes = _norm(rng.standard_normal((c, 6)))
    labels = rng.integers(0, c, n)
    x = _norm(classes[labels] + 0.9 * rng.standard_normal((n, 6)))         # better than chance, not perfect
    if case == "tied_classes":                                              # two class vectors twice: exact ties
        classes[3], classes[1] = classes[2], classes[0]
    elif case == "samples_are_classes":
        x[::2] = classes[labels[::2]]
        x[1] = x[0]                                                         # and a duplicated sample
    elif case == "some_classes_absent":
        labels = np.where(labels < 4, labels, 4)
    k = min(5, c)
    _, topk = search(build_index("flat", classes), x, k)
    got = zeroshot_metrics(topk, labels, c)
    want = _plain_zeroshot(x, classes, labels)
    assert set(got) == set(want)
    for key, v in want.items():
        assert got[key] == pytest.approx(v, abs=1e-12), key
    if case == "tied_classes":          # the higher twin is never anyone's top-1 (ties go to the lower class)
        assert not np.isin(topk[:, 0], [1, 3]).any()
    if c == 5:
        assert got["acc5"] == 1.0


def _plain_recall(q, qg, g, gg, k):
    return float(np.mean([any(gg[j] == qg[i] for j in o[:k]) for i, o in enumerate(_ranked(q, g))]))


@pytest.mark.parametrize("case", ["gallery_of_three", "one_query", "tied_rows_of_other_groups", "queries_in_gallery",
                                  "captions_per_item"])
def test_recall_at_k_through_the_exact_index_equals_a_per_query_loop(case):
    rng = np.random.default_rng(len(case))
    n_g, n_q = {"gallery_of_three": (3, 20), "one_query": (30, 1)}.get(case, (40, 60))
    g = _norm(rng.standard_normal((n_g, 8)))
    gg = np.arange(n_g)
    qg = rng.integers(0, n_g, n_q)
    q = _norm(g[qg] + 1.0 * rng.standard_normal((n_q, 8)))
    if case == "tied_rows_of_other_groups":     # exact copies under another group: a tie the lower row wins
        g[20:30] = g[:10]
        q[:10] = g[:10]
        qg[:10] = np.arange(20, 30)             # the query's own item is the higher twin
    elif case == "queries_in_gallery":
        q[::3] = g[qg[::3]]
    elif case == "captions_per_item":           # a gallery of captions, several per item (any one is a hit)
        gg = rng.integers(0, 15, n_g)
        qg = rng.integers(0, 15, n_q)
    ks = (1, 2, 5, 10, 50)
    _, ids = search(build_index("flat", g), q, max(ks))
    assert ids.shape[1] == min(max(ks), n_g)
    got = recall_at_ks(ids, qg, gg, ks)
    for k in ks:
        assert got[k] == pytest.approx(_plain_recall(q, qg, g, gg, k), abs=1e-12), k
    if case == "tied_rows_of_other_groups":
        assert got[1] < 1.0 and all(ids[i, 0] == i for i in range(10))
    if n_g == 3:
        assert got[5] == got[50] == 1.0


@pytest.mark.parametrize("n,c", [(1, 1), (1, 6), (40, 5), (90, 8)])
def test_probe_classification_metrics_with_tied_scores_equal_a_per_sample_loop(n, c):
    """Linear/fusion probes' acc1, acc5, mean per-class recall: integer scores (many exact ties, which go to the
    lower class as in the zero-shot path) against a loop; acc5 NaN below 5 classes."""
    from align.bench.probes import classification_metrics
    rng = np.random.default_rng(n + c)
    scores = rng.integers(0, 3, (n, c)).astype(np.float64)
    y = rng.integers(0, c, n)
    order = [sorted(range(c), key=lambda j: (-scores[i, j], j)) for i in range(n)]
    got = classification_metrics(scores, y, c)
    assert got["acc1"] == pytest.approx(np.mean([o[0] == t for o, t in zip(order, y)]), abs=1e-12)
    if c >= 5:
        assert got["acc5"] == pytest.approx(np.mean([t in o[:5] for o, t in zip(order, y)]), abs=1e-12)
    else:
        assert np.isnan(got["acc5"])
    recalls = [np.mean([o[0] == k for o, t in zip(order, y) if t == k]) for k in sorted(set(y.tolist()))]
    assert got["mean_per_class_recall"] == pytest.approx(np.mean(recalls), abs=1e-12)
