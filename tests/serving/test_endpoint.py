"""The endpoint as users meet it: the official `openai` client and plain HTTP, live server."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from rayalign.data.io import read_jsonl
from tests.serving.conftest import API_KEY

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is 12 + 7?"}]


def _greedy(client, model: str, max_tokens: int = 12) -> str:
    reply = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=max_tokens, temperature=0
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    return reply.choices[0].message.content


def test_models_lists_every_registered_checkpoint(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"base", "sft", "rm"}
    assert models["rm"].model_extra["metadata"]["kind"] == "reward"
    assert models["base"].model_extra["metadata"]["stage"] == "base"
    assert models["sft"].model_extra["metadata"]["metrics"]["heldout_accuracy"] > 0
    assert client.models.retrieve("sft").id == "sft"
    # Stage, step, parent and metrics, but nothing of the server's filesystem.
    for model in models.values():
        assert "path" not in model.model_extra["metadata"]
        assert "/" not in json.dumps(model.model_extra["metadata"]["metrics"])


@pytest.mark.parametrize("model", ["base", "sft"])
def test_chat_and_streaming_chat_agree(client, model):
    whole = _greedy(client, model)
    stream = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=12, temperature=0, stream=True
    )
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(chunks) > 1
    assert "".join(chunks) == whole


def test_served_stages_keep_their_measured_accuracy(client, sft_entry, easy_data):
    from rayalign.rewards import exact_match_reward

    rows = read_jsonl(easy_data / "prompts_test.jsonl")
    correct = {"base": 0, "sft": 0}
    for row in rows:
        for model in correct:
            reply = client.chat.completions.create(
                model=model, messages=row["prompt"], max_tokens=16, temperature=0
            )
            answer = reply.choices[0].message.content
            correct[model] += exact_match_reward(answer, row["ground_truth"]) == 1.0
    accuracy = {m: c / len(rows) for m, c in correct.items()}
    print("served held-out accuracy:", accuracy)
    # The same greedy answers as measured at registration (HF generate): the served
    # checkpoint is the trained one, and the random model it started from is not.
    assert abs(accuracy["sft"] - sft_entry.metrics["heldout_accuracy"]) <= 0.04
    assert accuracy["base"] <= 0.05 < accuracy["sft"]
    assert _greedy(client, "base", 16) != _greedy(client, "sft", 16)


def test_completions_route(client):
    reply = client.completions.create(model="base", prompt="What is", max_tokens=5, temperature=0)
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert reply.usage.completion_tokens >= 1


def test_reward_route_prefers_chosen_on_heldout_pairs(http, rm_entry, easy_pairs):
    rows = read_jsonl(easy_pairs / "preference_test.jsonl")
    wins = 0
    for row in rows:
        body = {
            "model": "rm",
            "messages": row["prompt"],
            "completions": [row["chosen"][0]["content"], row["rejected"][0]["content"]],
        }
        reply = http.post("/v1/score", json=body)
        assert reply.status_code == 200, reply.text
        chosen, rejected = (d["score"] for d in reply.json()["data"])
        wins += chosen > rejected
    rate = wins / len(rows)
    offline = rm_entry.metrics["heldout_pairwise_accuracy"]
    print(f"served reward model prefers chosen on {rate:.3f} of {len(rows)} held-out pairs")
    # The served scores are the trained model's: same ranking as measured offline.
    assert abs(rate - offline) <= 0.02
    assert rate >= 0.8  # 0.87 offline when written


def test_rl_remote_reward_reads_the_served_reward_model(endpoint, rm_entry, easy_pairs):
    """The RL scorers' HTTP client (`rewards.remote`) against this endpoint: the scores
    are the reward model's own, as scored in-process."""
    from rayalign.models.remote_reward import RemoteRewardModel
    from rayalign.models.reward import load_reward_model, score

    rows = read_jsonl(easy_pairs / "preference_test.jsonl")[:6]
    prompts = [r["prompt"] for r in rows for _ in range(2)]
    answers = [c[0]["content"] for r in rows for c in (r["chosen"], r["rejected"])]
    remote = RemoteRewardModel(endpoint.base_url, "rm", api_key=API_KEY)
    served = remote.score(prompts, answers)
    model, tokenizer = load_reward_model(rm_entry.path)
    local = score(
        model, tokenizer, prompts, [[{"role": "assistant", "content": a}] for a in answers]
    )
    assert served == pytest.approx(local.tolist(), abs=1e-3)


def test_lora_checkpoint_published_while_another_streams_answers_like_it_measured_then_removed(
    endpoint, client, http, lora_sft_entry, bare_data
):
    """The LoRA SFT checkpoint (adapters merged at registration), published while another
    model streams, gives the held-out answers its registration measured; then it is
    removed while requests to it race the removal (one engine start for all of it: half
    a minute on two cores)."""
    from rayalign.registry import Registry
    from rayalign.rewards import exact_match_reward
    from serving.deploy import RegistryWatch

    name = lora_sft_entry.name
    results: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def keep_streaming():
        while not done.is_set():
            try:
                stream = client.chat.completions.create(
                    model="base",
                    messages=QUESTION,
                    max_tokens=200,
                    temperature=0,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
                chunks, finish = 0, None
                for c in stream:
                    if c.choices:
                        chunks += bool(c.choices[0].delta.content)
                        finish = c.choices[0].finish_reason or finish
                results.append((chunks, finish))
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)
                return

    thread = threading.Thread(target=keep_streaming)
    thread.start()
    try:
        Registry(endpoint.registry).register(lora_sft_entry)
        added, removed = RegistryWatch(endpoint.config).sync()
    finally:
        done.set()
        thread.join(timeout=300)
    try:
        assert added == [name] and removed == []
        assert not errors, errors
        assert len(results) >= 2, "the stream did not overlap the publication"
        assert all(finish == "length" for _, finish in results), results
        deadline = time.time() + 10  # the ingress refreshes its model list every second
        while name not in {m.id for m in client.models.list().data}:
            assert time.time() < deadline, "the published model never appeared in /v1/models"
            time.sleep(0.5)
        rows = read_jsonl(bare_data / "prompts_test.jsonl")
        correct = 0
        for row in rows:
            reply = client.chat.completions.create(
                model=name, messages=row["prompt"], max_tokens=16, temperature=0
            )
            correct += exact_match_reward(reply.choices[0].message.content, row["ground_truth"])
        accuracy = correct / len(rows)
        print(f"served LoRA checkpoint: held-out exact match {accuracy:.2f}")
        assert abs(accuracy - lora_sft_entry.metrics["heldout_accuracy"]) <= 0.04
        _remove_while_requests_race(endpoint, client, http, name)
    finally:  # the endpoint is shared by the package
        if name in Registry(endpoint.registry).entries():
            Registry(endpoint.registry).remove(name)
            RegistryWatch(endpoint.config).sync()


def _remove_while_requests_race(endpoint, client, http, name: str) -> None:
    """Remove the served model `name` (answered once, so the ingress holds a handle to it):
    the other models stay."""
    from rayalign.registry import Registry
    from serving.deploy import RegistryWatch, remove

    # Requests that race the removal, some before the ingress's served list (refreshed
    # every second) sees it: each gets its answer or a 404, never a 500 or a hang.
    replies: list[httpx.Response | BaseException] = []
    removed = threading.Event()
    body = {"model": name, "messages": QUESTION, "max_tokens": 2}

    def keep_asking():
        quiet_since = None
        while quiet_since is None or time.time() - quiet_since < 2.0:
            try:
                replies.append(http.post("/v1/chat/completions", json=body, timeout=60))
            except BaseException as err:  # noqa: BLE001 - reported below
                replies.append(err)
                return
            if removed.is_set() and quiet_since is None:
                quiet_since = time.time()

    askers = [threading.Thread(target=keep_asking) for _ in range(4)]
    for asker in askers:
        asker.start()
    try:
        Registry(endpoint.registry).remove(name)
        assert RegistryWatch(endpoint.config).sync() == ([], [name])
    finally:
        removed.set()
        for asker in askers:
            asker.join(timeout=120)
    assert not any(a.is_alive() for a in askers), "a request hung after the removal"
    statuses = [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in replies]
    print("replies racing the removal:", {s: statuses.count(s) for s in set(statuses)})
    assert set(statuses) <= {200, 404}, statuses
    assert statuses and statuses[-1] == 404, statuses
    for reply in replies:
        if reply.status_code == 404:
            assert reply.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        _greedy(client, name)
    _greedy(client, "base")
    assert remove(name) is False


ROUTES = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/base", None),
    ("GET", "/health", None),
    ("POST", "/v1/chat/completions", {"model": "base", "messages": QUESTION, "max_tokens": 2}),
    ("POST", "/v1/completions", {"model": "base", "prompt": "What", "max_tokens": 2}),
    ("POST", "/v1/score", {"model": "rm", "messages": QUESTION, "completions": ["19"]}),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_needs_the_key(endpoint, method, path, body):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        reply = httpx.request(method, endpoint.url + path, json=body, headers=headers, timeout=60)
        assert reply.status_code == 401, (headers, reply.text)
        assert reply.json()["error"]["code"] == "invalid_api_key"
    good = {"Authorization": f"Bearer {API_KEY}"}
    reply = httpx.request(method, endpoint.url + path, json=body, headers=good, timeout=60)
    assert reply.status_code == 200, reply.text


def _error(reply: httpx.Response, status: int) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["message"] and error["type"]
    return error


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(http, client):
    with pytest.raises(openai.NotFoundError, match="nope"):
        client.chat.completions.create(model="nope", messages=QUESTION, max_tokens=2)
    _error(
        http.post("/v1/score", json={"model": "base", "messages": QUESTION, "completions": ["1"]}),
        404,
    )
    _error(
        http.post(
            "/v1/chat/completions",
            content=b'{"model": "base", "messages": [',
            headers={"Content-Type": "application/json"},
        ),
        400,
    )
    missing = _error(http.post("/v1/chat/completions", json={"model": "base"}), 400)
    assert "messages" in missing["message"]
    _error(http.post("/v1/score", json={"model": "rm", "messages": QUESTION}), 400)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="base", messages=QUESTION, max_tokens=100_000)
    # The user-facing message only: nothing of Ray's internals or exception classes.
    too_long = {"model": "base", "messages": QUESTION, "max_tokens": 100_000}
    reply = http.post("/v1/chat/completions", json=too_long)
    error = _error(reply, 400)
    assert error["type"] == "invalid_request_error" and reply.headers["x-request-id"]
    for leaked in ("Internal exception", "ray.llm", "_internal", "Request ID", "Error:"):
        assert leaked not in error["message"], error
    bad_utf8 = http.post(
        "/v1/chat/completions",
        content=b'{"model": "base", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        headers={"Content-Type": "application/json"},
    )
    _error(bad_utf8, 400)
    wizard = [{"role": "wizard", "content": "What is 1 + 1?"}]
    role = _error(
        http.post("/v1/chat/completions", json={"model": "base", "messages": wizard}), 400
    )
    assert role["param"] == "messages[0].role" and "wizard" in role["message"]
    _error(http.get("/v1/no-such-route"), 404)
    huge = {"model": "base", "messages": [{"role": "user", "content": "x" * 100_000}]}
    error = _error(http.post("/v1/chat/completions", json=huge), 413)
    assert error["code"] == "request_too_large"

    def chunked():
        yield json.dumps(huge).encode()

    _error(http.post("/v1/chat/completions", content=chunked()), 413)
    _greedy(client, "base")


def test_print_config_is_a_valid_serve_config(endpoint):
    import subprocess
    import sys

    import yaml
    from ray.serve.schema import ServeDeploySchema

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines",
            "serve",
            "--registry",
            str(endpoint.registry),
            "--print-config",
            "--set",
            "chat.replicas.max_replicas=3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = yaml.safe_load(proc.stdout)
    ServeDeploySchema.model_validate(config)
    apps = {a["name"]: a for a in config["applications"]}
    assert apps["rayalign-ingress"]["route_prefix"] == "/"
    assert "api_key" not in json.dumps(config).replace("api_key_env", "")
    chat = apps["rayalign-chat-base"]
    assert chat["route_prefix"] is None
    assert chat["args"]["options"]["replicas"]["max_replicas"] == 3
    assert apps["rayalign-reward-rm"]["import_path"] == "serving.model_apps:build_reward_app"
