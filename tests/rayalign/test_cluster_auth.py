"""The clusters rayalign starts for users (demo, pipeline) have Ray's token auth on: a
client without the token is refused, one with it is served."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a head node and a refused driver: ~40 s

# The demo's kind of cluster (`local_head_node` with the user's environment), in its own
# process: turning auth on changes the process's Ray config.
PROGRAM = """
import json, os, subprocess, sys, urllib.error, urllib.request
from rayalign.cluster import default_token_path, local_head_node

def status(url, headers):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code

with local_head_node(num_cpus=1) as head:
    token = default_token_path().read_text().strip()
    jobs = f"{head.jobs}/api/jobs/"
    # A driver that does not send the token, in a process of its own.
    probe = "import ray; ray.init(address=sys.argv[1]); print('connected')"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.run(
        [sys.executable, "-c", "import sys; " + probe, head.gcs],
        env=env, capture_output=True, text=True, timeout=120,
    )
    print(json.dumps({
        "token_mode": oct(default_token_path().stat().st_mode & 0o777),
        "this_process": os.environ.get("RAY_AUTH_MODE"),
        "no_token": status(jobs, {}),
        "wrong_token": status(jobs, {"Authorization": "Bearer not-the-token"}),
        "token": status(jobs, {"Authorization": f"Bearer {token}"}),
        "driver_without_token": "connected" in driver.stdout,
    }))
"""


def test_a_client_without_the_token_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)  # the token is generated here on first use
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {
        "token_mode": "0o600",
        "this_process": "token",
        "no_token": 401,
        "wrong_token": 403,
        "token": 200,
        "driver_without_token": False,
    }
