"""JSON Schema files generated from the pydantic contracts (``python -m schemas.json_schema``).

The checked-in files under ``schemas/json/`` are what non-Python producers and consumers read;
a test fails when they and the models disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

from schemas import MESSAGE_TYPES

JSON_DIR = Path(__file__).parent / "json"


def render_all() -> dict[str, str]:
    """File name -> JSON Schema text, one per topic."""
    out = {}
    for model in MESSAGE_TYPES:
        schema = model.model_json_schema()
        schema["$id"] = f"urn:rakuten-stream:{model.TOPIC}"
        schema["title"] = model.TOPIC
        out[f"{model.TOPIC}.json"] = json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return out


def write_all(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all():
        print(path)
