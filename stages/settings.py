"""What every section of the ladder spec is built from, the stages' own settings (the judge modes) included:
strict, frozen pydantic models (a typo is an error), the checks of a template's placeholders and of a regex, and
templates filled in one pass (`fill`)."""
from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict


def has_placeholders(v: str, *keys: str) -> str:
    for key in keys:
        if key not in v:
            raise ValueError(f"must contain {key}")
    return v


def fill(template: str, **values: str) -> str:
    """`template` with each `{name}` of `values` replaced in one pass: text from the data is never substituted again
    (a response that writes `{second}` or `{response}` reaches the judge as written)."""
    if not values:
        return template
    pattern = "|".join(re.escape("{" + name + "}") for name in values)
    return re.sub(pattern, lambda m: values[m.group(0)[1:-1]], template)


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
