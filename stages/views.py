"""Equivalent forms of a prompt, which a solve-mode judge answers each (`solve_views`): its label is their majority.

A view function `(prompt, k) -> forms` returns at most `k` forms, the prompt itself first; every form has the same
true answer. `signed_sum_views` reorders the terms of the one signed sum in a prompt (the built-in arithmetic task's).
"""
from __future__ import annotations

import itertools
import random
import re
import zlib
from typing import Callable

ViewFunction = Callable[[str, int], tuple[str, ...]]

SUM = re.compile(r"\d+(?:[+-]\d+)+")  # a sum of non-negative integers, every term after the first signed
MAX_TERMS = 8                         # longer sums are left as they are (their orderings are too many to list)


def signed_terms(expression: str) -> list[tuple[str, int]]:
    """`4+1-5+3` -> [('+', 4), ('+', 1), ('-', 5), ('+', 3)]: each term with the sign it carries."""
    tokens = re.findall(r"[+-]|\d+", expression)
    return [("+", int(tokens[0]))] + [(op, int(n)) for op, n in zip(tokens[1::2], tokens[2::2])]


def written(terms: list[tuple[str, int]]) -> str:
    """The expression of signed terms whose first term is positive: [('+', 3), ('-', 5)] -> `3-5`."""
    return str(terms[0][1]) + "".join(f"{op}{n}" for op, n in terms[1:])


def running_totals(terms: list[tuple[str, int]]) -> list[int]:
    totals, total = [], 0
    for op, n in terms:
        total = total + n if op == "+" else total - n
        totals.append(total)
    return totals


def valid_orders(terms: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Every distinct order of the signed terms that is a prompt of its own kind: the first term positive and no
    running total below zero (as the task writes its problems), in first-seen order."""
    seen, orders = set(), []
    for order in itertools.permutations(terms):
        order = list(order)
        key = tuple(order)
        if key in seen or order[0][0] != "+" or min(running_totals(order)) < 0:
            continue
        seen.add(key)
        orders.append(order)
    return orders


def signed_sum_views(prompt: str, k: int) -> tuple[str, ...]:
    """At most `k` forms of `prompt` with its one signed sum's terms reordered (signs kept with their terms):
    the prompt first, then the other valid orders whose largest running total is smallest (smaller numbers are
    the ones a model knows better), ties in an order fixed by the prompt's text. A prompt with no sum, or with
    more than one, has only itself."""
    sums = SUM.findall(prompt)
    if k <= 1 or len(sums) != 1:
        return (prompt,)
    terms = signed_terms(sums[0])
    if len(terms) > MAX_TERMS:
        return (prompt,)
    others = [o for o in valid_orders(terms) if written(o) != sums[0]]
    random.Random(zlib.crc32(prompt.encode())).shuffle(others)
    others.sort(key=lambda o: max(running_totals(o)))  # stable: the shuffle breaks ties
    start, end = SUM.search(prompt).span()
    return (prompt, *(prompt[:start] + written(o) + prompt[end:] for o in others[: k - 1]))

