"""tools/pyspy_summary.py: py-spy raw stacks land in the step's parts, idle threads apart."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

from pyspy_summary import summarise  # noqa: E402

RAW = """\
<module> (align/cli.py:1);train (align/train/loop.py:80);train_step (align/train/step.py:90);backward (torch/_tensor.py:623) 50
<module> (align/cli.py:1);train (align/train/loop.py:80);train_step (align/train/step.py:80);encode_image (align/model.py:40);forward (open_clip/transformer.py:700) 30
<module> (align/cli.py:1);train (align/train/loop.py:80);train_step (align/train/step.py:80);encode_audio (align/model.py:44) 5
<module> (align/cli.py:1);train (align/train/loop.py:70);take (align/train/setup.py:300);get (queue.py:1) 3
run (threading.py:1);_heartbeat (align/runlock.py:50);wait (threading.py:2);Condition.wait (threading.py:3) 12
"""


def test_stacks_go_to_the_part_of_the_step_they_sit_in():
    counts, total = summarise(RAW.splitlines())
    assert total == 100
    assert counts == {"step: backward": 50, "step: forward image": 30, "step: forward audio": 5,
                      "data: waiting for a batch": 3,
                      "idle: background threads waiting (queue feeder, run-lock heartbeat, log writer)": 12}
