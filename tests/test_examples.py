"""The examples run as a newcomer runs them: one command each."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_the_example_trains_a_listener_that_beats_a_random_one():
    """examples/ddcl_goal.py, the newcomer's one command, in a tiny version: 150 updates
    of 64 episodes already find the frequent goals (about 0.5 against 0.2 for a random
    listener); the real bits it prints are positive and below float32's."""
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "ddcl_goal.py"), "--updates", "150", "--batch", "64",
                        "--eval-episodes", "512"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    success, silenced, random = map(float, re.search(
        r"success ([\d.]+) \(messages silenced ([\d.]+), random listener ([\d.]+)\)", r.stdout).groups())
    assert success > random + 0.2, r.stdout
    together, alone = map(float, re.search(r"per message: ([\d.]+) with each step.*, ([\d.]+) with each message alone",
                                           r.stdout).groups())
    assert 0 < together < 32 and 0 < alone <= 33, r.stdout


def test_the_examples_help_documents_every_hyperparameter():
    """Each field of the example's one dataclass is a flag whose help is its one-line doc."""
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "ddcl_goal.py"), "--help"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT, check=True)
    flags = re.findall(r"^  (--[\w-]+) \S+\s+(\S.*)?$", r.stdout, re.M)
    assert len(flags) == 14 and all(doc and not doc.startswith("(default") for _, doc in flags), r.stdout
