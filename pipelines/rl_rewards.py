"""The RL stage's reward functions, checked on the driver before any actor starts.

Each configured function is resolved (a built-in or `package.module:function` imported),
its signature is checked against the keyword call it will get (TRL's `reward_funcs`
call, with the prompt files' column names), and it is called once on the first prompts
with their ground truth (or an empty string) as the completion, so that a function that
raises, returns the wrong number of values or a non-finite value fails here, by name,
and not minutes later inside a scorer.
"""

from __future__ import annotations

import os
import sys

from pipelines.evaluate import PromptRows, read_prompt_rows
from rayalign.config import EVAL_SPLIT
from rayalign.reward_functions import RewardFunction, resolve
from rayalign.rl_config import PPOStageConfig

DRY_RUN_ROWS = 2


def check_reward_functions(config: PPOStageConfig) -> list[RewardFunction]:
    """The resolved reward functions; raises RewardFunctionError naming the first bad one.

    The working directory goes on the import path first, as `uvicorn module:app` does, so
    `rayalign train ppo` finds `my_rewards:fn` beside the config; Ray's workers on this
    node start with the driver's import path.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    files = [read_prompt_rows(config.data.prompts)]
    if config.data.prompts_eval:
        files.append(read_prompt_rows(config.data.prompts_eval, split=EVAL_SPLIT))
    functions = [resolve(name) for name in config.rewards.functions]
    for fn in functions:
        for rows in files:
            fn.check_signature(sorted({k for row in rows.columns for k in row}))
            dry_run(fn, rows)
    return functions


def dry_run(fn: RewardFunction, rows: PromptRows) -> None:
    """Call `fn` as a scorer would on the first rows, answered with their ground truth."""
    n = min(DRY_RUN_ROWS, len(rows.conversations))
    names = sorted({k for row in rows.columns[:n] for k in row})
    texts = [t or "" for t in rows.truths[:n]]
    if rows.conversational:
        prompts: list = rows.conversations[:n]
        completions: list = [[{"role": "assistant", "content": t}] for t in texts]
    else:
        prompts = [c[-1]["content"] for c in rows.conversations[:n]]
        completions = texts
    columns = {k: [row.get(k) for row in rows.columns[:n]] for k in names}
    fn(prompts, completions, [[] for _ in range(n)], columns)
