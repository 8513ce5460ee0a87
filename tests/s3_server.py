"""A local S3-compatible server (moto's server mode) on a free loopback port: the real S3
protocol for the storage-URI tests, no AWS account and no network."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rayalign.cluster import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance metadata service
}


@contextmanager
def s3_server(buckets: tuple[str, ...] = ("rayalign",)) -> Iterator[dict[str, str]]:
    """Run the server for the block, with `buckets` created. Yields the environment that
    points clients at it (AWS_ENDPOINT_URL and throwaway credentials: Arrow, boto3 and
    Ray Train read them); this process's environment has it meanwhile."""
    import boto3

    port = free_port()
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        deadline = time.monotonic() + 60
        while True:
            try:
                client.list_buckets()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the local S3 server did not come up") from None
                time.sleep(0.2)
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.terminate()
        server.wait(timeout=10)
