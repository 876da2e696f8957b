"""The namespace users' command list (:data:`llmcache.operator.partitions.SIDECAR_COMMANDS`) stays what sidecars run.

Commands inside a Lua script run under the caller's ACL: a script that starts calling a command
the namespace users lack fails with NOPERM on every call, and the proxy serves ``bypass`` (it
fails open, so nothing else would notice). The README prints the same rules for users who
create the namespace users themselves (``sidecar.redisUsers: manual``).
"""

from __future__ import annotations

import re
from pathlib import Path

from llmcache.keyspace import Keyspace
from llmcache.operator import partitions

ROOT = Path(__file__).resolve().parents[2]
_SCRIPT_CALL = re.compile(r"redis\.p?call\(\s*'([A-Za-z.|_]+)'")


def _script_commands() -> set[str]:
    """Every command a Lua script in the proxy's sources calls (lower case)."""
    found: set[str] = set()
    for path in (ROOT / "proxy").rglob("*.py"):
        found.update(m.lower() for m in _SCRIPT_CALL.findall(path.read_text()))
    return found


def test_every_command_a_proxy_script_calls_is_granted() -> None:
    called = _script_commands()
    assert {"get", "set", "pttl", "pexpire", "time", "zrangebyscore"} <= called  # the parser finds them
    assert called - set(partitions.SIDECAR_COMMANDS) == set()


def test_the_rules_grant_the_partition_and_the_listed_commands_only() -> None:
    rules = partitions.acl_rules(Keyspace(), "team", ["pw"])
    assert [r for r in rules if r.startswith(("~", "%", "&"))] == [
        "~llmcache:n:team:*", "%R~llmcache:policies:team", "&llmcache:policies:events:team"]
    granted = [r[1:] for r in rules if r.startswith("+")]
    assert granted == list(partitions.SIDECAR_COMMANDS)
    assert not {"scan", "keys", "ft.create", "ft._list", "info", "config|get", "acl|setuser"} & set(granted)


def test_the_readme_prints_the_same_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("~<keyPrefix>:n:<ns>:*", 1)[1].split("```", 1)[0]
    printed = [word[1:] for word in block.split() if word.startswith("+")]
    assert printed == list(partitions.SIDECAR_COMMANDS)
