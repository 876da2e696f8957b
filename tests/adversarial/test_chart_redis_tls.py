"""Issue 14, item 1 (optional TLS): the URLs the chart renders with ``redis.bundled.tls`` work over real TLS.

The embedded Valkey has no TLS built in, so a TLS terminator (Python ``ssl``, a self-signed
CA for ``localhost``) fronts it; the chart's ACL file, passwords and ``rediss://…?ssl_ca_certs=``
URLs are used as rendered (only the Service host and the CA path point at this machine). The
operator's user, and a namespace's user the operator creates (its URL built from the
operator's), then work through it with certificate verification on, and a client that does
not trust the CA is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import operator_kit  # noqa: F401 - puts tests/operator on sys.path for opkit
import pytest
import redis.asyncio as aioredis
import redis.exceptions
import yaml
from chart_kit import proxy_stack  # noqa: F401 - fixture
from controlplane.fixtures import ControlPlaneMissing, find_binaries
from opkit import write_self_signed_cert

from llmcache.keyspace import Keyspace
from llmcache.operator import partitions, publish
from llmcache.operator.settings import NamespaceUserSettings
from llmcache.policy import PolicyDocument, parse_spec
from llmcache.redis_server import EmbeddedRedis

pytestmark = pytest.mark.controlplane  # helm comes from `make controlplane`

CHART = Path(__file__).resolve().parents[2] / "charts" / "llmcache"
SERVICE = "llm-llmcache-redis.ns1.svc:6379"
CA_IN_POD = "/etc/llmcache/redis-tls/ca.crt"


def render_tls() -> list[dict[str, Any]]:
    try:
        helm = find_binaries().helm
    except ControlPlaneMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    proc = subprocess.run([str(helm), "template", "llm", str(CHART), "--namespace", "ns1",
                           "--set", "redis.bundled.tls.enabled=true", "--set", "redis.bundled.tls.existingSecret=tls"],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={"HOME": "/tmp", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@contextlib.asynccontextmanager
async def tls_terminator(target_port: int, cert_dir: Path) -> AsyncIterator[int]:
    """TLS on a free port, relayed to plain ``127.0.0.1:target_port``; yields the TLS port."""
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    tasks: set[asyncio.Task[Any]] = set()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        task = asyncio.gather(relay(reader, up_writer), relay(up_reader, writer), return_exceptions=True)
        tasks.add(task)
        await task
        tasks.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_chart_tls_urls_work_over_tls_and_refuse_an_untrusted_server(
        redis_factory: Callable[..., EmbeddedRedis], proxy_stack: Any, tmp_path: Path) -> None:
    objects = render_tls()
    auth = next(o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-redis-auth"))
    urls = next(o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-redis-url"))
    acl = tmp_path / "users.acl"
    acl.write_text(auth["stringData"]["users.acl"] + "\n")
    server = redis_factory(with_search=True, extra_args=["--aclfile", str(acl)])
    write_self_signed_cert(tmp_path / "tls", dns="localhost")
    ca = tmp_path / "tls" / "tls.crt"

    async with tls_terminator(server.port, tmp_path / "tls") as tls_port:
        def here(url: str) -> str:
            assert url.startswith("rediss://") and SERVICE in url and CA_IN_POD in url, url
            return url.replace(SERVICE, f"localhost:{tls_port}").replace(CA_IN_POD, str(ca))

        operator_url = here(urls["stringData"]["url"])
        op = aioredis.Redis.from_url(operator_url)
        try:
            users = partitions.NamespaceUsers(op, Keyspace(), NamespaceUserSettings(mode="namespace", key="k"),
                                              base_url=operator_url)
            await users.ensure("team")
            sidecar_url = users.url("team")
            assert sidecar_url.startswith("rediss://llmcache-ns-team:") and sidecar_url.endswith(str(ca))
            doc = PolicyDocument(namespace="team", name="chat", generation=1, created_s=time.time(),
                                 spec=parse_spec({"mode": "Exact"}))
            await publish.publish_policy(op, Keyspace(), doc)

            stack = await proxy_stack(redis_url=sidecar_url, policy_pod_namespace="team")
            _, headers, first = await stack.post("/v1/chat/completions", {
                "model": "stub-model", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]})
            assert headers["X-LLMCache-Status"] == "miss"
            _, headers, again = await stack.post("/v1/chat/completions", {
                "model": "stub-model", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]})
            assert headers["X-LLMCache-Status"] == "hit" and again == first
            assert await op.hget("llmcache:policies:team", "chat") is not None

            # Verification is on: without the chart's CA the same server is refused.
            other_ca = tmp_path / "other"
            write_self_signed_cert(other_ca, dns="localhost")
            stranger = aioredis.Redis.from_url(operator_url.replace(str(ca), str(other_ca / "tls.crt")))
            with pytest.raises(redis.exceptions.ConnectionError):
                await stranger.ping()
            await stranger.aclose()
        finally:
            await op.aclose()
