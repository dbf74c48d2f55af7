"""A decision on a model version as MLflow records it: the status tags (who, when, why), the aliases that move
with it, and the gate's verdict written before the decision and read back by a controller restarted after it."""
from __future__ import annotations

import getpass
import time
from dataclasses import dataclass
from typing import Optional

from ladder.progress import bounded
from ladder.registry.tracking import TAG_MAX_CHARS
from ladder.registry.tags import Tag

DECISION_ALIASES = ("judge", "champion")  # the aliases a promotion sets and a rejection takes back


@dataclass(frozen=True)
class Verdict:
    """The gate's verdict on a candidate, as recorded on its version."""
    passed: bool
    reason: str
    auc: Optional[float]  # the candidate's AUC as a judge


def promote(reg, version: str, by: str, reason: str) -> None:
    """The aliases move first: a waiting controller acts on the status tag, and must then find the new judge."""
    reg.version(version)
    reg.fenced()  # a controller whose lease was taken over moves no alias
    for alias in DECISION_ALIASES:
        reg.client.set_registered_model_alias(reg.name, alias, version)
    record_decision(reg, version, "promoted", by, reason)


def reject(reg, version: str, by: str, reason: str) -> None:
    """Where `version` holds `judge` or `champion` (an auto-promotion rejected by hand), they go back to the last
    promoted version before it, or are removed when there is none; the move is recorded on the version. As in
    `promote`, the aliases move before the status tag."""
    reg.version(version)
    moved = withdraw_aliases(reg, version)
    record_decision(reg, version, "rejected", by, reason, {Tag.ALIASES_MOVED: moved} if moved else {})


def withdraw_aliases(reg, version: str) -> str:
    """Move `judge`/`champion` off `version` (see `reject`); what was done, in words ("" when nothing)."""
    held = [a for a in DECISION_ALIASES if reg.aliases().get(a) == version]
    if not held:
        return ""
    reg.fenced()
    earlier = [v for v in reg.versions() if int(v.version) < int(version) and v.tags.get(Tag.STATUS) == "promoted"]
    for alias in held:
        if earlier:
            reg.client.set_registered_model_alias(reg.name, alias, str(earlier[-1].version))
        else:
            reg.client.delete_registered_model_alias(reg.name, alias)
    names = " and ".join(held)
    return f"{names} moved back to v{earlier[-1].version}" if earlier else \
        f"{names} removed (no promoted version before v{version})"


def record_decision(reg, version: str, status: str, by: str, reason: str, extra: Optional[dict] = None) -> None:
    """Who decided, when and why, then the status (written last: it is what a controller acts on)."""
    who = by if by != "human" else f"human:{getpass.getuser()}"
    for key, value in {**(extra or {}), Tag.DECIDED_BY: who,
                       Tag.DECIDED_AT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       Tag.REASON: bounded(reason, TAG_MAX_CHARS) or "-", Tag.STATUS: status}.items():
        reg.client.set_model_version_tag(reg.name, version, key, value)
    reg.describe(version)


def gate_tags(gate) -> dict[str, str]:
    """The version tags of a `GateResult`, the verdict (`ladder.gate`) last: a version with it has them all."""
    return {Tag.GATE_RULE: gate.rule, Tag.GATE_REASON: gate.reason,
            Tag.JUDGE_ACCURACY: f"{gate.candidate.accuracy:.4f}", Tag.JUDGE_AUC: f"{gate.candidate.auc:.4f}",
            Tag.GATE: "pass" if gate.passed else "fail"}


def recorded_gate(tags: dict[str, str]) -> Optional[Verdict]:
    """The verdict in a version's tags, or None when the gate has not finished on it."""
    if tags.get(Tag.GATE) not in ("pass", "fail"):
        return None
    auc = tags.get(Tag.JUDGE_AUC)
    return Verdict(tags[Tag.GATE] == "pass", tags.get(Tag.GATE_REASON, ""), float(auc) if auc else None)
