"""`make bench`: run every benchmark in turn; each writes bench/results/<name>.json."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    ["bench.rollout_throughput", "--preset", "tiny"],
    ["bench.rollout_throughput", "--preset", "small"],
    ["bench.sampling_overhead"],
    ["bench.weight_sync"],
    ["bench.rl_step_phases"],
    ["bench.rl_vs_trl"],
    ["bench.serve_load"],
    ["bench.serve_startup"],
    ["bench.parallel_stages"],
    ["bench.offline_overhead"],
    ["bench.learner_efficiency"],
    ["bench.learner_memory"],
    ["bench.learner_parallel"],
    ["bench.lora_sync"],
    ["bench.soak"],
]


def main() -> int:
    failed = []
    for bench in BENCHMARKS:
        print(f"== {' '.join(bench)}", flush=True)
        if subprocess.run([sys.executable, "-m", *bench]).returncode:
            failed.append(bench[0])
    # The doc shows whatever results exist, including older ones of a failed benchmark.
    subprocess.run([sys.executable, "-m", "bench.report"], check=True)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
