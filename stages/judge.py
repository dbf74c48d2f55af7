"""The frozen judge: judge workers (one vLLM engine each) behind a `JudgePool` that scores batches.

Scorers: `verdict` = P(yes)/(P(yes)+P(no)) of the next token; `score` = a number the judge writes;
a verifier judge runs a `module:function` in the pool instead of an engine.
"""
from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from typing import Callable, Optional

from ladder.batches import JudgedBatch, RolloutBatch
from stages.engine import EngineConfig, build_llm


class JudgeError(ValueError):
    """A judge that cannot be used as configured (one line naming what is wrong)."""


@dataclass(frozen=True)
class JudgeConfig:
    """What the workers need of `JudgeSpec` (kept separate so workers do not import the spec)."""
    mode: str = "verdict"
    prompt_template: str = "{prompt}{response}\nok?"
    yes_token: str = "yes"
    no_token: str = "no"
    score_pattern: str = r"(-?\d+(?:\.\d+)?)\s*$"
    score_max: float = 10.0
    score_max_tokens: int = 16
    fallback_score: float = 0.0

    @classmethod
    def from_spec(cls, judge_spec) -> "JudgeConfig":
        return cls(**{k: getattr(judge_spec, k) for k in cls.__dataclass_fields__})

    def render(self, prompt: str, response: str) -> str:
        return self.prompt_template.replace("{prompt}", prompt).replace("{response}", response)


def _single_token(tokenizer, text: str, field: str) -> int:
    """The id of `text` as one vocabulary entry (or the one token it encodes to)."""
    vocab_id = tokenizer.get_vocab().get(text)
    if vocab_id is not None:
        return vocab_id
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise JudgeError(f"judge.{field}: {text!r} is {len(ids)} tokens for this judge's tokenizer, need exactly 1")
    return ids[0]


def verdict_scores(llm, texts: list[str], yes_id: int, no_id: int) -> list[float]:
    """P(yes) / (P(yes) + P(no)) of the next token after each text."""
    from vllm import SamplingParams

    outs = llm.generate(texts, SamplingParams(max_tokens=1, logprobs=-1, temperature=1.0), use_tqdm=False)
    scores = []
    for out in outs:
        dist = out.outputs[0].logprobs[0]
        p_yes, p_no = math.exp(dist[yes_id].logprob), math.exp(dist[no_id].logprob)
        scores.append(p_yes / (p_yes + p_no) if p_yes + p_no > 0 else 0.5)
    return scores


def parse_score(text: str, pattern: str, score_max: float) -> Optional[float]:
    """The judge's written score scaled to [0, 1], or None when unparsable."""
    m = re.search(pattern, text.strip())
    if not m:
        return None
    try:
        value = float(m.group(1))
    except ValueError:
        return None
    return min(1.0, max(0.0, value / score_max))


class JudgeWorker:
    """One vLLM engine with the frozen judge."""

    def __init__(self, engine: EngineConfig, judge: JudgeConfig):
        self.judge = judge
        self.llm = build_llm(EngineConfig(**{**engine.__dict__, "full_logprobs": True}))
        tok = self.llm.get_tokenizer()
        if judge.mode == "verdict":
            self.yes_id = _single_token(tok, judge.yes_token, "yes_token")
            self.no_id = _single_token(tok, judge.no_token, "no_token")

    def score(self, prompts: list[str], responses: list[str]) -> tuple[list[float], int]:
        """Scores in [0, 1] for each (prompt, response), and how many judge outputs were unparsable."""
        texts = [self.judge.render(p, r) for p, r in zip(prompts, responses)]
        if self.judge.mode == "verdict":
            return verdict_scores(self.llm, texts, self.yes_id, self.no_id), 0
        return self._written_scores(texts)

    def _written_scores(self, texts: list[str]) -> tuple[list[float], int]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=self.judge.score_max_tokens, temperature=0.0)
        outs = self.llm.generate(texts, params, use_tqdm=False)
        scores, failures = [], 0
        for out in outs:
            value = parse_score(out.outputs[0].text, self.judge.score_pattern, self.judge.score_max)
            failures += value is None
            scores.append(self.judge.fallback_score if value is None else value)
        return scores, failures


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


class JudgePool:
    """Scores rollouts in batches spread over judge workers (or with a verifier function)."""

    def __init__(self, workers: list, batch_size: int, verifier: Optional[Callable] = None,
                 respawn: Optional[Callable[[], object]] = None):
        if not workers and verifier is None:
            raise JudgeError("a judge pool needs judge workers or a verifier")
        self.workers = list(workers)
        self.batch_size = batch_size
        self.verifier = verifier
        self.respawn = respawn
        self.replaced = 0

    def score(self, batch: RolloutBatch) -> JudgedBatch:
        prompts, responses = list(batch.prompts), batch.responses
        if self.verifier is not None:
            scores = [float(self.verifier(p, r, ref)) for p, r, ref in zip(prompts, responses, batch.references)]
            return JudgedBatch(batch, tuple(scores), 0)
        scores, failures = self.score_pairs(prompts, responses)
        return JudgedBatch(batch, tuple(scores), failures)

    def score_pairs(self, prompts: list[str], responses: list[str]) -> tuple[list[float], int]:
        """Chunks of `batch_size` round-robin over workers; a dead worker is replaced and its chunk retried."""
        import ray

        chunks = [(i, i + self.batch_size) for i in range(0, len(prompts), self.batch_size)]
        pending = {}
        for k, (a, b) in enumerate(chunks):
            worker = self.workers[k % len(self.workers)]
            pending[k] = (worker, worker.score.remote(prompts[a:b], responses[a:b]))
        results: dict[int, tuple[list[float], int]] = {}
        for k, (worker, ref) in pending.items():
            try:
                results[k] = ray.get(ref)
            except ray.exceptions.RayActorError:
                index = k % len(self.workers)
                if self.workers[index] is worker:  # not yet replaced by an earlier failed chunk
                    self._replace(index)
                a, b = chunks[k]
                results[k] = ray.get(self.workers[index].score.remote(prompts[a:b], responses[a:b]))
        scores = [s for k in range(len(chunks)) for s in results[k][0]]
        return scores, sum(results[k][1] for k in results)

    def _replace(self, index: int) -> None:
        if self.respawn is None:
            raise JudgeError("a judge worker died and the pool cannot start a new one")
        self.workers[index] = self.respawn()
        self.replaced += 1
