"""cluster.yaml is a valid, consistent cluster; configs/cluster/ fit its node types; the
commands docs/cluster.md shows exist."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.doc_commands import doc_commands

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())
NODE_TYPES = CLUSTER["available_node_types"]
WORKER_TYPES = {k: v for k, v in NODE_TYPES.items() if k != CLUSTER["head_node_type"]}


def test_cluster_yaml_follows_rays_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(CLUSTER, schema)
    assert CLUSTER["provider"]["type"] == "aws"


def test_node_types_are_consistent():
    head = NODE_TYPES[CLUSTER["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head node is the CPU node"
    assert {"gpu_learner", "gpu_rollout"} <= set(WORKER_TYPES)
    for name, node in WORKER_TYPES.items():
        assert 0 <= node["min_workers"] <= node["max_workers"], name
        assert node["resources"]["GPU"] >= 1, name
    assert NODE_TYPES["gpu_learner"]["resources"]["learner"] >= 1
    assert NODE_TYPES["gpu_rollout"]["resources"]["rollout"] >= 1
    assert NODE_TYPES["gpu_rollout"]["max_workers"] > NODE_TYPES["gpu_rollout"]["min_workers"]
    assert sum(n["max_workers"] for n in WORKER_TYPES.values()) <= CLUSTER["max_workers"]
    # The dashboard and job API stay on the head's loopback.
    start = " ".join(CLUSTER["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    assert any("rayalign[gpu" in c for c in CLUSTER["setup_commands"])
    # The autoscaler on the head reaches EC2 through boto3.
    assert any("boto3" in c for c in CLUSTER["head_setup_commands"])


def _stage_config(path: Path):
    from pipelines.stage_registry import load_stage
    from rayalign.config import load_config
    from rayalign.rl_config import PPOStageConfig
    from serving.config import ServingConfig

    name = path.stem
    if name in ("grpo", "ppo"):
        return load_config(PPOStageConfig, path)
    if name == "serve":
        return load_config(ServingConfig, path)
    return load_config(load_stage(name).config_cls, path)


def _fits(demand: dict[str, float], count: int) -> bool:
    """Whether `count` units of `demand` fit on the worker nodes that can hold one."""
    capacity = 0
    for node in WORKER_TYPES.values():
        res = node["resources"]
        if all(res.get(k, 0) >= v for k, v in demand.items() if v):
            per_node = min(int(res[k] // v) for k, v in demand.items() if v)
            capacity += per_node * node["max_workers"]
    return capacity >= count


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "cluster").glob("*.yaml")), ids=str)
def test_cluster_configs_load_and_fit_the_node_types(path):
    config = _stage_config(path)
    demands: list[tuple[dict[str, float], int]] = []
    if hasattr(config, "resources"):  # an offline stage on Ray Train
        r = config.resources
        gpu = 1.0 if r.use_gpu else 0.0
        demands.append(
            ({"CPU": r.cpus_per_worker, "GPU": gpu, **r.custom_resources}, r.num_workers)
        )
    elif hasattr(config, "rollout"):  # RL: generation workers and learners
        r, lc = config.rollout, config.learner
        most = r.autoscale.max_workers if r.autoscale else r.num_workers
        demands.append(
            ({"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker, **r.custom_resources}, most)
        )
        demands.append(
            (
                {"CPU": lc.cpus_per_learner, "GPU": lc.gpus_per_learner, **lc.custom_resources},
                lc.num_learners,
            )
        )
    else:  # serving
        for options in (config.chat, config.reward):
            gpu = 1.0 if options.use_gpu else 0.0
            demand = {"CPU": options.cpus_per_replica, "GPU": gpu, **options.custom_resources}
            demands.append((demand, options.replicas.max_replicas))
    for demand, count in demands:
        assert demand.get("GPU", 0) >= 1, f"{path.name}: cluster configs run on GPUs"
        assert _fits(demand, count), f"{path.name}: {count} x {demand} do not fit cluster.yaml"


def _doc_commands() -> list[list[str]]:
    return doc_commands("docs/cluster.md")


def test_docs_rayalign_commands_parse():
    from pipelines.cli import build_parser

    commands = [c for c in _doc_commands() if "rayalign" in c]
    assert len(commands) >= 6
    for words in commands:
        args = words[words.index("rayalign") + 1 :]
        parser = build_parser()
        parsed, extra = parser.parse_known_args(args)  # SystemExit on an unknown command/flag
        assert not extra or parsed.command == "train", words
        if getattr(parsed, "config", None):
            assert (ROOT / parsed.config).is_file(), words


def test_docs_job_entrypoints_exist_and_their_configs_load():
    from pipelines.cli import build_parser

    entrypoints = [c for c in _doc_commands() if "python" in c and "-m" in c]
    assert len(entrypoints) >= 4
    for words in entrypoints:
        # The one job entrypoint form: python -m pipelines train STAGE --config FILE.
        assert words[words.index("-m") + 1] == "pipelines", words
        parsed, _ = build_parser().parse_known_args(words[words.index("-m") + 2 :])
        assert parsed.command == "train", words
        _stage_config(ROOT / parsed.config)


def test_docs_ray_commands_exist():
    """Each `ray` subcommand the docs use answers --help (the `ray` CLI's click group, in
    this process: a `ray` process per subcommand cost 3 s of imports each)."""
    from click.testing import CliRunner
    from ray.scripts.scripts import cli

    subcommands = sorted(
        {tuple(c[1:3]) if c[1] == "job" else (c[1],) for c in _doc_commands() if c[0] == "ray"}
    )
    assert ("up",) in subcommands and ("job", "submit") in subcommands
    for sub in subcommands:
        result = CliRunner().invoke(cli, [*sub, "--help"])
        assert result.exit_code == 0, (sub, result.output[-500:])
    assert CliRunner().invoke(cli, ["no-such-command", "--help"]).exit_code != 0


def _named_paths(value) -> set[str]:
    """Every storage URI or absolute path in a config's values."""
    if isinstance(value, dict):
        return set().union(*(_named_paths(v) for v in value.values()), set())
    if isinstance(value, list):
        return set().union(*(_named_paths(v) for v in value), set())
    if isinstance(value, str) and (value.startswith("/") or "://" in value):
        return {value}
    return set()


def test_every_path_the_cluster_configs_read_is_written_by_a_documented_step(tmp_path):
    """Walking docs/cluster.md in order on a real cluster leaves nothing missing: each
    bucket path a config in configs/cluster/ reads is written by the docs' data step
    (`rayalign data make --out`, run here to see which files it writes) or registered by
    another config's stage; no config names a node's local disk."""
    bucket = {"$BUCKET": "MY-BUCKET"}  # the docs' sed puts the same bucket in both
    produced: set[str] = set()
    makes = [c for c in _doc_commands() if c[:1] != ["sed"] and "data" in c and "make" in c]
    assert makes, "docs/cluster.md writes no task data"
    for words in makes:
        args = words[words.index("rayalign") + 1 :]
        out = args[args.index("--out") + 1]
        for old, new in bucket.items():
            out = out.replace(old, new)
        local = tmp_path / "data"
        args[args.index("--out") + 1] = str(local)
        subprocess.run(
            [sys.executable, "-m", "pipelines", *args, "--n-train", "20", "--n-test", "10"],
            check=True,
            capture_output=True,
        )
        produced |= {f"{out}/{p.name}" for p in local.iterdir()}
    configs = {p.name: _stage_config(p) for p in sorted((ROOT / "configs/cluster").glob("*.yaml"))}
    for config in configs.values():
        if hasattr(config, "run"):  # a stage: its registry and its final checkpoint
            produced |= {config.run.storage_path, f"{config.run.run_dir}/final"}
    for name, config in configs.items():
        written = {config.run.storage_path} if hasattr(config, "run") else set()
        for path in _named_paths(config.model_dump(mode="json")) - written:
            assert path.startswith("s3://"), f"{name}: {path} is on one node's disk"
            assert path in produced, f"{name}: nothing in docs/cluster.md writes {path}"
