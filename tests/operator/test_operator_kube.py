"""The small Kubernetes client (llmcache.operator.kube): kubeconfig resolution, selectors, versions."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from llmcache.errors import ConfigError
from llmcache.operator import kube
from llmcache.policy import LabelSelector


def test_selector_string_covers_every_operator() -> None:
    sel = LabelSelector.from_dict({"matchLabels": {"app": "chat", "tier": "a"}, "matchExpressions": [
        {"key": "env", "operator": "In", "values": ["prod", "stage"]},
        {"key": "zone", "operator": "NotIn", "values": ["x"]},
        {"key": "canary", "operator": "Exists"},
        {"key": "legacy", "operator": "DoesNotExist"}]})
    assert kube.selector_string(sel) == "app=chat,tier=a,env in (prod,stage),zone notin (x),canary,!legacy"
    assert kube.selector_string(LabelSelector()) == ""


@pytest.mark.parametrize("info, expected", [
    ({"major": "1", "minor": "37"}, (1, 37)),
    ({"major": "1", "minor": "29+"}, (1, 29)),  # managed clusters append "+"
    ({}, (0, 0)),
])
def test_parse_version(info: dict[str, str], expected: tuple[int, int]) -> None:
    assert kube.parse_version(info) == expected


def test_kubeconfig_current_context_with_inline_data(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "current-context": "b",
        "clusters": [{"name": "ca", "cluster": {"server": "https://a:6443"}},
                     {"name": "cb", "cluster": {"server": "https://b:6443/",
                                                "certificate-authority-data": base64.b64encode(b"PEM").decode()}}],
        "users": [{"name": "ub", "user": {"tokenFile": "token"}}],
        "contexts": [{"name": "a", "context": {"cluster": "ca"}},
                     {"name": "b", "context": {"cluster": "cb", "user": "ub"}}],
    }))
    (tmp_path / "token").write_text("s3cret\n")
    cfg = kube.KubeConfig.from_kubeconfig(str(path))
    assert cfg.server == "https://b:6443" and cfg.token == "s3cret"
    assert cfg.ca_file is not None and Path(cfg.ca_file).read_bytes() == b"PEM"


def test_kubeconfig_errors_name_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({"current-context": "missing", "contexts": []}))
    with pytest.raises(ConfigError, match="no context named 'missing'"):
        kube.KubeConfig.from_kubeconfig(str(path))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nope"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="set KUBECONFIG"):
        kube.KubeConfig.load()


def test_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "current-context": "c", "clusters": [{"name": "c", "cluster": {"server": "https://a:6443"}}],
        "users": [{"name": "u", "user": {"tokenFile": "token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    cfg = kube.KubeConfig.from_kubeconfig(str(path))
    client = kube.KubeClient(cfg)
    assert (cfg.token_file, client._token()) == (str(token), "first")
    replacement = tmp_path / "token.new"  # the kubelet swaps projected tokens atomically
    replacement.write_text("second\n")
    replacement.replace(token)
    assert cfg.current_token() == "second" and client._token() == "second"
