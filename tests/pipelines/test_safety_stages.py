"""The safety stages on the tiny model: RLAIF -> DPO lowers a principle's violation rate, and
critique-and-revise runs against a live OpenAI-compatible endpoint (our own Serve app)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from pipelines.constitution import load_constitution
from pipelines.safety_config import ConstitutionalStageConfig, RLAIFStageConfig
from pipelines.safety_stage import measure_violations
from rayalign.config import load_config
from rayalign.data.datasets import load_validated

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ARITHMETIC = ROOT / "configs" / "constitutions" / "arithmetic.yaml"
# 70% of the SFT answers are sentences ("The answer is 7."): the SFT model breaks the
# arithmetic constitution's `number_only` principle on most held-out questions.
VERBOSE = {"max_operand": 9, "ops": "+", "verbose_rate": 0.7}


@pytest.fixture(scope="module")
def verbose_data(tmp_path_factory):
    from rayalign.data.tasks import build_task
    from rayalign.data.tasks.splits import write_task_data

    out = tmp_path_factory.mktemp("data") / "verbose"
    write_task_data(build_task("arithmetic", VERBOSE), out, seed=1, n_train=80, n_test=20)
    return out


@pytest.fixture(scope="module")
def verbose_sft(ray_local, tiny_model, verbose_data, runs_dir):
    """The tiny model after SFT on the verbose answers."""
    from pipelines.stage_registry import load_stage

    stage = load_stage("sft")
    config = load_config(
        stage.config_cls,
        ROOT / "configs" / "tiny" / "sft.yaml",
        [
            f"model.name_or_path={tiny_model}",
            f"data.train={verbose_data / 'sft_train.jsonl'}",
            "data.eval=null",
            f"data.prompts_eval={verbose_data / 'prompts_test.jsonl'}",
            "data.preference_eval=null",
            f"run.storage_path={runs_dir}",
            "run.name=sft-verbose",
            "training.max_steps=150",
            "training.learning_rate=2.0e-3",  # the tiny model, briefly: the rate measured here
            "training.save_steps=150",
            "training.logging_steps=50",
        ],
    )
    return stage.run(config)


def _safety_overrides(policy: str, data: Path, runs: Path | str, name: str) -> list[str]:
    return [
        f"model.name_or_path={policy}",
        f"data.prompts={data / 'prompts_train.jsonl'}",
        f"data.prompts_eval={data / 'prompts_test.jsonl'}",
        f"run.storage_path={runs}",
        f"run.name={name}",
        f"constitution={ARITHMETIC}",
        "rollout.cpus_per_worker=0.5",
    ]


def _rlaif_config(verbose_sft, verbose_data, runs_dir) -> RLAIFStageConfig:
    return load_config(
        RLAIFStageConfig,
        ROOT / "configs" / "tiny" / "rlaif.yaml",
        [
            *_safety_overrides(verbose_sft.path, verbose_data, runs_dir, "rlaif"),
            "data.max_prompts=null",
            "sampling.samples_per_prompt=4",
            "sampling.max_new_tokens=8",
            "then=[{stage: dpo, config: configs/tiny/dpo.yaml, overrides: ["
            "training.max_steps=40, training.save_steps=40, training.learning_rate=5.0e-4, "
            "data.prompts_eval=null, data.preference_eval=null, data.max_length=32]}]",
        ],
    )


@pytest.fixture(scope="module")
def rlaif_entry(verbose_sft, verbose_data, runs_dir):
    """RLAIF with the programmatic labeller on the verbose SFT model, then DPO on its pairs."""
    from pipelines.rlaif import run_rlaif

    return run_rlaif(_rlaif_config(verbose_sft, verbose_data, runs_dir))


def test_rlaif_then_dpo_lowers_the_number_only_violation_rate(
    rlaif_entry, verbose_sft, verbose_data, runs_dir
):
    from rayalign.registry import Registry

    config = _rlaif_config(verbose_sft, verbose_data, runs_dir)
    entry = rlaif_entry

    # The preference split: consistent pairs only, number-only answers chosen, provenance kept.
    rows = load_validated(str(config.run_dir / "data" / "preference_train.jsonl"), "preference")
    meta = json.loads((config.run_dir / "data" / "manifest.json").read_text())
    print("RLAIF data:", {k: v for k, v in meta.items() if k != "splits"})
    assert meta["pairs_kept"] == len(rows) >= 20
    assert meta["label_agreement_rate"] == 1.0  # the programmatic labeller has no order bias
    assert all(r["provenance"]["labeller"] == "checks:number_only,no_refusal" for r in rows)
    assert all(r["provenance"]["checkpoint"] == verbose_sft.path for r in rows)
    chosen_ok = sum(r["chosen"][0]["content"].strip().isdigit() for r in rows) / len(rows)
    assert chosen_ok > 0.9
    assert Registry(runs_dir).datasets()["rlaif-preference"].rows == len(rows)

    constitution = load_constitution(ARITHMETIC)
    prompts = str(verbose_data / "prompts_test.jsonl")
    before = measure_violations(verbose_sft.path, constitution, prompts, 16)
    after = measure_violations(entry.path, constitution, prompts, 16)
    print("held-out violation rate: SFT", before, "-> RLAIF+DPO", after)
    assert before["heldout_violation_number_only"] >= 0.5  # the SFT model breaks it measurably
    assert after["heldout_violation_number_only"] <= before["heldout_violation_number_only"] - 0.4
    registered = Registry(runs_dir).get("rlaif")
    assert registered.path == entry.path and registered.stage == "dpo"
    assert registered.metrics["heldout_violation_number_only"] == pytest.approx(
        after["heldout_violation_number_only"]
    )


def test_rules_critique_then_sft_lowers_the_number_only_violation_rate(
    verbose_sft, verbose_data, runs_dir
):
    """Constitutional AI with the rules critic (the tiny model cannot critique): its
    revisions of the verbose SFT model's answers train SFT, and the held-out violation
    rate of `number_only` falls."""
    from pipelines.constitutional import run_constitutional
    from rayalign.registry import Registry

    config = load_config(
        ConstitutionalStageConfig,
        ROOT / "configs" / "tiny" / "constitutional.yaml",
        [
            *_safety_overrides(verbose_sft.path, verbose_data, runs_dir, "cai-rules"),
            "data.max_prompts=null",
            "sampling.max_new_tokens=16",  # room for "The answer is 7." (8 cut the number)
            "constitutional.critic={kind: rules}",
            "constitutional.revisions=2",  # each round draws number_only half the time
            "then=[{stage: sft, config: configs/tiny/sft.yaml, overrides: ["
            "training.max_steps=40, training.save_steps=40, training.learning_rate=5.0e-4, "
            "data.eval=null, data.prompts_eval=null, data.preference_eval=null]}]",
        ],
    )
    entry = run_constitutional(config)
    data = config.run_dir / "data"
    meta = json.loads((data / "manifest.json").read_text())
    print("rules critic:", {k: v for k, v in meta.items() if k != "splits"}, entry.metrics)
    rows = load_validated(str(data / "sft_train.jsonl"), "language_modeling")
    assert len(rows) == meta["revised"] >= 20
    assert all(r["messages"][-1]["content"].lstrip("-").isdigit() for r in rows)
    assert all(r["provenance"]["critic"] == "rules" for r in rows)
    before = meta["policy_heldout_violation_number_only"]
    after = entry.metrics["heldout_violation_number_only"]
    print(f"held-out number_only violation rate: SFT {before:.2f} -> rules CAI + SFT {after:.2f}")
    # When written: 1.00 -> 0.00, from 48 revised answers of 80. A first run whose answers
    # were cut at 8 tokens (3 revised) also reached 0.00: -0.4 is far outside the spread.
    assert before >= 0.5 and after <= before - 0.4
    assert Registry(runs_dir).get("cai-rules").path == entry.path


@pytest.fixture(scope="module")
def critic_endpoint(ray_local, verbose_sft, rlaif_entry, tmp_path_factory):
    """`rayalign serve`'s app serving the verbose SFT checkpoint and the RLAIF one."""
    from ray import serve

    from rayalign.cluster import free_port
    from rayalign.registry import Registry
    from serving.config import ServingConfig
    from serving.deploy import INGRESS_APP, RegistryWatch, start_endpoint, wait_running

    registry = tmp_path_factory.mktemp("critic-registry")
    Registry(registry).register(verbose_sft)
    Registry(registry).register(rlaif_entry)
    config = ServingConfig(
        registry=str(registry),
        port=free_port(),
        chat={"max_model_len": 256},
        watch_interval_s=None,
    )
    start_endpoint(config, wait=False)  # the ingress starts beside the engines
    RegistryWatch(config).sync()
    wait_running([INGRESS_APP])
    yield f"http://127.0.0.1:{config.port}/v1", verbose_sft.name
    serve.shutdown()


def test_critique_and_revise_against_a_live_endpoint(
    critic_endpoint, verbose_sft, verbose_data, runs_dir
):
    from pipelines.constitutional import run_constitutional
    from pipelines.principle_checks import CHECKS

    base_url, _ = critic_endpoint
    config = load_config(
        ConstitutionalStageConfig,
        ROOT / "configs" / "tiny" / "constitutional.yaml",
        [
            *_safety_overrides(verbose_sft.path, verbose_data, runs_dir, "cai"),
            "data.max_prompts=24",
            "sampling.max_new_tokens=8",
            # The RLAIF checkpoint answers with the number only: its revisions can pass the
            # gate (the verbose SFT one's sentences would be rejected).
            f"constitutional.critic={{kind: endpoint, base_url: '{base_url}', model: rlaif, "
            "max_tokens: 12, concurrency: 4}",
            "constitutional.revisions=2",
            "then=[]",
        ],
    )
    entry = run_constitutional(config)
    print("critique and revise:", entry.metrics)
    assert entry.metrics["answers"] == entry.metrics["revised"] + entry.metrics["unchanged"]
    data = config.run_dir / "data"
    sft_rows = load_validated(str(data / "sft_train.jsonl"), "language_modeling")
    assert entry.path == str(data / "sft_train.jsonl") and entry.rows == len(sft_rows) > 0
    for row in sft_rows:
        origin = row["provenance"]
        assert origin["critic"] == f"{base_url}#rlaif"
        assert origin["checkpoint"] == verbose_sft.path
        assert origin["constitution"] == "arithmetic"
        assert len(origin["chain"]) == 2 and len(origin["principles"]) == 2
        assert set(origin["principles"]) <= {"number_only", "no_refusal"}
        assert all(step["critique"] is not None for step in origin["chain"])
        assert row["messages"][-1]["content"] != origin["original"].strip()
        # What was kept passed the gate: every accepted revision follows the principle it
        # was asked to fix, and the final answer is the last accepted revision.
        accepted = [s for s in origin["chain"] if s["verdict"] == "accepted"]
        assert accepted and all(CHECKS[s["principle"]]("", s["revision"]) for s in accepted)
        assert row["messages"][-1]["content"] == accepted[-1]["revision"].strip()
    preference = data / "preference_train.jsonl"
    pref_rows = load_validated(str(preference), "preference")
    assert len(pref_rows) == len(sft_rows)
    for row in pref_rows:
        assert row["rejected"][0]["content"] == row["provenance"]["original"]
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]


def test_the_rlaif_checkpoint_is_served_and_answers_with_the_number_only(critic_endpoint):
    import httpx

    from pipelines.principle_checks import number_only

    base_url, sft_name = critic_endpoint
    models = httpx.get(f"{base_url}/models", timeout=30).json()["data"]
    assert {m["id"] for m in models} == {sft_name, "rlaif"}
    answers = {}
    for model in (sft_name, "rlaif"):
        reply = httpx.post(
            f"{base_url}/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": "What is 4 + 3?"}],
                "max_tokens": 16,
                "temperature": 0,
            },
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        answers[model] = reply.json()["choices"][0]["message"]["content"]
    print("served answers:", answers)
    assert not number_only("", answers[sft_name]) and number_only("", answers["rlaif"])


# The full labelling prompt outgrows the tiny served model's 256-token context (the
# endpoint answers 400, which EndpointError reports); a compact template fits.
COMPACT = """name: compact
principles:
  - name: number_only
    check: number_only
    critique_request: Any words?
    revision_request: Only the number.
labelling:
  template: "{principles} {prompt} A: {response_a} B: {response_b} Better?"
"""


def test_a_model_labeller_over_the_endpoint_judges_both_orders(critic_endpoint, tmp_path):
    from pipelines.chat_models import EndpointChat
    from pipelines.labelling import ModelLabeller, label_pairs
    from pipelines.safety_config import ChatModelSpec

    base_url, model = critic_endpoint
    chat = EndpointChat(
        ChatModelSpec(kind="endpoint", base_url=base_url, model=model, max_tokens=4)
    )
    (tmp_path / "compact.yaml").write_text(COMPACT)
    labeller = ModelLabeller(chat, load_constitution(tmp_path / "compact.yaml"))
    prompts = [[{"role": "user", "content": f"What is {i} + 1?"}] for i in range(4)]
    pairs = [(i, str(i + 1), f"The answer is {i + 1}.") for i in range(4)]
    try:
        kept, stats = label_pairs(labeller, prompts, pairs)
    finally:
        chat.close()
    assert stats.pairs == 4 and stats.kept + stats.ties + stats.inconsistent == 4
    for p in kept:  # one pair per prompt here: a kept pair is that prompt's two answers
        _, x, y = pairs[p.prompt_index]
        assert {p.chosen, p.rejected} == {x, y}


def test_a_checkpoint_critic_answers_like_greedy_transformers(ray_local, verbose_sft):
    from pipelines.chat_models import CheckpointChat
    from pipelines.evaluate import generate_hf
    from pipelines.safety_config import ChatModelSpec
    from rayalign.rl_config import RolloutConfig

    spec = ChatModelSpec(kind="checkpoint", path=verbose_sft.path, max_tokens=8)
    critic = CheckpointChat(spec, RolloutConfig(cpus_per_worker=0.5))
    prompts = [[{"role": "user", "content": f"What is {i} + 2?"}] for i in range(4)]
    try:
        replies = critic.complete(prompts)
    finally:
        critic.close()
    expected = generate_hf(verbose_sft.path, prompts, max_new_tokens=8)
    print("vLLM critic:", replies, "transformers:", expected)
    assert sum(a.strip() == b.strip() for a, b in zip(replies, expected, strict=True)) >= 3


@pytest.mark.parametrize("where", ["local", "s3"])
def test_critique_and_revise_continues_where_a_failed_attempt_stopped(
    where, verbose_sft, verbose_data, runs_dir, capsys
):
    """The critic (a real HTTP server speaking the chat API) goes down for good after 16
    requests: the attempt fails having kept the policy's answers and two batches of revised
    chains. A torn last line is dropped, a rerun with other settings is refused, and the
    rerun continues: it asks the critic only about the rest, and its data equals that of a
    run that never failed. With the run in a bucket (a local S3 server), what the rerun
    continues from is what the bucket holds."""
    from pipelines.chat_models import EndpointError
    from pipelines.constitutional import run_constitutional
    from rayalign import storage
    from tests.http_stub import failing_server
    from tests.s3_server import s3_server

    runs = str(runs_dir) if where == "local" else "s3://rayalign/runs"

    def config(name: str, url: str, *extra: str) -> ConstitutionalStageConfig:
        return load_config(
            ConstitutionalStageConfig,
            ROOT / "configs" / "tiny" / "constitutional.yaml",
            [
                *_safety_overrides(verbose_sft.path, verbose_data, runs, name),
                "data.prompts_eval=null",
                "data.max_prompts=16",
                "sampling.max_new_tokens=8",
                f"constitutional.critic={{kind: endpoint, base_url: '{url}', model: m, "
                "max_retries: 0, concurrency: 2}",
                "constitutional.gate=false",  # the stub's replies are echoes, not answers
                "save_every=4",
                "then=[]",
                *extra,
            ],
        )

    def data(cfg, name: str) -> str:
        return storage.join(cfg.run_dir, "data", name)

    def chain_ids(journal: str) -> list[int]:
        return [json.loads(x)["id"] for x in storage.read_text(journal).splitlines()]

    def sft_rows(cfg) -> list[dict]:
        text = storage.read_text(data(cfg, "sft_train.jsonl"))
        rows = [json.loads(x) for x in text.splitlines()]
        for row in rows:
            row["provenance"].pop("run")
        return rows

    with failing_server() as server, s3_server() if where == "s3" else contextlib.nullcontext():
        # Two batches of 4 chains, each a critique and a revision request; then 400s.
        server.script, server.then = [200] * 16, 400
        cfg = config(f"cai-resume-{where}", server.url)
        capsys.readouterr()
        with pytest.raises(EndpointError, match="HTTP 400"):
            run_constitutional(cfg)
        assert (
            f"[cai-resume-{where}] stopped: kept the policy's answers to 16 prompts, 8 revised "
            f"answers in {storage.join(cfg.run_dir, 'data')}; rerun the same command to continue"
        ) in capsys.readouterr().out
        sampled = storage.read_text(data(cfg, "answers.jsonl"))
        answers = [json.loads(x)["answers"] for x in sampled.splitlines()]
        total = sum(1 for texts in answers for t in texts if t.strip())
        assert len(answers) == 16 and total > 8
        journal = data(cfg, "chains.jsonl")
        assert chain_ids(journal) == list(range(8))
        storage.append_text(journal, '{"id": 8, "chain": {"prompt_in')  # killed mid-append

        with pytest.raises(ValueError, match=r"revisions changed"):
            run_constitutional(config(cfg.run.name, server.url, "constitutional.revisions=2"))

        server.then, before = 200, server.requests
        capsys.readouterr()
        entry = run_constitutional(cfg)
        assert "reusing the policy's answers" in capsys.readouterr().out  # not sampled again
        assert server.requests - before == 2 * (total - 8)  # only the chains not kept
        assert chain_ids(journal) == list(range(total))
        assert storage.read_text(data(cfg, "answers.jsonl")) == sampled
        assert entry.rows == len(sft_rows(cfg)) == total
        assert entry.path == data(cfg, "sft_train.jsonl")

        # A run that never failed, from the same answers, writes the same rows.
        straight = config(f"cai-straight-{where}", server.url)
        storage.write_text(data(straight, "answers.jsonl"), sampled)
        run_constitutional(straight)
        assert sft_rows(straight) == sft_rows(cfg)
