"""A container connection's config: refused at load time when it would exec as root or is ambiguous,
each error naming the key and what would pass. No runtime needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.policy import Verdict
from bastion.policy.errors import ConfigError
from bastion.server.build import build_gateway
from bastion.server.config import load
from bastion.tools.containers import ContainerConnection
from tests.conftest import requirement


def config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "bastion.toml"
    path.write_text(f'[connections.app]\nkind = "container"\n{body}\n  [[connections.app.rules]]\n  preset = "inspect"\n')
    return path


@requirement("container:never-root")
@pytest.mark.parametrize("user", ["root", "0", "00", "app:0", "root:app", "1000:root"])
def test_root_is_refused_at_config_time(tmp_path: Path, user: str) -> None:
    with pytest.raises(ConfigError, match="is root: Bastion never runs a command inside a container as root"):
        load(config(tmp_path, f'container = "web"\nuser = "{user}"'))


def test_a_mapped_user_who_is_root_is_refused_too(tmp_path: Path) -> None:
    body = 'container = "web"\nuser = "app"\nusers = [{ groups = ["ops"], user = "root" }]'
    with pytest.raises(ConfigError, match="`root` is root"):
        load(config(tmp_path, body))


@pytest.mark.parametrize(("body", "message"), [
    ('user = "app"', "names exactly one of `container` and `label`"),
    ('container = "web"\nlabel = "app=web"\nuser = "app"', "names exactly one of `container` and `label`"),
    ('container = "web"', "needs `user`"),
    ('container = "web"\nuser = "app;id"', "is not a user for `exec --user`"),
    ('container = "web"\nuser = "app"\ncwd = "srv"', "must be an absolute path inside the container"),
    ('container = "web"\nuser = "app"\nhost = "db1"', "apply to ssh connections only"),
    ('container = "web"\nuser = "app"\nisolation = "none"', "the container is the boundary"),
    ('container = "web"\nuser = "app"\nactions = { rm = "allow" }', "actions"),
])
def test_ambiguous_or_misplaced_keys_are_refused(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(config(tmp_path, body))


def test_container_keys_on_a_local_connection_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bastion.toml"
    path.write_text('[connections.box]\nkind = "local"\ncontainer = "web"\npreset = "inspect"\n')
    with pytest.raises(ConfigError, match="apply to container connections only"):
        load(path)


def test_lifecycle_actions_are_held_by_default_and_configurable(tmp_path: Path) -> None:
    body = 'label = "app=web"\nuser = "1000:1000"\nruntime = "podman"\nactions = { stop = "deny", logs = "review" }'
    gateway = build_gateway(load(config(tmp_path, body)))
    try:
        app = gateway.connections["app"]
        assert isinstance(app, ContainerConnection) and app.kind == "container" and app.policy.cwd == "/"
        assert app.actions == {"logs": Verdict.REVIEW, "inspect": Verdict.ALLOW, "start": Verdict.REVIEW,
                               "stop": Verdict.DENY, "restart": Verdict.REVIEW}
    finally:
        gateway.store.close()
        gateway.approvals.close()


@pytest.mark.anyio
async def test_the_container_tool_is_listed_only_with_a_container_connection_and_stays_in_budget(tmp_path: Path) -> None:
    from mcp import Client

    from bastion.server.app import create_server
    from tests.test_tool_listing import BUDGET, listing, tokens

    async with Client(create_server(load(config(tmp_path, 'container = "web"\nuser = "app"')))) as client:
        tools = (await client.list_tools()).tools
    assert [t.name for t in tools][-1] == "container"
    assert tokens(listing(tools)) < BUDGET  # six tools, still inside the five tools' budget
