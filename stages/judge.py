"""The frozen judge: judge workers (one vLLM engine each) behind a `JudgePool` that scores batches.

Workers read verdicts and write text; the mode's scorer (`stages.scoring.JUDGE_SCORERS`) turns that
into rewards. A verifier judge runs a `module:function` (or the task's checker) on a `VerifierWorker`, an actor
with no engine, so a verifier that hangs is timed out, replaced and stopped like any judge worker.
"""
from __future__ import annotations

import importlib
import math
import zlib
from dataclasses import dataclass, field
from typing import Callable, Optional

from stages.actors import StepTimeout, Timed, get_within, raise_if_start_failed
from stages.batches import JudgedBatch, RolloutBatch
from stages.engine import EngineConfig, build_llm, load_model_into
from stages.answers import DEFAULT_ANSWER_PATTERN
from stages.scoring import (ModeSettings, Pairs, Scored, VerdictMode, VerdictTokens, checked, coverage, guided,
                             score_with)
from stages.steps import exact_guide


class JudgeError(ValueError):
    """A judge that cannot be used as configured (one line naming what is wrong)."""


@dataclass(frozen=True)
class JudgeConfig:
    """What the judge workers and the pool take: the rung's judge mode as the spec validated it (the mode's settings
    model, `JudgeSpec.settings()`), and the task's answer pattern (solve mode reads answers with it)."""
    settings: ModeSettings = field(default_factory=VerdictMode)
    answer_pattern: str = DEFAULT_ANSWER_PATTERN

    @classmethod
    def from_spec(cls, judge_spec, answer_pattern: Optional[str] = None) -> "JudgeConfig":
        return cls(judge_spec.settings(), **({"answer_pattern": answer_pattern} if answer_pattern else {}))

    @property
    def mode(self) -> str:
        return self.settings.mode

    def score(self, pool, pairs: Pairs) -> Scored:
        """`pairs` scored in this mode, with the workers of `pool`."""
        return score_with(pool, self.settings, pairs, self.answer_pattern)


def _single_token(tokenizer, text: str, field: str) -> int:
    """The id of `text` as one token of this judge's tokenizer: a vocabulary entry (an added token) or the one
    token it encodes to. Otherwise one line naming the variants (leading space, capitalised) that are one token:
    the judge's verdict is read from one next token, and a wrong one is never chosen silently."""
    vocab_id = tokenizer.get_vocab().get(text)
    if vocab_id is not None:
        return vocab_id
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) == 1:
        return ids[0]
    variants = [v for v in dict.fromkeys((text.strip(), " " + text.strip(), text.strip().capitalize(),
                                          " " + text.strip().capitalize(), text.strip().upper()))
                if v != text and len(tokenizer.encode(v, add_special_tokens=False)) == 1]
    hint = f"; one token: {', '.join(repr(v) for v in variants)}" if variants else ""
    raise JudgeError(f"judge.{field}: {text!r} is {len(ids)} tokens for this judge's tokenizer, need exactly 1{hint}")


def verdict_token_ids(tokenizer, judge: JudgeConfig) -> Optional[tuple[int, int]]:
    """The ids of the yes and no tokens of a mode that reads them (verdict, pairwise); JudgeError naming the
    field and the one-token variants when a word is not one token."""
    tokens = judge.settings
    if not isinstance(tokens, VerdictTokens):
        return None
    return _single_token(tokenizer, tokens.yes_token, "yes_token"), _single_token(tokenizer, tokens.no_token, "no_token")


def verdict_scores(llm, texts: list[str], yes_id: int, no_id: int) -> list[float]:
    """P(yes) / (P(yes) + P(no)) of the next token after each text. The engine returns the logprobs of those
    two tokens only (`logprob_token_ids`), so the cost does not grow with the vocabulary."""
    outs = llm.generate(texts, verdict_params(yes_id, no_id), use_tqdm=False)
    return [verdict(out.outputs[0].logprobs[0][yes_id].logprob, out.outputs[0].logprobs[0][no_id].logprob)
            for out in outs]


def verdict_params(yes_id: int, no_id: int):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=1, temperature=1.0, logprob_token_ids=[yes_id, no_id])


def verdict(yes_logprob: float, no_logprob: float) -> float:
    """P(yes) / (P(yes) + P(no)) from the two logprobs, computed stably (0.5 when both are -inf)."""
    if math.isinf(yes_logprob) and math.isinf(no_logprob):
        return 0.5
    return 1.0 / (1.0 + math.exp(max(-700.0, min(700.0, no_logprob - yes_logprob))))


class VerifierWorker(Timed):
    """A verifier judge's worker: no engine, the verifier function run on (prompt, response, reference) items."""

    def __init__(self, verifier: Callable):
        self.verifier = verifier

    def set_verifier(self, verifier: Callable) -> None:
        """Verify with another function (a new rung's verifier), in this worker."""
        self.verifier = verifier

    def verify(self, items: list) -> list[float]:
        return [verify_one(self.verifier, p, r, ref) for p, r, ref in items]


def verify_one(verifier: Callable, prompt: str, response: str, reference) -> float:
    """The verifier's score of one response as a number; the user's function failing is said in one line."""
    try:
        return _number(verifier(prompt, response, reference))
    except Exception as exc:  # the user's function failed: say which, on what, in one line
        name = f"{getattr(verifier, '__module__', '?')}:{getattr(verifier, '__qualname__', '?')}"
        why = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise JudgeError(f"verifier {name} raised {type(exc).__name__}: {why} (prompt {prompt[:40]!r}, "
                         f"response {response[:40]!r})") from None


class JudgeWorker(Timed):
    """One vLLM engine with the frozen judge."""

    def __init__(self, engine: EngineConfig, judge: JudgeConfig):
        self.engine = engine
        self.llm = build_llm(engine)
        self.model_dir = engine.store.local(engine.model)
        self.configure(judge)

    def configure(self, judge: JudgeConfig) -> None:
        self.judge = judge
        self.yes_id, self.no_id = verdict_token_ids(self.llm.get_tokenizer(), judge) or (None, None)

    def load_model(self, location: str, judge: JudgeConfig) -> str:
        """Judge with another model of the same architecture (a new rung's judge), in this engine, in place."""
        self.model_dir = load_model_into(self.llm, self.model_dir, location, self.engine.store)
        self.configure(judge)
        return self.model_dir

    def verdicts(self, texts: list[str]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) of the next token after each text."""
        return verdict_scores(self.llm, texts, self.yes_id, self.no_id)

    def write(self, texts: list[str], n: int, max_tokens: int, temperature: float) -> list[list[tuple[str, int]]]:
        """`n` continuations of each text as (text, tokens). Sampling is seeded by the text, so the
        same prompt gets the same judge outputs on any worker and in any chunk."""
        from vllm import SamplingParams

        params = [SamplingParams(n=n, max_tokens=max_tokens, temperature=temperature,
                                 seed=zlib.crc32(t.encode()) if temperature > 0 else None) for t in texts]
        outs = self.llm.generate(texts, params, use_tqdm=False)
        return [[(c.text, len(c.token_ids)) for c in out.outputs] for out in outs]


def _plain(text: str) -> str:
    return text


def _number(x) -> float:
    """A verifier's return value as a float (NaN when it is not a number: checked later like any bad score)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def load_verifier(path: str) -> Callable[[str, str, Optional[str]], float]:
    """Import `module:function`; one-line JudgeError when it cannot be found."""
    module_name, _, func_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise JudgeError(f"judge.initial.function: cannot import module {module_name!r} ({exc})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise JudgeError(f"judge.initial.function: {module_name!r} has no function {func_name!r}")
    return func


def learn_step_table(pool, settings, prompts, steps, answer_pattern: str) -> dict:
    """A judge's table of step results (`stages.steps.voted_table`) from its answers to `prompts` (every view,
    `solve_samples` times), written through `pool` (a `JudgePool`, or anything with its `map`, `chat`, `views`)."""
    from stages.steps import voted_table

    return voted_table(step_answers(pool, settings, prompts, steps, answer_pattern), settings.solve_step_votes)


def step_answers(pool, settings, prompts, steps, answer_pattern: str) -> list:
    """The judge's answers to `prompts` as `voted_table` reads them: (the steps one answer wrote, whether it agrees
    with its prompt's majority)."""
    from stages.scoring import solve_labels
    from stages.steps import agrees

    labels, written, _ = solve_labels(pool, settings, prompts, answer_pattern)
    return [(steps.read(text), agrees(label, text, answer_pattern))
            for label, outs in zip(labels, written) for text, _ in outs]


class JudgePool:
    """Scores rollouts in batches spread over judge workers, or with a verifier function: on `VerifierWorker`s
    when `workers` are given (`verifies`), else in this process."""

    def __init__(self, workers: list, batch_size: int, verifier: Optional[Callable] = None,
                 respawn: Optional[Callable[[], object]] = None, cfg: Optional[JudgeConfig] = None,
                 max_replacements: Optional[int] = None, chat: Optional[Callable[[str], str]] = None,
                 timeout_s: Optional[float] = None, views: Optional[Callable[[str, int], tuple[str, ...]]] = None,
                 steps=None, step_prompts: tuple = (), tables: Optional[tuple[dict, str]] = None):
        if not workers and verifier is None:
            raise JudgeError("a judge pool needs judge workers or a verifier")
        self.workers = list(workers)
        self.batch_size = batch_size
        self.verifier = verifier
        self.verifies = verifier is not None and bool(workers)  # the verifier runs on the workers
        self.respawn = respawn
        self.cfg = cfg or JudgeConfig()
        self.replaced = 0
        self.max_replacements = max_replacements  # None: no limit
        self.timeout_s = timeout_s  # (resources.step_timeout_s) a worker silent for longer is replaced; None: no limit
        self.work_s = 0.0  # seconds the workers (or the verifier) spent scoring, summed over calls
        self.chat = chat or _plain  # a judge prompt as the judge model sees it (its chat template's user turn)
        self.views = views  # (prompt, k) -> up to k equivalent forms of it, the task's (solve mode's solve_views)
        self.steps = steps  # the task's `stages.steps.StepRules` (solve mode's solve_steps)
        self.step_prompts = tuple(step_prompts)  # the training prompts the judge's step table is learnt from
        self.tables = tables  # (tables learnt before, by key; this judge's location): a table is learnt once
        self._table = None

    def step_table(self, settings, answer_pattern: str) -> dict:
        """The judge's table of step results (`stages.steps`), learnt from `step_prompts` at the first call."""
        if self._table is None:
            if self.steps is None:
                raise ValueError(f"judge.solve_steps is {settings.solve_steps}, but this task gives no steps of its "
                                 "answers")
            known, judge = self.tables if self.tables is not None else ({}, None)
            key = (judge, self.step_prompts, settings.solve_views, settings.solve_samples, settings.solve_temperature,
                   settings.solve_max_tokens, answer_pattern, settings.solve_step_votes)
            if judge is None or key not in known:
                known[key] = learn_step_table(self, settings, self.step_prompts, self.steps, answer_pattern)
            self._table = known[key]
        return self._table

    def score(self, batch: RolloutBatch, guide: bool = False) -> JudgedBatch:
        """Rewards for a rollout batch; unreadable or out-of-range scores get the fallback or are dropped. `guide`
        (a training batch; never an evaluation's): groups that missed the label get the judge's answer
        (`solve_guide`)."""
        raw = self.score_items(list(batch.prompts), batch.responses, list(batch.group), list(batch.references))
        settings = self.cfg.settings
        scored, keep, invalid = checked(raw, settings.fallback_score, settings.unreadable == "drop")
        scores, n_guided = scored.scores, 0
        if guide and scored.guides:
            batch, scores, keep, n_guided = guided(batch, scores, scored.guides, keep, settings.solve_distill)
        return JudgedBatch(batch, scores, scored.parse_failures, scored.judge_tokens, scored.examples,
                           keep, invalid, coverage(batch.group, scored.abstained), n_guided)

    def score_items(self, prompts: list[str], responses: list[str], groups: Optional[list[int]] = None,
                    references: Optional[list] = None):
        """Rewards for (prompt, response) pairs in the judge's mode; `groups` tie samples of one prompt."""
        if self.verifier is not None:
            items = list(zip(prompts, responses, references or [None] * len(prompts)))
            return Scored(tuple(self.remote_verify(items) if self.verifies else self.local_verify(items)), 0, 0,
                          guides=self.exact_guides(prompts))
        groups = groups if groups is not None else list(range(len(prompts)))
        return self.cfg.score(self, Pairs(tuple(prompts), tuple(responses), tuple(groups)))

    def exact_guides(self, prompts: list[str]) -> tuple:
        """(A verifier pool given the task's exact `steps`, whose settings ask for guides: solve_guide or
        solve_distill) each prompt's exact worked answer, `stages.steps.exact_guide`; () otherwise."""
        settings = self.cfg.settings
        wanted = getattr(settings, "solve_guide", False) or getattr(settings, "solve_distill", False)
        if self.steps is None or not wanted:
            return ()
        return tuple(exact_guide(self.steps, p) for p in prompts)

    def local_verify(self, items: list) -> list[float]:
        """The verifier on `items` in this process (a pool without workers)."""
        import time

        t0 = time.perf_counter()
        scores = [verify_one(self.verifier, *item) for item in items]
        self.work_s += time.perf_counter() - t0
        return scores

    def remote_verify(self, items: list) -> list[float]:
        """The workers' verifier on `items`; the verifier's own failure as its one line (not Ray's wrapping)."""
        import ray

        try:
            return self.map("verify", items)
        except ray.exceptions.RayTaskError as exc:
            raise (exc.cause if isinstance(exc.cause, JudgeError) else exc) from None

    def map(self, method: str, items: list, *args) -> list:
        """`worker.method(chunk, *args)` over chunks of `batch_size` items, round-robin over workers,
        results in order; a dead worker, or one that does not answer within `timeout_s`, is replaced and its
        chunk retried."""
        import time

        import ray

        timeout = self.timeout_s if self.timeout_s is not None else float("inf")
        deadline = time.monotonic() + timeout
        chunks = [(i, i + self.batch_size) for i in range(0, len(items), self.batch_size)]
        pending = {}
        for k, (a, b) in enumerate(chunks):
            worker = self.workers[k % len(self.workers)]
            pending[k] = (worker, worker.timed.remote(method, items[a:b], *args))
        results: dict[int, list] = {}
        busy = [0.0] * len(self.workers)
        for k, (worker, ref) in pending.items():
            index = k % len(self.workers)
            while True:
                try:
                    results[k], seconds = get_within(ref, deadline, "judge", timeout)
                    break
                except (ray.exceptions.RayActorError, StepTimeout) as exc:
                    raise_if_start_failed(exc)  # one that never started is not replaced: the new one would not either
                    if self.workers[index] is worker:  # not yet replaced by an earlier failed chunk
                        self._replace(index, exc)
                    a, b = chunks[k]
                    worker = self.workers[index]
                    ref, deadline = worker.timed.remote(method, items[a:b], *args), time.monotonic() + timeout
            busy[index] += seconds
        self.work_s += max(busy, default=0.0)  # the workers run side by side
        return [x for k in range(len(chunks)) for x in results[k]]

    def _replace(self, index: int, why: Optional[Exception] = None) -> None:
        hung = f"{why}; " if isinstance(why, StepTimeout) else ""
        if self.respawn is None:
            raise JudgeError(f"{hung}a judge worker died and the pool cannot start a new one")
        if self.max_replacements is not None and self.replaced >= self.max_replacements:
            raise JudgeError(f"{hung}judge workers died {self.replaced + 1} times in this rung (worker_replacements "
                             f"is {self.max_replacements}): a worker that keeps dying is not replaced again")
        if hung:  # hung, not dead: killed before its replacement starts
            from stages.actors import kill_all

            kill_all([self.workers[index]], wait_s=5.0)
        self.workers[index] = self.respawn()
        self.replaced += 1
