"""Text cleaning shared by training and serving: the raw text is kept, this is what models read.

The Rakuten texts carry HTML tags, (sometimes doubly) escaped entities, and mixed languages.
Cleaning undoes the markup and bounds the length; it does not translate or stem.
"""

from __future__ import annotations

import html
import re
import unicodedata

_TAG = re.compile(r"<[^>]{0,500}>")
_SPACE = re.compile(r"\s+")
MAX_DESCRIPTION_CHARS = 1500


def clean_text(text: str | None) -> str:
    if not text:
        return ""
    for _ in range(2):  # "&amp;eacute;" -> "&eacute;" -> "é"
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = _TAG.sub(" ", text)
    text = unicodedata.normalize("NFC", text)
    return _SPACE.sub(" ", text).strip()


def listing_text(designation: str | None, description: str | None) -> str:
    """Title then (bounded) description: the input of every text model."""
    title = clean_text(designation)
    body = clean_text(description)[:MAX_DESCRIPTION_CHARS]
    return f"{title} . {body}" if body else title
