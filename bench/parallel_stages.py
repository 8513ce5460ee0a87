"""Why the demo runs two one-CPU stages at once after SFT: training steps per second of
the `small` model through the machine's cores, one process with two torch threads against
two one-thread processes side by side (and one alone), in the same run.

Each process does the same AdamW steps (batch 32 x 40 tokens) after a warm-up and reports
its median step time.

    python -m bench.parallel_stages [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.common import model_dir, write

_WORKER = """
import json, statistics, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
opt = torch.optim.AdamW(model.parameters(), 1e-4)
x = torch.randint(0, 1000, (32, 40), generator=torch.Generator().manual_seed(0))
def step():
    model(input_ids=x, labels=x).loss.backward(); opt.step(); opt.zero_grad()
for _ in range(3):
    step()
times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
print(json.dumps(statistics.median(times)))
"""


def _step_seconds(path: str, threads: int, steps: int, processes: int) -> list[float]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, path, str(threads), str(steps)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(processes)
    ]
    return [json.loads(p.communicate()[0]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    path = model_dir("small")
    two_threads = _step_seconds(path, 2, args.steps, 1)[0]
    one_thread = _step_seconds(path, 1, args.steps, 1)[0]
    side_by_side = _step_seconds(path, 1, args.steps, 2)
    rows = [
        {"setup": "1 process x 2 threads", "step_s": two_threads, "steps_per_s": 1 / two_threads},
        {"setup": "1 process x 1 thread", "step_s": one_thread, "steps_per_s": 1 / one_thread},
        {
            "setup": "2 processes x 1 thread",
            "step_s": max(side_by_side),
            "steps_per_s": sum(1 / s for s in side_by_side),
        },
    ]
    rows = [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    write(
        "parallel_stages",
        {
            "config": vars(args),
            "rows": rows,
            "two_one_thread_vs_one_two_thread": round(
                rows[2]["steps_per_s"] / rows[0]["steps_per_s"], 2
            ),
        },
    )


if __name__ == "__main__":
    main()
