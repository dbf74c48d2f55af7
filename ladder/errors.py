"""Error text for people: an exception's message in one line, the form every user-facing error of a ladder takes."""
from __future__ import annotations

from typing import Optional


def first_line(exc: BaseException, limit: Optional[int] = 300) -> str:
    """An exception's message in one line (at most `limit` characters; None: all of it), else its type's name."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:limit]
