"""What each model sees: prompts rendered once, here, through the model's chat template (or as plain text),
and the engines' context length measured on the rendered prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ladder.errors import first_line


class PromptError(ValueError):
    """A prompt or chat setting a model cannot take (one line naming the field)."""


@dataclass(frozen=True)
class ChatRenderer:
    """Renders a user's text as the model sees it: a user turn of its chat template followed by the assistant's
    header (the model answers in the assistant turn), or the text itself. `tokenizer` counts tokens."""
    tokenizer: object
    template: Optional[str] = None      # the Jinja chat template; None: plain text
    system: Optional[str] = None
    field: str = "chat"                 # the spec field named in errors

    def user(self, text: str) -> str:
        if self.template is None:
            return text
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + \
                   [{"role": "user", "content": text}]
        try:
            rendered = self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                          add_generation_prompt=True)
        except Exception as exc:  # a Jinja error in a template from the spec, or a role it refuses
            raise PromptError(f"{self.field}.template: cannot render a prompt ({type(exc).__name__}: "
                              f"{first_line(exc, None)})") from None
        return self._without_double_bos(rendered)

    def _without_double_bos(self, rendered: str) -> str:
        """The engine's tokenizer adds its BOS itself: a template that writes it too would give two."""
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and rendered.startswith(bos) and self._adds_bos():
            return rendered[len(bos):]
        return rendered

    def _adds_bos(self) -> bool:
        ids = self.tokenizer("x").input_ids
        return bool(ids) and ids[0] == self.tokenizer.bos_token_id

    def n_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text as the engine counts them (special tokens added as it adds them)."""
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(list(texts)).input_ids]

    @property
    def chat(self) -> bool:
        return self.template is not None


def renderer(tokenizer, chat_spec, field: str) -> ChatRenderer:
    """The renderer of `chat_spec` (`auto`, `none` or a Jinja template) for a model with `tokenizer`."""
    if chat_spec.template == "none":
        template = None
    elif chat_spec.template == "auto":
        template = getattr(tokenizer, "chat_template", None) or None
    else:
        template = chat_spec.template
    if chat_spec.system and template is None:
        why = "the template is none" if chat_spec.template == "none" else "the model has no chat template"
        raise PromptError(f"{field}.system: a system prompt needs a chat template ({why})")
    return ChatRenderer(tokenizer, template, chat_spec.system, field)


def load_tokenizer(location: str, store=None, trust_remote_code: bool = False):
    """The tokenizer of a model directory, hub id or `models:/` location (fetched through `store`)."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer

    local = store.local(location) if store is not None else location
    return AutoTokenizer.from_pretrained(local, trust_remote_code=trust_remote_code)


class VocabOnly:
    """A model's `tokenizer.json` read by `tokenizers` alone, for what needs its vocabulary and nothing else (is a
    word one token?): milliseconds, where `load_tokenizer` imports transformers and torch (~7 CPU-seconds in a
    command that starts nothing else)."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(path)

    def get_vocab(self) -> dict:
        return self.backend.get_vocab(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids


def vocab_only(location: str, store=None) -> Optional[VocabOnly]:
    """The model's `VocabOnly` tokenizer, or None where it has no `tokenizer.json` that `tokenizers` reads."""
    import os

    path = os.path.join(store.local(location) if store is not None else location, "tokenizer.json")
    try:
        return VocabOnly(path) if os.path.isfile(path) else None
    except Exception:  # a file `tokenizers` cannot read: the full tokenizer says what is wrong
        return None


def model_limit(location: str, store=None) -> Optional[int]:
    """The model's own context limit (`max_position_embeddings` of its config), None when it says none."""
    import json
    import os

    local = store.local(location) if store is not None else location
    path = os.path.join(local, "config.json")
    if not os.path.isfile(path):
        return None
    config = json.loads(open(path).read())
    config = config.get("text_config", config)
    return config.get("max_position_embeddings") or config.get("max_sequence_length")


def longest(chat: ChatRenderer, texts, k: int = 8) -> list[str]:
    """The `k` texts of the most tokens, counted bare (a chat template adds about the same to each); their rendered
    counts decide the context length. By tokens, not characters: a short text can be the longest (digits,
    symbols, scripts of several tokens a character)."""
    unique = sorted(set(texts))
    return [t for _, t in sorted(zip(chat.n_tokens(unique), unique), reverse=True)[:k]]


def fit_context(needed: int, asked: Optional[int], limit: Optional[int], what: str) -> int:
    """The engine's context length: `asked` (the spec's) or `needed` rounded up; refused in one line when the
    prompts cannot fit."""
    if asked is not None and asked < needed:
        raise PromptError(f"rollout.max_model_len: {asked} tokens cannot hold {what} ({needed} tokens)")
    if limit is not None and needed > limit:
        raise PromptError(f"{what} needs {needed} tokens, over the model's limit of {limit} "
                          "(max_position_embeddings): shorten the prompts or lower the token budgets")
    if asked is not None:
        if limit is not None and asked > limit:
            raise PromptError(f"rollout.max_model_len: {asked} is over the model's limit of {limit}")
        return asked
    rounded = -(-needed // 64) * 64
    return min(rounded, limit) if limit is not None else rounded


MARGIN = 8  # tokens kept free: a response decoded and encoded again may take a few more tokens


def student_context(spec, task, chat: ChatRenderer, limit: Optional[int]) -> int:
    """Context length of the rollout engines: the longest rendered prompt plus `rollout.max_tokens`."""
    prompts = longest(chat, [ex.prompt for ex in (*task.train, *task.eval)])
    needed = max(chat.n_tokens([chat.user(p) for p in prompts]), default=0) + spec.rollout.max_tokens + MARGIN
    return fit_context(needed, spec.rollout.max_model_len, limit, "the longest student prompt + rollout.max_tokens")


def judge_context(spec, cfg, task, chat: ChatRenderer, limit: Optional[int]) -> int:
    """Context length of the judge engines, in the judge's mode: its longest rendered prompt with room for the
    response(s) it reads (rollout.max_tokens, or the longest worked solution) and what it writes (the mode's
    settings say both: `bare_prompt`, `context_room`)."""
    prompts = longest(chat, [ex.prompt for ex in (*task.train, *task.eval)])
    solutions = longest(chat, [ex.solution for ex in task.eval if ex.solution])
    response = max([spec.rollout.max_tokens, *chat.n_tokens(solutions)])
    settings = cfg.settings
    bare = [settings.bare_prompt(p) for p in prompts]
    needed = max(chat.n_tokens([chat.user(t) for t in bare]), default=0) + settings.context_room(response) + MARGIN
    return fit_context(needed, spec.rollout.max_model_len, limit, f"the longest judge prompt ({settings.mode} mode)")
