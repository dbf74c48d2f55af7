"""Stop requests of a ladder, as MLflow keeps them: a stop asked through Ray is saved before it is acted on (a
controller restarted by Ray reads it back), `ladder stop` from any process is read by polling, and a graceful stop
followed by `stop --now` escalates."""
from __future__ import annotations


def record(ctl, now: bool) -> None:
    """Save a stop asked of the controller itself (Ray, Ctrl-C, `ray job stop`) as the job's stop request, before
    it is acted on; `now` is never taken back by a later graceful one. Best effort: MLflow may be what failed."""
    registry, p = getattr(ctl, "registry", None), ctl.progress
    if registry is None or not p.parent_run:
        return
    try:
        registry.request_stop(p.parent_run, now or ctl.aborted())
    except Exception:  # the stop is acted on all the same
        pass


def act_on(ctl, request) -> None:
    """A request read from MLflow: a first one stops the ladder; "now" after a graceful one escalates."""
    if request == "now" and not ctl.aborted():
        ctl.stop(now=True, saved=True)
    elif request and not ctl.stopping():
        ctl.stop(now=False, saved=True)


def watch(ctl, done, poll_s: float = 2.0) -> None:
    """Stop requests written to MLflow by `ladder stop` (which may have no Ray connection), until `done`."""
    while not done.wait(poll_s):
        try:
            request = ctl.registry.stop_request(ctl.progress.parent_run)
        except Exception:  # MLflow briefly unreachable: ask again at the next poll
            continue
        act_on(ctl, request)
