"""Every curl command in the README runs against the live stack and gets what it promises."""

from __future__ import annotations

import asyncio
import json
import os
import re

from jsonschema import Draft202012Validator

from tests.conftest import REPO
from tests.integration.conftest import Live

README_URL = "http://127.0.0.1:8080"


def readme_curl_commands() -> list[str]:
    """Each `curl` command of the README's bash blocks, with its continuation lines (a
    trailing backslash, or an open single quote around a multi-line JSON body)."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.DOTALL):
        current: list[str] = []
        for line in block.splitlines():
            if not current and not line.strip().startswith("curl "):
                continue
            current.append(line)
            if not line.rstrip().endswith("\\") and "\n".join(current).count("'") % 2 == 0:
                commands.append("\n".join(current))
                current = []
    return commands


def test_the_readme_has_curl_commands() -> None:
    assert len(readme_curl_commands()) >= 1


async def test_every_readme_curl_command_works(live: Live) -> None:
    # Async: the gateway under test runs in this event loop, so blocking on curl would
    # starve it.
    schemas = {p.name.split(".")[0]: json.loads(p.read_text())["schema"]
               for p in (REPO / "schemas").glob("*.json")}
    successes = 0
    for command in readme_curl_commands():
        assert README_URL in command, command
        process = await asyncio.create_subprocess_exec(
            "bash", "-c", command.replace(README_URL, live.url),
            env={**os.environ, "IRGW_API_KEY": live.api_key},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=300)
        assert process.returncode == 0, stderr.decode()
        body = json.loads(stdout)
        if "error" in body:
            # The tiny model's answer may fail the schema: that must be the typed error.
            assert body["error"]["code"] in ("output_validation_failed", "output_truncated")
            continue
        if body.get("object") == "chat.completion":
            request = json.loads(re.search(r"-d '(.*)'", command, re.DOTALL)[1])
            name = request["model"].removeprefix("schema/").split("@")[0]
            content = json.loads(body["choices"][0]["message"]["content"], strict=True)
            assert not list(Draft202012Validator(schemas[name]).iter_errors(content))
        successes += 1
    assert successes >= 1
