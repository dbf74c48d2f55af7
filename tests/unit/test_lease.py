"""One controller per ladder: a lease on the job's parent run in MLflow, renewed by the live controller. A second
controller (another `run`, `submit` or `resume`, on any machine and any Ray) is refused in one line naming where
the ladder runs; a stale lease is taken over; of two taken at once, one wins; commands that open a new store at
once all get its one experiment. Real MLflow on SQLite, no Ray."""
import threading
import time

import pytest

from ladder.control.lease import LeaseHeld, LeaseKeeper, check_free
from ladder.registry.tags import Tag
from ladder.progress import Phase, State


def parent(registry, job: str) -> str:
    return registry.client.create_run(registry.experiment_id, tags={"ladder.kind": "ladder", "ladder.job": job}) \
        .info.run_id


def keeper(registry, job, **kw):
    kw.setdefault("settle_s", 0.1)
    return LeaseKeeper(registry, parent(registry, job), job, f"token-{job}", f"job {job} on hostA, pid 7{len(job)}",
                       **kw)


def test_a_fresh_lease_refuses_a_second_controller_in_one_line_naming_where(registry):
    first = keeper(registry, "j1", renew_s=0.2, stale_after_s=2.0)
    first.acquire()
    with pytest.raises(LeaseHeld) as err:  # another `ladder run` of the same name: another job, same ladder
        keeper(registry, "j2", renew_s=0.2, stale_after_s=2.0).acquire()
    assert str(err.value).startswith(f"ladder {registry.name!r} is already running: job j1 on hostA, pid 72 (its "
                                     "lease is renewed every ") and "\n" not in str(err.value)
    with pytest.raises(LeaseHeld, match="job j1 on hostA"):
        check_free(registry)  # what `run`, `submit` and `resume` ask before they start anything
    first.release()
    check_free(registry)  # released at the controller's end: free again
    assert registry.client.get_run(first.parent_run).data.tags[Tag.LEASE] == ""


def test_the_live_controller_renews_its_lease_and_a_stale_one_is_taken_over(registry):
    live = keeper(registry, "j1", renew_s=0.2, stale_after_s=0.6)
    live.acquire()
    time.sleep(1.0)  # renewed meanwhile: still fresh
    with pytest.raises(LeaseHeld):
        keeper(registry, "j2", stale_after_s=0.6).acquire()
    live.release()
    lost = threading.Event()
    gone = keeper(registry, "j3", renew_s=0.3, stale_after_s=0.6, on_lost=lost.set)
    gone.acquire()
    gone._released.set()  # its process died: no more renewals
    time.sleep(0.8)
    taker = keeper(registry, "j4", stale_after_s=0.6)
    taker.acquire()  # stale: taken over
    with pytest.raises(LeaseHeld, match="job j4"):
        check_free(registry, stale_after_s=0.6)  # the new holder's, the stale one no longer counts
    taker.release()


def test_a_controller_that_lost_its_lease_stops(registry):
    lost = threading.Event()
    slow = keeper(registry, "j1", renew_s=0.3, stale_after_s=5, on_lost=lost.set)
    slow.acquire()
    registry.client.set_experiment_tag(registry.experiment_id, Tag.FENCE, '{"generation": 99, "token": "other"}')
    assert lost.wait(5)
    slow.release()


def acquire_at_once(keepers) -> tuple[list, list]:
    """Every keeper acquires at the same moment (a thread each, past a barrier); (who won, who was refused)."""
    barrier, won, refused = threading.Barrier(len(keepers)), [], []

    def take(k):
        barrier.wait()
        try:
            k.acquire()
            won.append(k)
        except LeaseHeld:
            refused.append(k)
    threads = [threading.Thread(target=take, args=(k,)) for k in keepers]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return won, refused


def test_of_two_leases_taken_at_once_one_wins(registry):
    # renewed every 0.3 s: one that sees the other's lease first watches it beat (alive: refused) within a
    # renewal, not the default's 30 s (the test took 4 to 35 s with those)
    for round_ in range(4):
        keepers = [keeper(registry, f"r{round_}{i}", settle_s=1.0, renew_s=0.3, stale_after_s=2.0) for i in range(2)]
        won, refused = acquire_at_once(keepers)
        assert len(won) == 1 and len(refused) == 1, round_
        won[0].release()


def controller(registry, resume=False):
    from ladder.control.controller import LadderController
    from ladder.spec import parse_spec

    spec = parse_spec({"name": registry.name, "student": {"base": "m"},
                       "judge": {"initial": {"kind": "model", "path": "m"}}, "task": {"source": {"kind": "builtin"}}})
    ctl = LadderController(spec, job="job", resume=resume)
    ctl.registry = registry
    ctl.prepare = lambda: None
    return ctl


@pytest.fixture
def quick_leases(monkeypatch):
    """The controller's lease timings, short: renewed every 0.2 s, stale after 1 s unchanged."""
    from ladder.control import lease

    monkeypatch.setattr(lease, "RENEW_S", 0.2)
    monkeypatch.setattr(lease, "STALE_AFTER_S", 1.0)
    monkeypatch.setattr(lease, "SETTLE_S", 0.1)


def test_a_controller_refused_by_a_live_lease_trains_nothing_and_writes_nothing_of_the_live_job(registry,
                                                                                                 quick_leases,
                                                                                                 monkeypatch):
    from ladder.control import lease

    # nothing here waits for a lease to go stale: 10 s, so that a renewal delayed by a loaded machine (a full
    # unit run beside engines) cannot make the live lease look stale to the refused controller
    monkeypatch.setattr(lease, "STALE_AFTER_S", 10.0)
    live = keeper(registry, "live", renew_s=0.2, stale_after_s=10.0)
    live.acquire()
    trained = []
    ctl = controller(registry)
    ctl.HANDLERS = {Phase.TRAIN: lambda c, p: trained.append(1) or p.to(phase=Phase.DONE, state=State.COMPLETED)}
    final = ctl.run()
    assert trained == [] and final["state"] == "failed" and "is already running: job live on hostA" in final["error"]
    assert registry.load_progress() is None  # the refused job saved no progress
    live.release()
    ok = controller(registry)  # the live one ended: the next one runs, and releases its lease at its end
    ok.HANDLERS = {Phase.TRAIN: lambda c, p: trained.append(1) or p.to(phase=Phase.DONE, state=State.COMPLETED)}
    assert ok.run()["state"] == "completed" and trained == [1]
    check_free(registry)


def test_run_submit_and_resume_refuse_a_ladder_whose_lease_is_fresh(registry, mlflow_store):
    from ladder.cli.remote import LadderAccess, resumable
    from ladder.control.lease import refuse_if_running
    from ladder.progress import Progress
    from cluster.connect import Address
    from ladder.spec import parse_spec

    live = keeper(registry, "live")
    registry.save_progress(Progress(registry.name, "live", state=State.STOPPED, parent_run=live.parent_run))
    live.acquire()  # e.g. resumed meanwhile on a cluster, its progress not yet saved as running
    spec = parse_spec({"name": registry.name, "student": {"base": "m"}, "mlflow": {"tracking_uri": mlflow_store[0]},
                       "judge": {"initial": {"kind": "model", "path": "m"}}, "task": {"source": {"kind": "builtin"}}})
    with pytest.raises(LeaseHeld, match="already running: job live on hostA"):
        refuse_if_running(spec)  # `run` and `submit`
    with pytest.raises(LeaseHeld, match="already running: job live on hostA"):
        resumable(registry.name, LadderAccess(mlflow_store[0], Address(None)))  # `resume`
    live.release()
    refuse_if_running(spec)


def test_stop_of_a_local_ladder_whose_process_is_gone_returns_at_once(registry, mlflow_store, tmp_path):
    from ladder.cli.remote import LadderAccess, request_stop, status
    from ladder.progress import Progress
    from cluster.connect import Address
    from ladder.spec import parse_spec

    spec = parse_spec({"name": registry.name, "student": {"base": "m"}, "workdir": str(tmp_path),
                       "judge": {"initial": {"kind": "model", "path": "m"}}, "task": {"source": {"kind": "builtin"}}})
    run = parent(registry, "gone")
    registry.save_spec(run, spec)
    registry.save_progress(Progress(registry.name, "gone", state=State.RUNNING, parent_run=run, rung=2, step=7))
    where = LadderAccess(mlflow_store[0], Address(None))
    lease = LeaseKeeper(registry, run, "gone", "t", "job gone on hostA, pid 1")
    lease.acquire()  # while its controller renews the lease, the ladder counts as alive ...
    assert status(registry.name, where)["live"] is True
    lease._released.set()
    registry.client.set_tag(run, Tag.LEASE, "")  # ... its process died: the lease is gone (or stale)
    t0 = time.monotonic()
    out = request_stop(registry.name, where, timeout_s=20)
    assert time.monotonic() - t0 < 5 and out["state"] == "stopped" and (out["rung"], out["step"]) == (2, 7)
    assert registry.load_progress("gone").state is State.STOPPED  # `resume` goes on from there


def test_status_of_a_local_job_whose_process_died_says_it_died(registry, mlflow_store, tmp_path):
    """Issue 35, 10: a local background job SIGKILLed (its lease gone with it) stayed `running` in `ladder status`
    for ever (live unknown); the pid recorded for the submission its progress names says it died."""
    import json
    import os
    import subprocess
    import sys

    from ladder.cli.remote import LadderAccess, status
    from ladder.progress import Progress
    from cluster.connect import Address
    from cluster.submit import local_record
    from ladder.spec import parse_spec

    spec = parse_spec({"name": registry.name, "student": {"base": "m"}, "workdir": str(tmp_path),
                       "judge": {"initial": {"kind": "model", "path": "m"}}, "task": {"source": {"kind": "builtin"}}})
    run = parent(registry, "dies")
    registry.save_spec(run, spec)
    registry.save_progress(Progress(registry.name, "dies", state=State.RUNNING, parent_run=run, submission="local-1"))
    where, record = LadderAccess(mlflow_store[0], Address(None)), local_record(spec)
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"pid": os.getpid(), "job": "dies", "log": "x", "submission": "local-1"}))
    assert status(registry.name, where)["state"] == "running"  # its process runs
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record.write_text(json.dumps({"pid": dead.pid, "job": "dies", "log": "x", "submission": "local-1"}))
    out = status(registry.name, where)
    assert out["state"] == (f"died: its local job's process (pid {dead.pid}) is gone (saved as running); resume "
                            f"with `ladder resume {registry.name}`") and out["live"] is False
    record.write_text(json.dumps({"pid": dead.pid, "job": "old", "log": "x", "submission": "local-0"}))
    assert status(registry.name, where)["state"] == "running"  # another job's record: not known to have died


def test_a_lease_of_a_process_gone_on_this_host_is_stale_at_once(registry):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a `ladder run` killed with its local Ray: resume need not wait for the lease to go stale
    gone = keeper(registry, "j1")
    gone.acquire()
    gone._released.set()
    with pytest.raises(LeaseHeld):
        check_free(registry)  # this process: alive
    registry.client.set_tag(gone.parent_run, Tag.LEASE, gone.tracking.client.get_run(gone.parent_run).data.tags[
        Tag.LEASE].replace(f'"pid": {gone.lease.pid}', f'"pid": {dead.pid}'))
    check_free(registry)


OPEN_STORE = "import sys; from ladder.registry.tracking import Tracking; print(Tracking('race', sys.argv[1]).experiment_id)"


def test_commands_that_open_a_new_sqlite_store_at_once_all_get_the_one_experiment(tmp_path):
    """Two `ladder run` of one spec started at once both open a store that does not exist yet: MLflow creates its
    tables and migrates them on first open, and without a lock beside the database all but one of four such
    processes failed in a traceback ("table ... already exists", an alembic migration that found no row)."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, uri], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-1000:] for _, err in outs]
    assert {out.strip() for out, _ in outs} == {"1"}


def test_two_resumes_of_one_job_at_once_one_runs_and_one_is_refused(registry):
    """Issue 35, 1: two `resume`s of one job write their leases to the same parent run (different tokens). Without
    the fence both acquired (the earlier writer read the later lease as "later" and went on)."""
    run = parent(registry, "job")
    for round_ in range(3):
        keepers = [LeaseKeeper(registry, run, "job", f"t{round_}{i}", f"resume {i}", renew_s=0.2, stale_after_s=2.0,
                               settle_s=0.5) for i in range(2)]
        won, refused = acquire_at_once(keepers)
        assert len(won) == 1 and len(refused) == 1, round_
        time.sleep(0.3)
        assert won[0].holds() and not refused[0].holds()
        with pytest.raises(LeaseHeld, match=f"already running: {won[0].lease.where}"):  # a third, later: refused
            LeaseKeeper(registry, run, "job", "late", "late", renew_s=0.2, stale_after_s=2.0, settle_s=0.1).acquire()
        won[0].release()


def beating(registry, run: str, renewed_at: float, stop: threading.Event, every_s: float = 0.1) -> threading.Thread:
    """A controller elsewhere whose host clock says `renewed_at` for ever, and whose heartbeat goes on."""
    import json

    def beat():
        n = 0
        while not stop.wait(every_s):
            n += 1
            registry.client.set_tag(run, Tag.LEASE, json.dumps({"token": "far", "job": "far", "where": "job far on "
                                                                "hostB, pid 9", "acquired_at": renewed_at,
                                                                "renewed_at": renewed_at, "host": "hostB", "beat": n}))
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    return thread


def test_staleness_is_judged_on_the_observers_clock_not_the_writers_timestamp(registry):
    """Issue 35, 1: a live controller on a host whose clock is an hour behind is not taken over (its heartbeat is
    seen to change); one whose clock is an hour ahead is taken over once it stops beating, after `stale_after_s` of
    the observer's own clock. Without the fix the first was taken over at once (`time.time() - renewed_at` > 90 s)
    and the second never (its `renewed_at` stayed in the future)."""
    run, stop = parent(registry, "far"), threading.Event()
    beating(registry, run, time.time() - 3600, stop)
    time.sleep(0.3)
    with pytest.raises(LeaseHeld, match="job far on hostB"):
        keeper(registry, "near", renew_s=0.2, stale_after_s=1.0).acquire()
    stop.set()
    time.sleep(0.3)
    import json

    ahead = json.loads(registry.client.get_run(run).data.tags[Tag.LEASE])
    registry.client.set_tag(run, Tag.LEASE, "")  # released; another, on a host an hour ahead, died without a release:
    registry.client.set_tag(parent(registry, "ahead"), Tag.LEASE, json.dumps(
        {**ahead, "token": "ahead", "where": "job ahead on hostC", "renewed_at": time.time() + 3600}))
    t0 = time.monotonic()
    taker = keeper(registry, "near2", renew_s=0.2, stale_after_s=1.0)
    taker.acquire()  # watched unchanged for 1 s of this clock: stale, taken over
    assert 1.0 <= time.monotonic() - t0 < 10 and taker.holds()
    taker.release()


def test_a_controller_whose_lease_was_taken_over_writes_neither_progress_nor_aliases(registry, mlflow_store,
                                                                                     quick_leases):
    """Issue 35, 1: a controller paused (or cut off from MLflow) past the stale time is taken over; when it goes on
    it saves no progress, moves no alias and uploads no checkpoint: it ends, failed with LeaseLost, in memory only.
    Without the fence its save went through, over the winner's progress."""
    from ladder.control.lease import LeaseLost, take_lease
    from ladder.progress import Progress
    from ladder.registry.registry import Registry

    old_reg, new_reg = registry, Registry(registry.name, *mlflow_store)
    run = parent(registry, "job")
    old = take_lease(old_reg, run, "job", "old", None, lambda: None)
    old_reg.save_progress(Progress(registry.name, "job", state=State.RUNNING, parent_run=run, step=3))
    old._released.set()  # paused: no more renewals (its process lives on)
    new = take_lease(new_reg, run, "job", "new", None, lambda: None)  # stale after 1 s unchanged: taken over
    new_reg.save_progress(Progress(registry.name, "job", state=State.RUNNING, parent_run=run, step=5))
    with pytest.raises(LeaseLost, match="taken over"):
        old_reg.save_progress(Progress(registry.name, "job", state=State.STOPPED, parent_run=run, step=4))
    with pytest.raises(LeaseLost):
        old_reg.upload_checkpoint(run, str(mlflow_store[1]), 4)
    from tests.unit.registries import add_versions

    (version,) = add_versions(new_reg, 1)
    with pytest.raises(LeaseLost):
        old_reg.promote(version)
    from types import SimpleNamespace

    verdict = SimpleNamespace(rule="passed", reason="AUC 0.9", passed=True,
                              candidate=SimpleNamespace(accuracy=0.8, auc=0.9))
    with pytest.raises(LeaseLost):  # nor a gate's verdict (it measured while its lease was taken over)
        old_reg.record_gate(version, verdict)
    assert registry.recorded_gate(version) is None
    for write in (lambda: old_reg.start_rung_run(run, 2, "job", "job-2-0"), lambda: old_reg.end_run(run),
                  lambda: old_reg.save_calibration(run, None, "rung-2", "{}")):
        with pytest.raises(LeaseLost):  # no new rung run, no run ended, no calibration set written
            write()
    assert registry.load_progress("job").step == 5 and registry.aliases() == {}
    assert registry.client.list_artifacts(run) == [] and registry.client.get_run(run).info.status == "RUNNING"
    new.release()


def test_a_lease_is_judged_stale_by_the_period_its_writer_renews_it_at(registry):
    """`mlflow.lease_renew_s` is the writer's: the lease carries its renewal period and stale time, and observers
    with the default (90 s) judge it by those. Without them in the lease, a controller renewing every 0.2 s that
    stopped beating was held alive for the observer's 90 s (`check_free` refused for minutes), and one renewing every
    40 s (stale after 120) would be taken over by an observer whose own setting was shorter."""
    quick = keeper(registry, "quick", renew_s=0.2, stale_after_s=0.6)
    quick.acquire()
    assert quick.lease.renew_s == 0.2 and quick.lease.stale_s == 0.6
    quick._released.set()  # paused: no more renewals
    time.sleep(0.8)
    check_free(registry)  # the default observer: stale by the writer's 0.6 s, not its own 90 s
    t0 = time.monotonic()
    taker = keeper(registry, "taker")  # default timing: takes over once it watched 0.6 s of no beats
    taker.acquire()
    assert time.monotonic() - t0 < 10 and taker.holds()
    taker.release()

    slow = keeper(registry, "slow", renew_s=40.0, stale_after_s=120.0)
    slow.acquire()
    slow._released.set()
    with pytest.raises(LeaseHeld, match="renewed every 40 s"):  # unchanged for 2 s: not stale for its writer
        keeper(registry, "hasty", renew_s=0.2, stale_after_s=0.6, settle_s=0.1).acquire()
    with pytest.raises(LeaseHeld):
        check_free(registry, stale_after_s=0.6)


def test_a_renewal_in_flight_when_the_lease_is_released_does_not_write_it_back(registry):
    """A renewal that had woken before `release` (its MLflow read slow on a loaded machine) used to write the lease
    again after `release` cleared it: a fresh lease nobody held, which refused the next controller (a full run
    saw it). `release` now waits for the renewal in flight; the tag stays empty."""
    import threading

    from ladder.registry.tags import Tag

    k = keeper(registry, "j", renew_s=0.05, stale_after_s=5.0)
    k.acquire()
    in_flight, go, real = threading.Event(), threading.Event(), k.holds

    def slow_holds():
        if threading.current_thread() is k._thread:
            in_flight.set()
            go.wait(30)
        return real()

    k.holds = slow_holds
    assert in_flight.wait(30)  # the renewal thread is between its wake-up and its write
    releaser = threading.Thread(target=k.release)
    releaser.start()
    releaser.join(0.5)  # without the fix, release has cleared the tag by now; with it, it waits for the renewal
    go.set()
    releaser.join(30)
    k._thread.join(30)
    assert not releaser.is_alive() and not k._thread.is_alive()
    assert registry.client.get_run(k.parent_run).data.tags.get(Tag.LEASE) == ""
