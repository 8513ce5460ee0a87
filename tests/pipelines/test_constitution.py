"""Constitutions, principle checks and pairwise labelling with order-bias handling."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pipelines.constitution import (
    critique_messages,
    labelling_messages,
    load_constitution,
    revision_messages,
)
from pipelines.labelling import (
    ProgrammaticLabeller,
    checks_scorer,
    import_scorer,
    label_pairs,
    parse_verdict,
)
from pipelines.principle_checks import no_refusal, number_only, violation_rate
from pipelines.rlaif import candidate_pairs
from rayalign.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ARITHMETIC = ROOT / "configs" / "constitutions" / "arithmetic.yaml"
Q = [{"role": "user", "content": "What is 2 + 3?"}]


def test_shipped_constitutions_load():
    default = load_constitution(ROOT / "configs" / "constitutions" / "default.yaml")
    assert {p.name for p in default.principles} >= {"harmless", "honest", "helpful"}
    arithmetic = load_constitution(ARITHMETIC)
    assert [p.check for p in arithmetic.checked] == ["number_only", "no_refusal"]


@pytest.mark.parametrize(
    "body, field",
    [
        (
            "name: x\nprinciples:\n  - name: a\n    critique_request: c\n",
            "principles.0.revision_request",
        ),
        (
            "name: x\nprinciples:\n  - {name: a, critique_request: c, revision_request: r, check: nope}\n",
            "principles.0.check",
        ),
        ("name: x\nprinciples: []\n", "principles"),
        (
            "name: x\nprinciples:\n  - {name: a, critique_request: c, revision_request: r}\n"
            "labelling: {template: 'no fields'}\n",
            "labelling.template",
        ),
        (
            "name: x\nprinciples:\n  - {name: a, critique_request: c, revision_request: r}\n"
            "  - {name: a, critique_request: c, revision_request: r}\n",
            "repeated",
        ),
    ],
)
def test_bad_constitution_names_file_and_field(tmp_path, body, field):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_constitution(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_critique_and_revision_follow_the_paper_format():
    principle = load_constitution(ARITHMETIC).principle("number_only")
    critique = critique_messages(Q, "The answer is 5.", principle)
    assert [m["role"] for m in critique] == ["user", "assistant", "user"]
    assert critique[-1]["content"] == f"Critique request: {principle.critique_request}"
    revision = revision_messages(Q, "The answer is 5.", principle, "It has words.")
    assert [m["role"] for m in revision] == ["user", "assistant", "user", "assistant", "user"]
    assert revision[3]["content"] == "It has words."
    assert revision[-1]["content"] == f"Revision request: {principle.revision_request}"


def test_labelling_prompt_holds_both_answers_and_every_principle():
    constitution = load_constitution(ARITHMETIC)
    (msg,) = labelling_messages(constitution, Q, "5", "The answer is {5}.")
    text = msg["content"]
    assert "User: What is 2 + 3?" in text
    assert "Response A:\n5" in text and "Response B:\nThe answer is {5}." in text
    assert all(p.name in text for p in constitution.principles)


@pytest.mark.parametrize(
    "answer, ok",
    [("5", True), (" 95.", True), ("-3", True), ("The answer is 5.", False), ("", False)],
)
def test_number_only(answer, ok):
    assert number_only("What is 2 + 3?", answer) is ok


def test_no_refusal_and_violation_rate():
    assert no_refusal("q", "5")
    assert not no_refusal("q", "I can't help with that.")
    assert not no_refusal("q", "  ")
    rate = violation_rate(number_only, ["q"] * 4, ["1", "2", "The answer is 3.", "x"])
    assert rate == 0.5


@pytest.mark.parametrize(
    "text, verdict",
    [("A", "A"), ("b", "B"), ("Response B is better.", "B"), ("tie", None), ("both", None)],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


class PositionBiased:
    """A labeller that always prefers whichever answer it is shown first."""

    label = "biased"

    def judge(self, prompts, first, second):
        return ["A"] * len(first)


def test_order_bias_is_cancelled():
    scorer = checks_scorer(load_constitution(ARITHMETIC))
    fair = ProgrammaticLabeller(scorer, "checks")
    pairs = [(0, "The answer is 5.", "5"), (0, "5", "The answer is 5."), (0, "5", "6")]
    kept, stats = label_pairs(fair, [Q], pairs)
    # Either order of the same pair gives the same label: the number-only answer wins.
    assert [(p.chosen, p.rejected) for p in kept] == [("5", "The answer is 5.")] * 2
    assert (stats.kept, stats.ties, stats.inconsistent) == (2, 1, 0)
    assert stats.agreement_rate == 1.0

    kept, stats = label_pairs(PositionBiased(), [Q], pairs)
    assert kept == [] and stats.inconsistent == 3 and stats.agreement_rate == 0.0


def test_import_scorer_errors_name_the_function():
    assert import_scorer("pipelines.principle_checks:number_only") is number_only
    with pytest.raises(ValueError, match="module:function"):
        import_scorer("number_only")
    with pytest.raises(ValueError, match="cannot be imported"):
        import_scorer("pipelines.principle_checks:missing")


def test_candidate_pairs_are_distinct_and_bounded():
    answers = [["5", "5", "The answer is 5.", "6"], ["7", "7"], ["", "8"]]
    pairs = candidate_pairs(answers, 2, random.Random(0))
    assert all(i == 0 for i, _, _ in pairs) and len(pairs) == 2
    assert all(a != b for _, a, b in pairs)


def test_registry_keeps_datasets_and_checkpoints_apart(tmp_path):
    from rayalign.registry import DatasetEntry, Registry, RegistryEntry

    registry = Registry(tmp_path)
    registry.register(RegistryEntry(name="sft", stage="sft", kind="chat", path="/m"))
    registry.register_dataset(
        DatasetEntry(name="rlaif-preference", stage="rlaif", format="preference", path="/d", rows=3)
    )
    registry.register(RegistryEntry(name="rlaif", stage="dpo", kind="chat", path="/m2"))
    assert set(registry.entries()) == {"sft", "rlaif"}  # what the Serve app reads
    assert registry.datasets()["rlaif-preference"].rows == 3


def test_safety_stage_paths_are_made_absolute_for_the_actors(tmp_path, monkeypatch):
    from pipelines.safety_config import ConstitutionalStageConfig, RLAIFStageConfig
    from pipelines.safety_stage import absolute_paths
    from rayalign.config import load_config

    for d in ("policy", "critic"):
        (tmp_path / d).mkdir()
    (tmp_path / "p.jsonl").write_text('{"prompt": "What is 1 + 1?"}\n')
    monkeypatch.chdir(tmp_path)
    common = ["model.name_or_path=policy", "data.prompts=p.jsonl", f"constitution={ARITHMETIC}"]
    cai = absolute_paths(
        load_config(
            ConstitutionalStageConfig,
            ROOT / "configs" / "tiny" / "constitutional.yaml",
            [*common, "constitutional.critic={kind: checkpoint, path: critic}"],
        )
    )
    assert cai.model.name_or_path == str(tmp_path / "policy")
    assert cai.data.prompts == str(tmp_path / "p.jsonl")
    assert cai.constitutional.critic.path == str(tmp_path / "critic")
    rlaif = absolute_paths(
        load_config(
            RLAIFStageConfig,
            ROOT / "configs" / "tiny" / "rlaif.yaml",
            [*common, "rlaif.labeller={kind: model, model: {kind: checkpoint, path: org/hub}}"],
        )
    )
    assert rlaif.rlaif.labeller.model.path == "org/hub"  # a hub id stays as it is
    assert rlaif.model.name_or_path == str(tmp_path / "policy")


def test_labelling_continues_after_the_labeller_went_down(tmp_path):
    """A model labeller over HTTP (a real local server) answers 12 requests, then 503s
    for good: the first three batches of verdicts are kept; a rerun asks only about the
    rest, and the verdicts equal those of a run that never failed."""
    from pipelines.chat_models import EndpointChat, EndpointError
    from pipelines.labelling import ModelLabeller
    from pipelines.rlaif import label_all
    from pipelines.safety_config import ChatModelSpec, RLAIFStageConfig
    from rayalign.config import load_config
    from tests.http_stub import failing_server

    constitution = load_constitution(ARITHMETIC)
    prompts = [[{"role": "user", "content": f"What is {i} + 1?"}] for i in range(5)]
    answers = [[str(i + 1), f"{i}", f"The answer is {i + 1}."] for i in range(5)]
    pairs = candidate_pairs(answers, 2, random.Random(0))
    assert len(pairs) == 10

    def run(server, name: str):
        spec = ChatModelSpec(
            kind="endpoint", base_url=server.url, model="m", concurrency=1, max_retries=1
        )
        config = load_config(
            RLAIFStageConfig,
            ROOT / "configs" / "tiny" / "rlaif.yaml",
            [f"run.storage_path={tmp_path}", f"run.name={name}", "save_every=2"],
        )
        (config.run_dir / "data").mkdir(parents=True, exist_ok=True)
        chat = EndpointChat(spec)
        try:
            return label_all(config, ModelLabeller(chat, constitution), prompts, pairs)
        finally:
            chat.close()

    with failing_server() as server:
        # Each batch of 2 pairs is 4 requests (both orders).
        server.script, server.then = [200] * 12, 503
        with pytest.raises(EndpointError, match="HTTP 503"):
            run(server, "down")
        journal = tmp_path / "down" / "data" / "labels.jsonl"
        assert [json.loads(x)["id"] for x in journal.read_text().splitlines()] == list(range(6))
        server.then, before = 200, server.requests
        resumed = run(server, "down")
        assert server.requests - before == 4 * 2  # the last 4 pairs, in both orders
        assert [json.loads(x)["id"] for x in journal.read_text().splitlines()] == list(range(10))
        assert resumed == run(server, "straight")


@pytest.mark.parametrize(
    "answer, repaired",
    [
        ("The answer is 7.", "7"),
        ("19", "19"),
        ("-3 apples", "-3"),
        ("I cannot say.", None),
        ("So 12 + 7 = 19.", None),  # which number answers takes a model to tell
        ("er is 1\n.oiN\n0\nddfojier", None),  # a garbled sample from the demo's policy
    ],
)
def test_number_only_repair_keeps_a_single_number(answer, repaired):
    from pipelines.principle_checks import number_only_repair

    assert number_only_repair("What is 12 + 7?", answer) == repaired


class ScriptedCritic:
    """Replies with fixed revisions (a stand-in for a model critic's coordination)."""

    label = "scripted"

    def __init__(self, revisions):
        self.revisions = revisions

    def critique_and_revise(self, prompts, answers, principles):
        return ["critique"] * len(answers), self.revisions[: len(answers)]


def _chains(answers):
    from pipelines.constitutional import Chain

    return [Chain(prompt_index=0, original=a, answer=a) for a in answers]


def test_the_gate_rejects_revisions_that_break_a_checked_principle():
    from pipelines.constitutional import build_rows, critique_and_revise
    from pipelines.safety_config import ConstitutionalStageConfig
    from rayalign.config import load_config

    constitution = load_constitution(ARITHMETIC)
    answers = ["The answer is 5.", "The answer is 5.", "5", "The answer is 5."]
    # A revision to the number; dots (what the tiny SFT critic writes); a refusal of an
    # answer that followed both principles; an empty reply.
    revisions = ["5", "................", "I cannot answer that.", "  "]
    only_number_only = [random.Random(0) for _ in answers]
    principle = next(p for p in constitution.principles if p.name == "number_only")
    for rng in only_number_only:
        rng.choice = lambda seq, p=principle: p  # every chain is asked to fix number_only

    gated = _chains(answers)
    critique_and_revise(ScriptedCritic(revisions), constitution, [Q], gated, 1, only_number_only)
    assert [c.answer for c in gated] == ["5", "The answer is 5.", "5", "The answer is 5."]
    verdicts = [c.steps[0]["verdict"] for c in gated]
    assert verdicts == ["accepted", "rejected", "rejected", "unchanged"]

    config = load_config(
        ConstitutionalStageConfig,
        ROOT / "configs" / "tiny" / "constitutional.yaml",
        ["model.name_or_path=p", "data.prompts=p.jsonl", f"constitution={ARITHMETIC}"],
    )
    sft, preference, metrics = build_rows(config, constitution, "scripted", [Q], gated)
    assert metrics == {"answers": 4.0, "revised": 1.0, "unchanged": 3.0, "rejected": 2.0}
    assert [r["messages"][-1]["content"] for r in sft] == ["5"] and len(preference) == 1

    ungated = _chains(answers)
    critique_and_revise(
        ScriptedCritic(revisions), constitution, [Q], ungated, 1, only_number_only, gate=False
    )
    assert [c.answer for c in ungated] == [
        "5",
        "................",
        "I cannot answer that.",
        "The answer is 5.",
    ]


def test_the_rules_critic_revises_what_a_rule_can_fix():
    from pipelines.constitutional import RulesCritic, build_critic
    from pipelines.safety_config import CriticSpec

    constitution = load_constitution(ARITHMETIC)
    number_only_p, no_refusal_p = (constitution.principle(n) for n in ("number_only", "no_refusal"))
    critiques, revisions = RulesCritic().critique_and_revise(
        [Q, Q, Q],
        ["The sum is 5.", "5", "I can't do sums."],
        [number_only_p, number_only_p, no_refusal_p],
    )
    assert revisions == ["5", "5", "I can't do sums."]  # a refusal takes a model to revise
    assert "breaks number_only" in critiques[0] and "follows" in critiques[1]
    assert "no rule" in critiques[2]
    spec = CriticSpec(kind="rules")
    assert spec.label == "rules" and isinstance(build_critic(spec, None, constitution), RulesCritic)
    unfixable = constitution.model_copy(update={"principles": [no_refusal_p]})
    with pytest.raises(ValueError, match="no principle .* has a check with a repair"):
        build_critic(spec, None, unfixable)
