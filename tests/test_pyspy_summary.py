"""tools/pyspy_summary.py: py-spy raw stacks land in the step's parts, idle threads apart."""
import importlib.util
import os

# tools/ is not a package: load the script by its path
_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "pyspy_summary.py")
_spec = importlib.util.spec_from_file_location("pyspy_summary", _PATH)
pyspy_summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pyspy_summary)
summarise = pyspy_summary.summarise

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
