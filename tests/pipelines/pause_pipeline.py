"""Runs one micro-batch and stops at a sink step (a test helper: the test SIGKILLs it there).

Usage: python pause_pipeline.py STEP MARKER   (STREAMREC_CONFIG names the settings)
STEP is one of beam, lake, dlq, features, state, commit; at it, MARKER is written and the process
sleeps (``beam!`` writes the marker and carries on, to be killed while Beam runs).
"""

import sys
import time
from pathlib import Path

from pipelines.runner import FeaturePipeline
from streamrec.config import get_settings

step, marker = sys.argv[1], Path(sys.argv[2])
pipeline = FeaturePipeline(get_settings(), push_online=True)


def on_step(name: str) -> None:
    if name == step.rstrip("!"):
        marker.write_text(name)
        if not step.endswith("!"):
            time.sleep(600)


pipeline.on_step = on_step
pipeline.run_once()
