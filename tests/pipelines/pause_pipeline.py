"""Runs one micro-batch and stops at a sink step (a test helper: the test SIGKILLs it there).

Usage: python pause_pipeline.py STEP MARKER [--read-ahead]   (STREAMREC_CONFIG names the settings)
STEP is one of beam, compute, lake, dlq, features, online, state, commit; at it, MARKER is written
and the process sleeps (``beam!`` / ``compute!`` write the marker and carry on, to be killed while
Beam runs). With ``--read-ahead`` every batch whose state is passed whole is read by the Kafka
reader process, started first (as ``--follow`` does); its pid is written to MARKER.reader.
"""

import sys
import time
from pathlib import Path

from pipelines import runner
from pipelines.runner import FeaturePipeline
from streamrec.runtime.config import get_settings

step, marker = sys.argv[1], Path(sys.argv[2])
pipeline = FeaturePipeline(get_settings(), push_online=True)
if "--read-ahead" in sys.argv[3:]:
    runner.READ_AHEAD_MIN_RECORDS = 1
    pipeline.prepare()
    marker.with_suffix(".reader").write_text(str(pipeline._reader._process.pid))


def on_step(name: str) -> None:
    if name == step.rstrip("!"):
        marker.write_text(name)
        if not step.endswith("!"):
            time.sleep(600)


pipeline.on_step = on_step
pipeline.run_once()
