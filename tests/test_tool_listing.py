"""Small tool answers: the tools/list listing a model reads on every turn, measured with a real
tokenizer, and describe's compact, paginated answer.

The tokenizer is `bpe-openai` (a dev dependency): OpenAI's o200k_base and cl100k_base BPE with
their vocabularies shipped inside the wheel, so the count needs no network. It gives the same
counts as tiktoken over the same vocabulary. Claude's own tokenizer is not published; o200k and
cl100k are the nearest real ones, and the budget leaves room for the difference.
"""

from __future__ import annotations

import json
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from bastion.server.app import create_server
from bastion.server.config import load

pytestmark = pytest.mark.anyio
AGENT_TOOLS = {"list_connections", "describe", "check", "sql_query", "shell_run"}
BUDGET = 1200


def tokens(text: str, encoding: str = "o200k_base") -> int:
    with warnings.catch_warnings():  # it reads its vocabularies with importlib.resources.open_binary
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import bpe_openai
        except ImportError:
            pytest.fail("the tool listing is measured with the `bpe-openai` tokenizer: pip install -e \".[dev]\"")
        return len(bpe_openai.get_encoding(encoding).encode(text))


def listing(tools: list[Any]) -> str:
    """The tools as the client receives them (tools/list's `tools`, camelCase, no nulls)."""
    return json.dumps([t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools])


@pytest.fixture
async def client(demo_config: Path) -> Any:
    async with Client(create_server(load(demo_config))) as c:
        yield c


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
async def test_the_five_agent_tools_list_in_under_1200_tokens(client: Client, encoding: str) -> None:
    tools = (await client.list_tools()).tools
    assert {t.name for t in tools} == AGENT_TOOLS
    counted = tokens(listing(tools), encoding)
    assert counted < BUDGET, f"tools/list is {counted} {encoding} tokens (budget {BUDGET})"
    # No output schemas: they were 57-60 % of the listing; results still carry structured content.
    assert all(t.output_schema is None for t in tools)


async def test_results_still_carry_structured_content(client: Client) -> None:
    listed = await client.call_tool("list_connections", {})
    assert [c["name"] for c in listed.structured_content["connections"]] == ["demo", "workspace"]
    checked = await client.call_tool("check", {"connection": "demo", "text": "SELECT email FROM customers"})
    assert set(checked.structured_content) == {"verdict", "rules", "reason", "hint", "facts"}
    assert checked.structured_content["facts"]["masking"]["columns"][0]["masker"] == "email"
    text = checked.content[0].text  # the same facts in the text the model reads
    assert text.startswith("allow [developers-read]") and '"masker":"email"' in text


async def test_describe_is_one_line_per_table_with_masked_columns_marked(client: Client) -> None:
    result = await client.call_tool("describe", {"connection": "demo"})
    lines = result.content[0].text.splitlines()
    assert lines[0] == ("main.customers: id INTEGER, name TEXT, email TEXT masked:email, phone TEXT masked:partial, "
                        "city TEXT, created_at TEXT")
    assert "main.order_totals (view): order_id INTEGER" in lines[2] and len(lines) == 6
    assert lines[-1].startswith("(5 tables;")
    assert tokens(result.content[0].text) < 150
    customers = result.structured_content["tables"][0]
    assert customers["columns"][2] == {"name": "email", "type": "TEXT", "nullable": True, "masked": "email"}
    assert "masked" not in customers["columns"][0]  # no `"masked": null` on every column
    assert result.structured_content["next_offset"] is None and result.structured_content["total"] == 5


async def test_a_big_schema_comes_in_pages_that_name_the_next_offset(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "big.db")
    for n in range(260):
        db.execute(f"CREATE TABLE t{n:03d} (id INTEGER PRIMARY KEY, " + ", ".join(f"c{i} TEXT" for i in range(12)) + ")")
    db.commit()
    db.close()
    config = tmp_path / "bastion.toml"
    config.write_text('[identity]\nsubject = "a"\n[connections.big]\nkind = "sqlite"\ntarget = "big.db"\npreset = "read-only"\n')
    seen: list[str] = []
    offset: int | None = 0
    async with Client(create_server(load(config))) as client:
        while offset is not None:
            page = await client.call_tool("describe", {"connection": "big", "offset": offset})
            assert not page.is_error, page.content[0].text
            data = page.structured_content
            seen += [t["name"] for t in data["tables"]]
            assert data["total"] == 260 and len(page.content[0].text) < 14_000
            if data["next_offset"] is not None:
                assert f"offset={data['next_offset']}" in page.content[0].text.splitlines()[-1]
            offset = data["next_offset"]
        past = await client.call_tool("describe", {"connection": "big", "offset": 999})
    assert seen == [f"t{n:03d}" for n in range(260)]  # every table once, in order
    assert "No tables from offset 999 (there are 260)" in past.content[0].text
