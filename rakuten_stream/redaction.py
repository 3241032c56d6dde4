"""Masking secrets in anything printed: settings, doctor's targets, log lines, error messages.

One function, :func:`redact`, for all of them. It masks, wherever they appear in a text:

- the password of a URL's user info: ``scheme://user:pw@``, ``scheme://:pw@`` (empty user);
  for Redis URLs a user info without a colon too (``redis://pw@host``: Redis before ACLs had
  passwords only, and clients send it as one);
- query parameters and ``key=value`` pairs (libpq keyword DSNs, JAAS configs) whose name says
  secret: password, passwd, pwd, secret, token, sslpassword, api_key, credential, ...;
- ``"name": "value"`` pairs of such names (a JSON or dict rendering).

:func:`redact_mapping` masks the values of secret-named keys of a mapping (``kafka_extra``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

_SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token", "credential", "apikey", "api_key", "api-key",
                 "access_key", "private_key", "key.password", "jaas", "oauthbearer.config", "auth")
#: a name (query parameter, keyword, dict key) whose value is a secret
_SECRET_NAME = r"[\w.\-]*(?:" + "|".join(re.escape(w) for w in _SECRET_WORDS) + r")[\w.\-]*"

# scheme://[user]:password@  and, for redis, scheme://password@ (no colon)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][\w+.\-]*://[^\s:/@?#]*):(?P<secret>[^\s/?#]*)@")
_REDIS_USERINFO = re.compile(r"(?P<head>\brediss?(?:\+\w+)?://)(?P<secret>[^\s:/@?#]+)@", re.IGNORECASE)
# ?password=x&...  ;password=x  password=x (libpq keywords)  password='x y'
_PAIR = re.compile(r"(?P<head>(?:^|(?<=[\s?&;,{(]))" + _SECRET_NAME + r"\s*=\s*)"
                   r"(?P<secret>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,)}]*)", re.IGNORECASE)
# "password": "x"  'sasl.password': 'x'
_QUOTED = re.compile(r"(?P<head>([\"'])" + _SECRET_NAME + r"\2\s*:\s*)"
                     r"(?P<secret>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    return re.fullmatch(_SECRET_NAME, name, re.IGNORECASE) is not None


def redact(text: str) -> str:
    """``text`` with every password, token and secret-named value replaced by ``***``."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    text = _REDIS_USERINFO.sub(lambda m: m[0] if m["secret"] == MASK else f"{m['head']}{MASK}@", text)
    text = _PAIR.sub(lambda m: f"{m['head']}{MASK}", text)
    return _QUOTED.sub(lambda m: f"{m['head']}\"{MASK}\"", text)


def redact_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with secret-named keys masked and every string value passed through :func:`redact`."""
    return {key: MASK if is_secret_name(key) else redact(value) if isinstance(value, str) else value
            for key, value in values.items()}


class RedactingFilter(logging.Filter):
    """Masks secrets in log records (message, arguments and exception text) before any handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[0] is not None:
            # the traceback as redacted text; handlers then print exc_text instead of rendering exc_info
            record.exc_text = redact(record.exc_text or logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
