"""Text cleaning shared by training and serving: the raw text is kept, this is what models read.

The Rakuten texts carry HTML tags, (sometimes doubly) escaped entities, and mixed languages.
Cleaning undoes the markup and bounds the length; it does not translate or stem.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass

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
    """Title then (bounded) description: what the e5 encoder reads."""
    return ListingText.of(designation, description).full


@dataclass(frozen=True)
class ListingText:
    """The cleaned title and (bounded) description of a listing, and the texts models read."""

    title: str
    body: str

    @classmethod
    def of(cls, designation: str | None, description: str | None) -> ListingText:
        return cls(clean_text(designation), clean_text(description)[:MAX_DESCRIPTION_CHARS])

    @property
    def full(self) -> str:
        return f"{self.title} . {self.body}" if self.body else self.title

    @property
    def title_weighted(self) -> str:
        """The title three times, then the description: the TF-IDF model's input. The title
        carries most of the signal; tripling it was worth +1.5 points of weighted F1 for the
        linear SVM on the held-out rows of the shared sample (0.768 -> 0.783)."""
        return f"{self.title} . {self.title} . {self.full}"
