"""The small Kubernetes client (llmcache.operator.kube): kubeconfig resolution, selectors, versions."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

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


def _kubeconfig(path: Path, *, server: str, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({
        "current-context": "b",
        "clusters": [{"name": "ca", "cluster": {"server": "https://a:6443"}},
                     {"name": "cb", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "ub", "user": user}],
        "contexts": [{"name": "a", "context": {"cluster": "ca", "user": "ub"}},
                     {"name": "b", "context": {"cluster": "cb", "user": "ub"}}],
    }))
    return path


def test_kubeconfig_current_context_with_inline_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = base64.b64encode(b"PEM").decode()
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "config", server="https://b:6443/",
                                                     cluster={"certificate-authority-data": ca},
                                                     user={"tokenFile": "token"})))
    (tmp_path / "token").write_text("s3cret\n")
    cfg = kube.KubeConfig.load()
    assert (cfg.server, cfg.current_token(), cfg.info.ca_data) == ("https://b:6443", "s3cret", ca)
    # kopf's login takes the same context: what its own login handler hands kopf.
    info = cfg.connection_info()
    assert (info.server, info.token, info.expiration is not None) == ("https://b:6443/", "s3cret", True)


def test_kubeconfig_paths_are_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "config", server="https://b:6443",
                                                     cluster={"certificate-authority": "ca.crt"},
                                                     user={"token": "t"})))
    cfg = kube.KubeConfig.load()
    assert (cfg.info.ca_path, cfg.token_file, cfg.current_token()) == (str(tmp_path / "ca.crt"), None, "t")
    assert cfg.connection_info() is cfg.info  # a literal token never expires here


def test_kubeconfig_errors_name_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({"current-context": "missing", "contexts": []}))
    monkeypatch.setenv("KUBECONFIG", str(path))
    with pytest.raises(ConfigError, match=f"kubeconfig {path}: 'missing' not found"):
        kube.KubeConfig.load()
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nope"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="set KUBECONFIG"):
        kube.KubeConfig.load()


def test_token_file_is_read_again_when_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "config", server="https://a:6443", cluster={},
                                                     user={"tokenFile": "token"})))
    cfg = kube.KubeConfig.load()
    client = kube.KubeClient(cfg)
    assert (cfg.token_file, client._token()) == (str(token), "first")
    replacement = tmp_path / "token.new"  # the kubelet swaps projected tokens atomically
    replacement.write_text("second\n")
    replacement.replace(token)
    assert cfg.current_token() == "second" and client._token() == "second"
    assert cfg.connection_info().token == "second"
