"""What every section of the ladder spec is built from, the stages' own settings (the judge modes) included:
strict, frozen pydantic models (a typo is an error), and the checks of a template's placeholders and of a regex."""
from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict


def has_placeholders(v: str, *keys: str) -> str:
    for key in keys:
        if key not in v:
            raise ValueError(f"must contain {key}")
    return v


def one_group_regex(v: str, what: str) -> str:
    try:
        groups = re.compile(v).groups
    except re.error as exc:
        raise ValueError(f"is not a valid regex: {exc}") from None
    if groups < 1:
        raise ValueError(f"needs one capture group for {what}")
    return v


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
