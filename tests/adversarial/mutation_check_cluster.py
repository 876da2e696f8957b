"""Mutation check for the chart/operator hardening: break one guarded line, expect its test to fail.

Each mutation replaces one exact snippet in one file, runs the test that guards it, and restores
the file (always, also on Ctrl-C). A mutation the test does not catch is a test that cannot fail.

    .venv/bin/python tests/adversarial/mutation_check_cluster.py [--only NAME ...]

Needs what the tests need (``make controlplane`` for the API server and helm). Prints one line
per mutation and exits 1 if any mutation survived. Never run it alongside other test runs of the
same tree: the files are mutated in place while a mutation runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    before: str
    after: str
    test: str


MUTATIONS = [
    Mutation("chart webhook objectSelector dropped", "charts/llmcache/templates/webhook-configuration.yaml",
             "    objectSelector:\n      matchLabels:\n        llmcache.io/inject: enabled\n", "",
             "tests/charts/test_chart.py::test_chart_webhook_selectors_send_only_labelled_pods"),
    Mutation("webhook ignores the inject label", "operator/src/webhook.py",
             'if (meta.get("labels") or {}).get(INJECT_LABEL) != "enabled":', "if False:",
             "tests/operator/test_operator_webhook.py::test_api_server_injects_labelled_pods_and_leaves_others_alone"),
    Mutation("restore compares generation only", "operator/src/handlers.py",
             "content_hash(stored) != content_hash(doc.to_json())",
             "PolicyDocument.from_json(stored).generation != doc.generation",
             "tests/adversarial/test_operator_published_content.py"),
    Mutation("sweeper skips _default", "operator/src/sweep.py",
             "    for partition, group in groups:\n        done = await eviction.enforce_limits(",
             "    for partition, group in [g for g in groups if g[1] != '_default']:\n"
             "        done = await eviction.enforce_limits(",
             "tests/adversarial/test_operator_default_group.py"),
    Mutation("namespace users may write their policies", "operator/src/partitions.py",
             'f"%R~{keyspace.policies(namespace)}"', 'f"~{keyspace.policies(namespace)}"',
             "tests/adversarial/test_chart_redis_acl.py::"
             "test_a_namespace_user_reads_its_policies_but_cannot_rewrite_them_or_administer"),
    Mutation("namespace users miss FT.SEARCH", "operator/src/partitions.py",
             '"ft.search", "ft.info",', '"ft.info",',
             "tests/adversarial/test_chart_redis_acl.py::test_proxy_and_operator_do_their_work_under_their_users"),
    Mutation("namespace users may SCAN", "operator/src/partitions.py",
             '"ft.search", "ft.info",', '"ft.search", "ft.info", "scan",',
             "tests/adversarial/test_chart_redis_acl.py::test_a_namespace_reaches_nothing_of_another"),
    Mutation("a namespace user's keys are every partition's", "operator/src/partitions.py",
             'f"~{part.partition_pattern}"', 'f"~{keyspace.all_partitions_prefix}*"',
             "tests/adversarial/test_chart_redis_acl.py::test_a_namespace_reaches_nothing_of_another"),
    Mutation("namespace users only on the masters", "llmcache/connection.py",
             "        if \"fail\" in str(info.get(\"flags\", \"\"))",
             "        if \"slave\" in str(info.get(\"flags\", \"\")) or \"fail\" in str(info.get(\"flags\", \"\"))",
             "tests/rediscluster/test_cluster_namespace_users.py"),
    Mutation("a proxy's stats read every partition", "proxy/admin.py",
             "await stats.read_stats(client, keyspace=state.keyspace)",
             "await stats.read_stats(client, keyspace=state.keyspace, all_partitions=True)",
             "tests/adversarial/test_tenancy.py::test_a_proxys_admin_api_reaches_only_its_own_partition"),
    Mutation("sidecar listens on the pod IP", "operator/src/webhook.py",
             '"value": f"127.0.0.1:{sidecar.port}"', '"value": f"0.0.0.0:{sidecar.port}"',
             "tests/adversarial/test_chart_sidecar_ports.py"),
    Mutation("Redis URL inlined in pod specs", "operator/src/webhook.py",
             "        if sidecar.credentials_secret:\n            return {\"valueFrom\"",
             "        if False:\n            return {\"valueFrom\"",
             "tests/operator/test_operator_webhook.py::test_credentials_come_from_the_namespace_secret_never_as_literals"),
    Mutation("operator may create any ConfigMap name", "charts/llmcache/templates/operator-admission-policy.yaml",
             "validationActions: [Deny]", "validationActions: [Audit]",
             "tests/adversarial/test_operator_rbac_names.py"),
    Mutation("webhook fails open by default", "charts/llmcache/values.yaml",
             "  failurePolicy: Fail\n", "  failurePolicy: Ignore\n",
             "tests/charts/test_chart.py::test_defaults_render_operator_webhook_redis_model_server"),
    Mutation("an injection fault admits the pod", "operator/src/webhook.py",
             "        if fail_closed:\n            response.update(allowed=False",
             "        if False:\n            response.update(allowed=False",
             "tests/operator/test_operator_webhook.py::test_an_injection_fault_follows_the_failure_policy"),
    Mutation("token file read once", "operator/src/kube.py",
             "        if self.token_file:\n            try:\n                return Path(self.token_file)",
             "        if False:\n            try:\n                return Path(self.token_file)",
             "tests/adversarial/test_operator_token_rotation.py"),
]


def run(mutation: Mutation) -> tuple[bool, float]:
    """Apply ``mutation``, run its test, restore; ``(caught, seconds)``."""
    path = REPO / mutation.path
    original = path.read_text()
    if original.count(mutation.before) != 1:
        raise SystemExit(f"{mutation.name}: the snippet is not found exactly once in {mutation.path}; "
                         "update this script")
    start = time.monotonic()
    try:
        path.write_text(original.replace(mutation.before, mutation.after))
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                               mutation.test], cwd=REPO, capture_output=True, text=True, timeout=900,
                              check=False)
    finally:
        path.write_text(original)
    return proc.returncode != 0, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="run only mutations whose name contains this")
    args = parser.parse_args()
    survived = 0
    for mutation in MUTATIONS:
        if args.only and not any(o in mutation.name for o in args.only):
            continue
        caught, seconds = run(mutation)
        survived += not caught
        print(f"{'caught  ' if caught else 'SURVIVED'}  {seconds:6.1f} s  {mutation.name}  ({mutation.test})",
              flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
