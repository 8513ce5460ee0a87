"""Pairwise AI feedback (RLAIF): which of two answers follows the constitution better.

Every pair is judged twice, once in each order, to cancel a labeller's position bias:
a pair is kept only when both verdicts pick the same answer; ties and contradicting
verdicts are dropped and counted. The labeller is either a program scoring answers
against the constitution's checkable principles, or a chat model asked in words.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pipelines.chat_models import ChatModel
from pipelines.constitution import Constitution, labelling_messages
from pipelines.principle_checks import get_check

Verdict = Literal["A", "B"] | None
Scorer = Callable[[str, str], float]  # (user prompt, answer) -> how well it follows the principles


class Labeller(Protocol):
    label: str

    def judge(
        self, prompts: Sequence[list[dict]], first: Sequence[str], second: Sequence[str]
    ) -> list[Verdict]:
        """For each i: "A" if first[i] is better, "B" if second[i] is, None for a tie."""
        ...


def parse_verdict(text: str) -> Verdict:
    """The labeller's answer as "A", "B" or None (a tie, or no clear letter)."""
    match = re.search(r"\b(A|B|tie)\b", text.strip(), flags=re.IGNORECASE)
    if not match or match.group(1).lower() == "tie":
        return None
    return match.group(1).upper()  # type: ignore[return-value]


def checks_scorer(constitution: Constitution) -> Scorer:
    """Fraction of the constitution's checkable principles an answer follows."""
    checks = [get_check(p.check) for p in constitution.checked]
    if not checks:
        raise ValueError(
            f"constitution {constitution.name!r} has no principle with a 'check': the "
            "programmatic labeller needs one, or a labeller 'function'"
        )

    def score(prompt: str, answer: str) -> float:
        return sum(check(prompt, answer) for check in checks) / len(checks)

    return score


def import_scorer(path: str) -> Scorer:
    """A scorer named 'package.module:function'."""
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"labeller function {path!r} must be 'module:function'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"labeller function {path!r} cannot be imported: {err}") from None


def _last_user_text(prompt: list[dict]) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


class ProgrammaticLabeller:
    """Prefers the answer with the higher score; equal scores are a tie."""

    def __init__(self, scorer: Scorer, label: str) -> None:
        self.scorer = scorer
        self.label = label

    def judge(self, prompts, first, second) -> list[Verdict]:
        verdicts: list[Verdict] = []
        for prompt, a, b in zip(prompts, first, second, strict=True):
            text = _last_user_text(prompt)
            sa, sb = self.scorer(text, a), self.scorer(text, b)
            verdicts.append("A" if sa > sb else "B" if sb > sa else None)
        return verdicts


class ModelLabeller:
    """Asks a chat model, with the constitution's labelling prompt, which answer is better."""

    def __init__(self, chat: ChatModel, constitution: Constitution) -> None:
        self.chat = chat
        self.constitution = constitution
        self.label = chat.label

    def judge(self, prompts, first, second) -> list[Verdict]:
        conversations = [
            labelling_messages(self.constitution, p, a, b)
            for p, a, b in zip(prompts, first, second, strict=True)
        ]
        return [parse_verdict(text) for text in self.chat.complete(conversations)]


@dataclass
class LabelledPair:
    prompt_index: int
    chosen: str
    rejected: str


@dataclass
class LabelStats:
    pairs: int = 0
    kept: int = 0
    ties: int = 0
    inconsistent: int = 0

    @property
    def agreement_rate(self) -> float:
        """Share of the pairs with two non-tie verdicts whose verdicts agree across orders."""
        decided = self.kept + self.inconsistent
        return self.kept / decided if decided else 0.0

    def as_metrics(self) -> dict[str, float]:
        return {
            "pairs": float(self.pairs),
            "pairs_kept": float(self.kept),
            "pairs_tied": float(self.ties),
            "pairs_inconsistent": float(self.inconsistent),
            "label_agreement_rate": self.agreement_rate,
        }


Verdicts = tuple[Verdict, Verdict]  # (x before y, y before x)


def judge_both_orders(
    labeller: Labeller,
    prompts: Sequence[list[dict]],
    pairs: Sequence[tuple[int, str, str]],
) -> list[Verdicts]:
    """The labeller's verdict on each (prompt index, answer x, answer y) as (x, y) and as
    (y, x)."""
    if not pairs:
        return []
    ps = [prompts[i] for i, _, _ in pairs]
    xs = [x for _, x, _ in pairs]
    ys = [y for _, _, y in pairs]
    forward = labeller.judge(ps, xs, ys)
    backward = labeller.judge(ps, ys, xs)
    return list(zip(forward, backward, strict=True))


def tally(
    pairs: Sequence[tuple[int, str, str]], verdicts: Sequence[Verdicts]
) -> tuple[list[LabelledPair], LabelStats]:
    """Keep the pairs whose two verdicts agree on the answer.

    A verdict of "A" for (x, y) must come with "B" for (y, x) to keep x as chosen (and the
    reverse for y). A tie in either order, or verdicts that follow the position instead of
    the answer, drop the pair.
    """
    stats = LabelStats(pairs=len(pairs))
    kept: list[LabelledPair] = []
    for (i, x, y), (v1, v2) in zip(pairs, verdicts, strict=True):
        if v1 is None or v2 is None:
            stats.ties += 1
        elif (v1, v2) == ("A", "B"):
            kept.append(LabelledPair(i, chosen=x, rejected=y))
        elif (v1, v2) == ("B", "A"):
            kept.append(LabelledPair(i, chosen=y, rejected=x))
        else:
            stats.inconsistent += 1
    stats.kept = len(kept)
    return kept, stats


def label_pairs(
    labeller: Labeller,
    prompts: Sequence[list[dict]],
    pairs: Sequence[tuple[int, str, str]],
) -> tuple[list[LabelledPair], LabelStats]:
    """Judge each (prompt index, answer x, answer y) in both orders; keep consistent
    verdicts (`tally`)."""
    return tally(pairs, judge_both_orders(labeller, prompts, pairs))
