"""harness.orchestration.ray_noise: Ray's internal warnings explained once and dropped with their tracebacks;
plain code that imports without Ray."""

import subprocess
import sys

from harness.orchestration import ray_noise


def test_ray_noise_is_explained_once_and_dropped_with_its_traceback():
    explained = set()
    lines = ["[cma lam=0.1] epoch 1/2 loss 1.0", "Failed to query Ray Train Controller actor state. State API ...",
             "PreemptionWatcher poll failed", "Traceback (most recent call last):", '  File "x.py", line 1',
             "ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready.",
             "[cma lam=0.1] epoch 2/2 loss 0.9"]
    kept, notes = ray_noise.without_ray_noise(lines, explained)
    assert kept == ["[cma lam=0.1] epoch 1/2 loss 1.0", "[cma lam=0.1] epoch 2/2 loss 0.9"]
    assert len(notes) == 2 and "dashboard" in notes[0]
    again, more = ray_noise.without_ray_noise(lines[1:2], explained)
    assert again == [] and more == []  # once only


def test_a_warning_split_across_two_records_is_dropped_whole():
    lines = ["Failed to query Ray Tra", "in Controller actor state. State API may be temporarily unavailable. "
             "Continuing to monitor.", "Failed", "[flyp] epoch 1/3 loss 2.0"]
    kept, notes = ray_noise.without_ray_noise(lines, set())
    assert kept == ["Failed", "[flyp] epoch 1/3 loss 2.0"] and len(notes) == 1  # a short line is not a head


def test_it_needs_no_ray():
    code = "import sys; sys.modules['ray'] = None; import harness.orchestration.ray_noise"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
