"""The stage actors a ladder keeps from one rung to the next.

A new rung loads its student into the running rollout engines and trainer, and its judge into the running judge
engines, in place, instead of starting new ones (an engine start is ~20 s on a CPU, minutes for a large model on
a GPU). An actor is taken over only when it was started with the same settings (engine options, resources, count)
and the new model has its architecture and tokenizer; otherwise that role gets new actors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from stages.actors import StartGuard


@dataclass
class StageSet:
    """Actors by role ("trainer", "rollout", "judges" or "verifier"), each list with the settings key it was started
    with."""
    actors_by_role: dict[str, list] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    reused: int = 0          # actors the current rung took over from the previous one
    started: int = 0         # actors the current rung had to start
    guard: StartGuard = field(default_factory=StartGuard)  # every start goes through it: none after a stop
    groups: dict = field(default_factory=dict)  # TrainerGroup handle -> its ranks' placement group (held by guard)
    # judge step tables (`judge.solve_steps`) learnt in this ladder, by judge and settings: the table the gate
    # measured a candidate with is the one the next rung labels with, learnt once
    step_tables: dict = field(default_factory=dict)

    def start(self, spawn_one: Callable[[], object]):
        """A new stage actor, `spawn_one()`, tracked (`stop --now` kills it); StopRequested once a stop was asked."""
        return self.guard.start(spawn_one)

    def actors(self) -> list:
        return [a for role in self.actors_by_role.values() for a in role]

    def take(self, role: str, key: str, n: int, load: Callable, start: Callable[[int], object],
             timeout_s: float | None = None) -> list:
        """`n` actors of `role` serving the new model: the kept ones when their settings key is `key`, each
        loaded in place with `load(actor)` (a remote call) within `timeout_s`; else (or when a load refuses, or
        does not end in time) `start(i)` for each."""
        import ray

        from stages.engine import EngineMismatch

        old = self.actors_by_role.get(role, [])
        if old and self.keys.get(role) == key and len(old) == n:
            try:
                ray.get([load(a) for a in old], timeout=timeout_s)
                self.reused += n
                return old
            except (EngineMismatch, ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass  # another architecture, an actor died meanwhile, or one hangs: new actors below
        self._kill(old)
        new = [self.start(lambda i=i: start(i)) for i in range(n)]
        self.actors_by_role[role], self.keys[role] = new, key
        self.started += n
        return new

    def drop(self, role: str) -> None:
        """Stop the actors of a role the next rung does not use."""
        self._kill(self.actors_by_role.pop(role, []))
        self.keys.pop(role, None)

    def after_trainer_death(self, sync_group: bool) -> "StageSet":
        """This set with the trainer gone and the rollout and judge workers that still answer kept, for the rung's
        restart to take over (it loads its weights into them, then the checkpoint's), the others killed. None are
        kept where the engines joined a collective sync group with the lost trainer (`sync_group`): the next
        group is formed by fresh ones."""
        self.drop("trainer")
        for role in ("rollout", "judges", "verifier"):
            if sync_group:
                self.drop(role)
            else:
                self.drop_unless_answering(role)
        return self

    def drop_unless_answering(self, role: str, answer_s: float = 10.0) -> None:
        """Stop the actors of a role unless each answers a call within `answer_s` seconds (none dead or hung)."""
        import ray

        try:
            ray.get([a.__ray_ready__.remote() for a in self.actors_by_role.get(role, [])], timeout=answer_s)
        except Exception:  # dead (RayActorError) or busy past the wait (GetTimeoutError)
            self.drop(role)

    def set(self, role: str, actors: list) -> None:
        """Record the role's current actors (after replacements of dead ones)."""
        self.actors_by_role[role] = list(actors)

    def release(self) -> None:
        self._kill(self.actors())
        self.actors_by_role.clear()
        self.keys.clear()

    def _kill(self, actors: list) -> None:
        """Kill actors this set owns (awaited), and stop tracking them for `stop --now`."""
        from stages.actors import kill_all
        from stages.train_group import stop

        for group in [g for g in self.groups if g in actors]:
            stop(group)  # its ranks and their placement group, then the group's actor
            self.guard.let_go(self.groups.pop(group))
        kill_all(actors)
        self.guard.forget(actors)


def settings_key(*parts) -> str:
    """A comparable key of what an actor was started with (its model left out)."""
    import json
    from dataclasses import asdict, is_dataclass

    def plain(x):
        if is_dataclass(x):
            return {k: plain(v) for k, v in asdict(x).items() if k not in ("model", "seed")}
        if hasattr(x, "model_dump"):
            return x.model_dump()
        return x

    return json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
