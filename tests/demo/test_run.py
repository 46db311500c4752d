"""The demo report's table: each metric on val beside the same metric on the held-out groups."""
from align.demo.run import side_by_side


def test_side_by_side_puts_heldout_next_to_val():
    val = [{"task": "zeroshot_classification", "modality": "audio", "metrics": {"acc1": 0.99, "acc5": 1.0}},
           {"task": "zeroshot_retrieval", "query": "text", "gallery": "image",
            "metrics": {"image_retrieval_recall@1": 0.5}}]
    held = [{"task": "zeroshot_classification", "modality": "audio", "metrics": {"acc1": 0.615, "acc5": 0.9}}]
    lines = side_by_side(val, held).splitlines()
    assert lines[0].split() == ["task", "modalities", "metric", "val", "held-out"]
    acc1 = next(l for l in lines if "acc1" in l).split()
    assert acc1 == ["zeroshot", "audio", "acc1", "99.00", "61.50"]
    rec = next(l for l in lines if "recall@1" in l).split()
    assert rec[-1] == "50.00"                                           # no held-out figure: blank
    assert "never heard in training" in lines[-1]
