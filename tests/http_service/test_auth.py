"""API keys: accepted only when configured and equal, never shown."""

from __future__ import annotations

from pydantic import SecretStr

from http_service.auth import ApiKeys


def test_a_configured_key_is_accepted_and_anything_else_refused():
    keys = ApiKeys(SecretStr(" first-key , second-key ,"))
    assert keys.configured
    assert keys.accepts("first-key") and keys.accepts("second-key")
    for wrong in ("", None, "first", "first-key ", "second-keyX", "FIRST-KEY"):
        assert not keys.accepts(wrong)


def test_without_configured_keys_nothing_is_accepted():
    keys = ApiKeys(SecretStr(""))
    assert not keys.configured
    assert not keys.accepts("")
    assert not keys.accepts("anything")


def test_keys_never_appear_in_the_representation():
    keys = ApiKeys(SecretStr("s3cret-value"))
    assert "s3cret" not in repr(keys) and "s3cret" not in str(keys)
