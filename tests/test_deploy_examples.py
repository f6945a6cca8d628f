"""examples/deploy/: the config loads and every secret it names by reference is one the Kubernetes
Deployment provides (an environment variable from the Secret, or a file the Secret mounts), the
image, the Deployment and the systemd unit start the same command, and the probes are the gateway's."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from bastion.server.config import load

DEPLOY = Path(__file__).resolve().parent.parent / "examples" / "deploy"
SECRETS_DIR = "/run/secrets/bastion/"


def text(name: str) -> str:
    return (DEPLOY / name).read_text(encoding="utf-8")


def referenced_env() -> set[str]:
    return set(re.findall(r'_env\s*=\s*"([A-Z0-9_]+)"', text("bastion.toml")))


def referenced_files() -> set[str]:
    return {path.removeprefix(SECRETS_DIR) for path in re.findall(r'_file\s*=\s*"([^"]+)"', text("bastion.toml"))}


def test_every_secret_the_config_names_is_provided_by_the_deployment() -> None:
    deployment = text("deployment.yaml")
    provided_env = set(re.findall(r"- name: ([A-Z0-9_]+)\s*\n\s*valueFrom: \{secretKeyRef", deployment))
    assert referenced_env() and referenced_env() <= provided_env, referenced_env() - provided_env
    mounted = set(re.findall(r"\{key: [\w.]+, path: ([\w.]+)\}", deployment))
    assert referenced_files() and referenced_files() <= mounted, referenced_files() - mounted
    assert f"mountPath: {SECRETS_DIR.rstrip('/')}" in deployment


def test_the_config_loads_with_its_secrets_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.store.checkpoints import Signer

    for name in referenced_env():
        monkeypatch.setenv(name, secrets.token_hex(16))
    files = {"state.key": secrets.token_hex(32), "checkpoint.key": Signer.generate("bastion").text()}
    assert set(files) == referenced_files()
    for name, value in files.items():
        (tmp_path / name).write_text(value)
    config_file = tmp_path / "bastion.toml"
    config_file.write_text(text("bastion.toml").replace(SECRETS_DIR, f"{tmp_path}/"))
    config = load(config_file)
    assert config.http.stateless and len(config.request_state_keys()) == 1
    assert config.audit.url and config.audit.url.startswith("postgresql://")
    assert config.checkpoint_signer() is not None
    assert config.auth is not None and config.auth.resource.startswith("https://")


def test_image_deployment_and_unit_start_the_same_gateway() -> None:
    command = "serve --config /etc/bastion/bastion.toml --http 0.0.0.0:8765"
    cmd = re.search(r'CMD \[(.*)\]', text("Containerfile"))
    assert cmd and " ".join(part.strip(' "') for part in cmd.group(1).split(",")) == command
    args = re.search(r"args: \[(.*)\]", text("deployment.yaml"))
    assert args and " ".join(part.strip(' "') for part in args.group(1).split(",")) == command
    assert f"bin/bastion {command}" in text("bastion.service")
    assert "configMapGenerator" in text("kustomization.yaml") and "bastion.toml" in text("kustomization.yaml")


def test_the_probes_are_the_gateways_health_and_readiness() -> None:
    import inspect

    from bastion.server.http import http_app

    deployment, routes = text("deployment.yaml"), inspect.getsource(http_app)
    for path in ("/healthz", "/readyz"):
        assert f"path: {path}" in deployment and f'Route("{path}"' in routes
    assert "replicas: 2" in deployment and "maxUnavailable: 0" in deployment
