"""How a judge model turns (prompt, response) pairs into rewards: each judge mode's settings beside its scorer.

A mode's settings are a pydantic model (the spec's `judge` section is made of them, and the judge workers take
the rung's one) that also says what the judge reads and writes (`bare_prompt`, `context_room`: the engines'
context length); its scorer `(pool, settings, pairs, answer_pattern) -> Scored` uses the pool's workers
(`verdicts` / `write`). Adding a mode is a settings model and a scorer, paired in `JUDGE_SCORERS`.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Literal, Optional, Sequence, Union

from pydantic import Field, field_validator

from stages.answers import Label, label_of, normalized, same_answer  # noqa: F401 (Label: re-exported)
from stages.answers import extract_answer as extract
from stages.steps import composed_label
from stages.settings import Strict, fill, has_placeholders, one_group_regex

VERDICT_TEMPLATE = "{prompt}{response}\nok?"             # verdict and score modes: the judge's prompt
PAIR_TEMPLATE = "{prompt}1:{first}\n2:{second}\nfirst?"  # pairwise mode: yes means the first is better
SCORE_PATTERN = r"(-?\d+(?:\.\d+)?)\s*$"                   # score mode: the number the judge writes last


@dataclass(frozen=True)
class Pairs:
    """What a judge scores: `[n]` prompts and responses, and each one's group (same prompt)."""
    prompts: tuple[str, ...]
    responses: tuple[str, ...]
    groups: tuple[int, ...]


@dataclass(frozen=True)
class Scored:
    scores: tuple[float, ...]          # [n] rewards in [0, 1]
    parse_failures: int                # judge outputs that could not be read (fallback score used)
    judge_tokens: int                  # tokens the judge generated for these scores
    examples: tuple[dict, ...] = ()    # a few judge outputs, for people to read
    unread: tuple[bool, ...] = ()      # [n] True where the judge's output could not be read (empty: none)
    abstained: tuple[bool, ...] = ()   # [n] True where the judge abstained on the sample's prompt (empty: none)
    guides: tuple[Optional[str], ...] = ()  # [n] (solve_guide) a judge answer that wrote its prompt's label, or None


class ModeSettings(Strict):
    """What every judge mode has: what an output that cannot be read is worth."""
    fallback_score: float = Field(0.0, ge=0, le=1, description="Reward given when the judge output cannot be parsed.")
    unreadable: Literal["fallback", "drop"] = Field(
        "fallback", description="A judge output that cannot be read, or a score that is NaN or outside [0, 1]: "
                                "fallback gives it fallback_score; drop leaves the sample out of training. Either "
                                "way it is counted (judge/parse_failure_rate), and a step with nothing left is "
                                "skipped.")

    def bare_prompt(self, prompt: str) -> str:
        """The judge's input for `prompt` with the response(s) left empty (what the context length is measured on)."""
        raise NotImplementedError(f"{type(self).__name__}: a judge mode says what the judge reads (bare_prompt)")

    def context_room(self, response_tokens: int) -> int:
        """Tokens the judge needs beyond `bare_prompt`: the response(s) it reads (each up to `response_tokens`) and
        what it writes."""
        raise NotImplementedError(f"{type(self).__name__}: a judge mode says what the judge reads (context_room)")


class JudgePrompt(ModeSettings):
    """A mode that shows the judge one (prompt, response) pair."""
    prompt_template: str = Field(VERDICT_TEMPLATE, description="Judge prompt; must contain {prompt} and {response}.")

    @field_validator("prompt_template")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        return has_placeholders(v, "{prompt}", "{response}")

    def render(self, prompt: str, response: str) -> str:
        return fill(self.prompt_template, prompt=prompt, response=response)

    def bare_prompt(self, prompt: str) -> str:
        return self.render(prompt, "")


class VerdictTokens(ModeSettings):
    """A mode that reads the judge's next token: yes or no."""
    yes_token: str = Field("yes", description="Token whose probability means approval (verdict mode).")
    no_token: str = Field("no", description="Token whose probability means disapproval (verdict mode).")


class VerdictMode(JudgePrompt, VerdictTokens):
    """P(yes) / (P(yes) + P(no)) of the judge's next token after the judge prompt."""
    mode: Literal["verdict"] = "verdict"

    def context_room(self, response_tokens: int) -> int:
        return response_tokens + 1  # the response, then the verdict token


def score_verdict(pool, cfg: VerdictMode, pairs: Pairs, answer_pattern: str) -> Scored:
    """P(yes) / (P(yes) + P(no)) after the rendered judge prompt: one next-token read per pair."""
    texts = [pool.chat(cfg.render(p, r)) for p, r in zip(pairs.prompts, pairs.responses)]
    scores = pool.map("verdicts", texts)
    examples = tuple({"judge_input": t, "score": round(s, 4)} for t, s in list(zip(texts, scores))[:4])
    return Scored(tuple(scores), 0, len(texts), examples)


class ScoreMode(JudgePrompt):
    """The judge writes a score; a pattern reads it."""
    mode: Literal["score"] = "score"
    score_pattern: str = Field(SCORE_PATTERN, description="Regex whose first group is the score (score mode).")
    score_max: float = Field(10.0, gt=0, description="Scores are divided by this to land in [0, 1] (score mode).")
    score_max_tokens: int = Field(16, ge=1, le=512, description="Tokens the judge may write (score mode).")

    @field_validator("score_pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        return one_group_regex(v, "the score")

    def context_room(self, response_tokens: int) -> int:
        return response_tokens + self.score_max_tokens


def score_written(pool, cfg: ScoreMode, pairs: Pairs, answer_pattern: str) -> Scored:
    """The judge writes a score (greedy); `score_pattern` reads it, `fallback_score` when unreadable."""
    texts = [pool.chat(cfg.render(p, r)) for p, r in zip(pairs.prompts, pairs.responses)]
    outs = [o[0] for o in pool.map("write", texts, 1, cfg.score_max_tokens, 0.0)]
    values = [parse_score(text, cfg.score_pattern, cfg.score_max) for text, _ in outs]
    scores = tuple(cfg.fallback_score if v is None else v for v in values)
    examples = tuple({"judge_input": t, "judge_output": text, "score": s}
                     for t, (text, _), s in list(zip(texts, outs, scores))[:4])
    return Scored(scores, sum(v is None for v in values), sum(n for _, n in outs), examples,
                  tuple(v is None for v in values))


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


class SolveMode(ModeSettings):
    """The judge solves each prompt itself; a response earns its agreement with the judge's answers."""
    mode: Literal["solve"] = "solve"
    solve_template: str = Field("{prompt}", description="What the judge is given to solve (solve mode); contains {prompt}.")
    solve_samples: int = Field(4, ge=1, le=64, description="Answers the judge writes per prompt (solve mode).")
    solve_temperature: float = Field(
        1.0, ge=0, le=5, description="Sampling temperature of the judge's own answers (solve mode; 0 = greedy).")
    solve_max_tokens: int = Field(32, ge=1, le=32768, description="Tokens per judge answer (solve mode).")
    solve_reward: Literal["share", "majority"] = Field(
        "share", description="share: the fraction of the judge's answers the response agrees with; "
                             "majority: 1 when it agrees with the judge's most common answer (solve mode).")
    solve_min_share: float = Field(
        0.0, ge=0, le=1, description="Abstention (solve mode): a prompt whose most common judge answer is less than "
                                     "this share of the answers the judge wrote gets no learning signal (its group's "
                                     "advantage is 0), counted in the coverage; 0 labels every prompt.")
    solve_views: int = Field(
        1, ge=1, le=16, description="Forms of each prompt the judge answers, `solve_samples` times each (solve mode): "
                                    "the prompt and equivalent ones the task gives (e.g. a sum's terms reordered); "
                                    "the label is the majority over all of them. 1: the prompt only.")
    solve_guide: bool = Field(
        False, description="Guidance (solve mode): a group none of whose samples agrees with the judge's label gets "
                           "one of the judge's own answers to the prompt that wrote the label, in place of its last "
                           "sample and rewarded 1, so the student learns labels it never samples (off-policy "
                           "guidance, as LUFFY); groups with no such answer, or abstained, are left as they are.")
    solve_distill: bool = Field(
        False, description="Distillation (solve mode; needs train.advantage: filter): the student trains on the "
                           "judge's own answer to each prompt that wrote the label (rewarded 1, in place of its "
                           "group's last sample) and on none of its own samples, which then only measure it. With "
                           "init: previous the judge is the rung's start, so the student learns from its start's "
                           "amplified answers instead of its own drifting ones (bench/filter_online.py, 0-9: the start's "
                           "answers the checker accepts +3.1 points where its own samples fell 9.4; those its own "
                           "label accepts +0.4; README, Distillation).")
    solve_steps: int = Field(
        0, ge=0, le=65536, description="Step votes (solve mode; a task that gives its answers' steps, as the "
                                       "built-in arithmetic): the judge answers this many training prompts once "
                                       "(every view, solve_samples times), each step an agreeing answer wrote a "
                                       "vote; a prompt's label is the majority of the answers composed from each "
                                       "step's most common result along its views, its own worked answer what "
                                       "guidance and distillation train on (stages/steps.py). With the task's own "
                                       "checker as the judge (initial kind task), the task's exact steps: "
                                       "guidance and distillation train on exact worked answers (the oracle of "
                                       "step votes). 0: off.")
    solve_step_votes: int = Field(
        0, ge=0, le=1024, description="Step votes' confidence (with solve_steps): a step enters the judge's table "
                                      "only where at least this many of its answers that agree with their prompt's "
                                      "majority wrote it, with their most common result; a form of a prompt that "
                                      "takes a step left out composes nothing, and a prompt none of whose forms "
                                      "composes is abstained on. The judge's rare steps are where its table is wrong "
                                      "(rung 2's student on operands 0-9: 154 of 412 steps wrong, most written "
                                      "fewer than 5 times; at 5, 34 of 259, and its labels right 0.852 against "
                                      "0.799). Labels are not what the student learns from, though: in the demo's "
                                      "rung 2 at 5 its rewards were right 0.993 against 0.933, and it gained +1.4 "
                                      "points over its judge against +4.3 (the worked answers through rare steps, "
                                      "right or not, are what it distills). 0 (the demo's): every step any answer "
                                      "wrote, agreeing answers' votes first.")

    @field_validator("solve_template")
    @classmethod
    def _solve_placeholders(cls, v: str) -> str:
        return has_placeholders(v, "{prompt}")

    def render_solve(self, prompt: str) -> str:
        return fill(self.solve_template, prompt=prompt)

    def bare_prompt(self, prompt: str) -> str:
        return self.render_solve(prompt)

    def context_room(self, response_tokens: int) -> int:
        return self.solve_max_tokens  # the judge reads no response: it writes its own answers


def solve_labels(pool, cfg: SolveMode, prompts: Sequence[str], answer_pattern: str):
    """Each prompt's `Label`: the judge answers every form of it (`pool.views`, `solve_views` of them; the prompt
    only without views) `solve_samples` times. Returns the labels, what the judge read and wrote per prompt, and
    the tokens it wrote."""
    forms = [views(pool, p, cfg.solve_views) for p in prompts]
    inputs = [pool.chat(cfg.render_solve(f)) for fs in forms for f in fs]
    solved = iter(pool.map("write", inputs, cfg.solve_samples, cfg.solve_max_tokens, cfg.solve_temperature))
    written = [[out for _ in fs for out in next(solved)] for fs in forms]
    labels = [label_of([extract(answer_pattern, text) for text, _ in outs], cfg.solve_min_share) for outs in written]
    tokens = sum(n for outs in written for _, n in outs)
    return labels, written, tokens


def views(pool, prompt: str, k: int) -> tuple[str, ...]:
    """`k` forms of `prompt` from the pool's view function (the task's); the prompt alone when k is 1."""
    if k <= 1:
        return (prompt,)
    view_function = getattr(pool, "views", None)
    if view_function is None:
        raise ValueError(f"judge.solve_views is {k}, but this task gives no equivalent forms of its prompts")
    return tuple(view_function(prompt, k))


def score_solve(pool, cfg: SolveMode, pairs: Pairs, answer_pattern: str) -> Scored:
    """The judge solves each distinct prompt (`solve_labels`); a response earns the share of the judge's answers it
    agrees with (`share`) or 1 for agreeing with the judge's majority (`majority`). A prompt the judge abstains on
    is marked `abstained` for each of its samples: their group takes no part in training."""
    prompts = list(dict.fromkeys(pairs.prompts))
    if cfg.solve_steps:  # the judge's step table is its answer: it writes nothing more for each prompt
        table = pool.step_table(cfg, answer_pattern)
        labelled = [composed_label(views(pool, p, cfg.solve_views), pool.steps.compose, table, answer_pattern,
                                   cfg.solve_min_share) for p in prompts]
        found, own = [label for label, _ in labelled], [w for _, w in labelled]
        worked, written, tokens = dict(zip(prompts, own)), [[] for _ in prompts], 0
    else:
        (found, written, tokens), worked = solve_labels(pool, cfg, prompts, answer_pattern), {}
    labels = dict(zip(prompts, found))
    scores, unread = [], []
    for p, r in zip(pairs.prompts, pairs.responses):
        judged = labels[p].readable
        unread.append(not judged)
        scores.append(agreement(extract(answer_pattern, r), judged, cfg.solve_reward) if judged
                      else cfg.fallback_score)
    examples = tuple({"prompt": p, "judge_input": pool.chat(cfg.render_solve(p)), "judge_wrote": [t for t, _ in outs],
                      "label": labels[p].majority,
                      "label_share": round(labels[p].share, 3)} for p, outs in list(zip(prompts, written))[:4])
    abstained = tuple(labels[p].abstained for p in pairs.prompts)
    guides = {p: worked[p] if cfg.solve_steps else guide_of(outs[:cfg.solve_samples], labels[p], answer_pattern)
              for p, outs in zip(prompts, written)} if cfg.solve_guide or cfg.solve_distill else {}
    return Scored(tuple(scores), sum(unread), tokens, examples, tuple(unread), abstained,
                  tuple(guides.get(p) for p in pairs.prompts) if guides else ())


def guide_of(outs, label: "Label", answer_pattern: str) -> Optional[str]:
    """The first of the judge's answers to the prompt itself (not another view of it) whose final answer is the
    label; None when there is none or the judge abstained."""
    if label.majority is None or label.abstained:
        return None
    return next((text for text, _ in outs if same_answer(extract(answer_pattern, text) or "", label.majority)), None)


def guided(batch, scores: tuple, guides: tuple, keep: tuple = (), distill: bool = False) -> tuple:
    """(batch, scores, keep, how many groups were guided): each group whose samples all scored 0 (`distill`: every
    group) and whose prompt has a guide gets the guide in place of its last sample (its completion as text, tokenized
    by the trainer) scored 1. With `distill` the guides are all that trains: every other sample is left out."""
    from stages.batches import RolloutBatch, Sample

    last = {g: i for i, g in enumerate(batch.group)}
    hit = set() if distill else {g for g, score in zip(batch.group, scores) if score != 0.0}
    samples, scores, n = list(batch.samples), list(scores), 0
    keep = [False] * len(scores) if distill else list(keep or (True,) * len(scores))
    for g, i in last.items():
        if g not in hit and guides[i]:
            samples[i] = Sample(samples[i].prompt_ids, (), guides[i], ())
            scores[i], keep[i], n = 1.0, True, n + 1
    batch = RolloutBatch(batch.prompts, batch.references, tuple(samples), batch.group)
    return batch, tuple(scores), tuple(keep), n


def agreement(answer: Optional[str], judge_answers: Sequence[str], rule: str) -> float:
    """Reward of a response whose final answer is `answer`, given the judge's own answers; answers that are the
    same number count as one (`1,000` = `1000` = `1000.0`)."""
    if answer is None:
        return 0.0
    if rule == "majority":
        majority = Counter(map(normalized, judge_answers)).most_common(1)[0][0]  # ties: the first written
        return float(same_answer(answer, majority))
    return sum(same_answer(a, answer) for a in judge_answers) / len(judge_answers)


class PairwiseMode(VerdictTokens):
    """The judge compares two responses of a group, in both orders; yes_token means the first is better."""
    mode: Literal["pairwise"] = "pairwise"
    pair_template: str = Field(
        PAIR_TEMPLATE, description="Pairwise prompt with {prompt}, {first}, {second}; "
                                   "yes_token means the first response is better.")

    @field_validator("pair_template")
    @classmethod
    def _pair_placeholders(cls, v: str) -> str:
        return has_placeholders(v, "{prompt}", "{first}", "{second}")

    def render_pair(self, prompt: str, first: str, second: str) -> str:
        return fill(self.pair_template, prompt=prompt, first=first, second=second)

    def bare_prompt(self, prompt: str) -> str:
        return self.render_pair(prompt, "", "")

    def context_room(self, response_tokens: int) -> int:
        return 2 * response_tokens + 1  # two responses, then the verdict token


def score_pairwise(pool, cfg: PairwiseMode, pairs: Pairs, answer_pattern: str) -> Scored:
    """Every two responses of a group are compared in both orders (cancelling position bias);
    a response's reward is its mean win probability against the rest of its group."""
    comparisons = [(i, j) for members in _members(pairs.groups).values() for i in members for j in members if i != j]
    texts = [pool.chat(cfg.render_pair(pairs.prompts[i], pairs.responses[i], pairs.responses[j]))
             for i, j in comparisons]
    first_wins = dict(zip(comparisons, pool.map("verdicts", texts))) if texts else {}
    wins: dict[int, list[float]] = {i: [] for i in range(len(pairs.prompts))}
    for i, j in comparisons:
        wins[i].append(pair_win(first_wins[(i, j)], first_wins[(j, i)]))
    scores = tuple(sum(w) / len(w) if w else 0.5 for _, w in sorted(wins.items()))
    examples = tuple({"judge_input": t, "p_first_better": round(first_wins[c], 4)}
                     for t, c in list(zip(texts, comparisons))[:4])
    return Scored(scores, 0, len(texts), examples)


def pair_win(p_first_ab: float, p_first_ba: float) -> float:
    """P(a beats b) from the judge's two readings, a shown first and b shown first: mirrored by design,
    pair_win(x, y) + pair_win(y, x) == 1."""
    return (p_first_ab + (1.0 - p_first_ba)) / 2


def _members(groups: Sequence[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        out.setdefault(g, []).append(i)
    return out


def checked(scored: Scored, fallback: float, drop: bool) -> tuple[Scored, tuple[bool, ...], int]:
    """Scores a trainer can use: an unreadable output, or a score that is NaN or outside [0, 1] (a judge or
    verifier gone wrong), gets the fallback score, or, with `drop`, is left out of training; a sample whose prompt
    the judge abstained on is left out of training (its group's advantage is 0).
    Returns the scores, which samples to train on (`[n]`), and how many scores were out of range."""
    import math

    n = len(scored.scores)
    unread = scored.unread or (False,) * n
    abstained = scored.abstained or (False,) * n
    bad = [not (isinstance(x, (int, float)) and math.isfinite(x) and 0.0 <= x <= 1.0) for x in scored.scores]
    scores = tuple(fallback if b else float(x) for x, b in zip(scored.scores, bad))
    keep = tuple(not (drop and (u or b)) and not a for u, b, a in zip(unread, bad, abstained))
    fixed = Scored(scores, scored.parse_failures + sum(bad), scored.judge_tokens, scored.examples,
                   tuple(u or b for u, b in zip(unread, bad)), scored.abstained, scored.guides)
    return fixed, keep, sum(bad)


def coverage(groups: Sequence[int], abstained: Sequence[bool]) -> float:
    """The share of groups (prompts) the judge labelled: 1 minus the share it abstained on; 1.0 without any."""
    if not abstained or not groups:
        return 1.0
    skipped = {g for g, a in zip(groups, abstained) if a}
    return 1.0 - len(skipped) / len(set(groups))


JUDGE_SCORERS = {VerdictMode: score_verdict, ScoreMode: score_written, SolveMode: score_solve,
                 PairwiseMode: score_pairwise}  # a mode's settings model -> its scorer
JUDGE_MODES = {model.model_fields["mode"].default: model for model in JUDGE_SCORERS}  # by name, as specs write it
JudgeMode = Annotated[Union[tuple(JUDGE_SCORERS)], Field(discriminator="mode")]  # one mode's validated settings


def score_with(pool, settings: ModeSettings, pairs: Pairs, answer_pattern: str) -> Scored:
    """`pairs` scored by the scorer of `settings`' mode."""
    return JUDGE_SCORERS[type(settings)](pool, settings, pairs, answer_pattern)
