"""The checked-in JSON Schema files are exactly what the pydantic contracts generate."""

from schemas.json_schema import JSON_DIR, render_all


def test_checked_in_json_schemas_match_the_models():
    rendered = render_all()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in JSON_DIR.glob("*.json")}
    assert set(on_disk) == set(rendered), "run `python -m schemas.json_schema` and commit the files"
    for name, text in rendered.items():
        assert on_disk[name] == text, f"{name} is stale: run `python -m schemas.json_schema`"
