"""The published JSON Schema of the event contract, generated from features/events.py."""

from __future__ import annotations

import json
from pathlib import Path

from features.events import SCHEMA_VERSION, event_json_schema

SCHEMA_FILE = Path(__file__).parent / f"events.v{SCHEMA_VERSION}.json"


def render_schema() -> str:
    return json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"


def write_schema(path: Path | None = None) -> Path:
    target = path or SCHEMA_FILE
    target.write_text(render_schema())
    return target
