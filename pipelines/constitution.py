"""Constitutions: written principles for critique-and-revise (Constitutional AI) and RLAIF.

A constitution is a YAML file: a list of principles, each with a critique request and a
revision request in the format of the Constitutional AI paper (Bai et al., 2022), an
optional programmatic `check`, and labelling instructions for pairwise comparison.
This module loads it (errors name the file and the field) and renders the messages a
critic or a labeller model is sent.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator

from pipelines.principle_checks import CHECKS
from rayalign.config import ConfigError, Strict, read_yaml

DEFAULT_LABEL_TEMPLATE = (
    "{instructions}\n\nPrinciples:\n{principles}\n\nConversation:\n{prompt}\n\n"
    "Response A:\n{response_a}\n\nResponse B:\n{response_b}\n\n"
    "Which response follows the principles better? Answer with the single letter A or B, "
    "or the word tie."
)
_TEMPLATE_FIELDS = ("{principles}", "{prompt}", "{response_a}", "{response_b}")


class Principle(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="Short unique name.")
    critique_request: str = Field(
        min_length=1, description="What the critic is asked to find wrong with an answer."
    )
    revision_request: str = Field(
        min_length=1, description="How the critic is asked to rewrite the answer."
    )
    check: str | None = Field(
        None,
        description=(
            "Name of a programmatic check (pipelines.principle_checks.CHECKS) that tells "
            "whether an answer follows this principle; enables the programmatic labeller "
            "and held-out violation rates."
        ),
    )

    @field_validator("check")
    @classmethod
    def _known_check(cls, value: str | None) -> str | None:
        if value is not None and value not in CHECKS:
            raise ValueError(f"unknown check {value!r}; known: {', '.join(sorted(CHECKS))}")
        return value


class Labelling(Strict):
    instructions: str = Field(
        "Judge which answer follows the principles better.",
        description="What the labeller is told before the principles.",
    )
    template: str = Field(
        DEFAULT_LABEL_TEMPLATE,
        description=(
            "The labeller's prompt; must contain {principles}, {prompt}, {response_a} and "
            "{response_b} ({instructions} optional)."
        ),
    )

    @field_validator("template")
    @classmethod
    def _has_fields(cls, value: str) -> str:
        missing = [f for f in _TEMPLATE_FIELDS if f not in value]
        if missing:
            raise ValueError(f"template lacks {', '.join(missing)}")
        return value


class Constitution(Strict):
    name: str = Field(description="Name recorded in every generated row's provenance.")
    principles: list[Principle] = Field(min_length=1, description="The principles.")
    labelling: Labelling = Field(
        default_factory=Labelling, description="Pairwise labelling instructions (RLAIF)."
    )

    @model_validator(mode="after")
    def _unique(self) -> Constitution:
        names = [p.name for p in self.principles]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"principle names must be unique; repeated: {repeated}")
        return self

    @property
    def checked(self) -> list[Principle]:
        """The principles a program can check."""
        return [p for p in self.principles if p.check]

    def principle(self, name: str) -> Principle:
        for p in self.principles:
            if p.name == name:
                return p
        raise KeyError(f"constitution {self.name!r} has no principle {name!r}")


def load_constitution(path: str | Path) -> Constitution:
    """Read and validate a constitution YAML file.

    Raises:
        ConfigError: naming the file and each bad field (e.g. `principles.1.revision_request`).
    """
    data = read_yaml(path)
    try:
        return Constitution.model_validate(data)
    except ValidationError as err:
        lines = [
            f"  {'.'.join(str(x) for x in e['loc']) or '(top level)'}: {e['msg']}"
            for e in err.errors()
        ]
        raise ConfigError(f"invalid constitution {path}:\n" + "\n".join(lines)) from None


def critique_messages(
    prompt: list[dict], answer: str, principle: Principle
) -> list[dict[str, str]]:
    """The conversation a critic continues with its critique of `answer`."""
    return [
        *prompt,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": f"Critique request: {principle.critique_request}"},
    ]


def revision_messages(
    prompt: list[dict], answer: str, principle: Principle, critique: str
) -> list[dict[str, str]]:
    """The critique conversation extended with the revision request."""
    return [
        *critique_messages(prompt, answer, principle),
        {"role": "assistant", "content": critique},
        {"role": "user", "content": f"Revision request: {principle.revision_request}"},
    ]


def render_conversation(prompt: list[dict]) -> str:
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def labelling_messages(
    constitution: Constitution, prompt: list[dict], response_a: str, response_b: str
) -> list[dict[str, str]]:
    """The single user message asking a labeller which of two responses is better."""
    principles = "\n".join(f"- {p.name}: {p.revision_request}" for p in constitution.principles)
    fields = {
        "{instructions}": constitution.labelling.instructions,
        "{principles}": principles,
        "{prompt}": render_conversation(prompt),
        "{response_a}": response_a,
        "{response_b}": response_b,
    }
    # Placeholder by placeholder (not str.format): answers and templates may hold braces.
    text = re.sub(
        "|".join(re.escape(k) for k in fields),
        lambda m: fields[m.group(0)],
        constitution.labelling.template,
    )
    return [{"role": "user", "content": text}]
