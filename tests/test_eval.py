"""`ir-gateway eval` (issue 19, part 5) against a real gateway in front of the fake upstream:
each policy's outcome is counted from what the gateway answered, and the report says so."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.evaluation.report import percentile
from gateway.evaluation.runner import PromptSetError, read_prompt_set
from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream, Reply, Slow
from tests.gateway_server import running_gateway
from tests.ir_samples import BAD_NAME, TRUNCATED, VALID


def _prompts(directory: Path, name: str, count: int) -> None:
    directory.mkdir(exist_ok=True)
    rows = [{"id": f"p{i}", "prompt": f"a function number {i}"} for i in range(count)]
    (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


async def test_eval_counts_each_policys_outcomes_and_writes_the_report(
        fake: FakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _prompts(tmp_path / "prompts", "function_ir", 2)
    out = tmp_path / "report"
    # Concurrency 1, prompt-major: p0/error, p0/reask, p1/error, p1/reask.
    fake.script(Reply(BAD_NAME),                    # p0 error: failed
                Reply(BAD_NAME), Reply(VALID),      # p0 reask: reasked
                Reply(VALID),                       # p1 error: passed
                Reply(TRUNCATED, finish_reason="length"))  # p1 reask: truncated
    async with running_gateway(unit_settings(fake.url)) as gw:
        code = await asyncio.to_thread(main, [
            "eval", "--url", gw.url, "--prompts", str(tmp_path / "prompts"),
            "--policies", "error,reask", "--concurrency", "1", "--max-tokens", "64",
            "--out", str(out)])
    assert code == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    outcomes = {(r["policy"], r["prompt_id"]): r["outcome"] for r in rows}
    assert outcomes == {("error", "p0"): "failed", ("reask", "p0"): "reasked",
                        ("error", "p1"): "passed", ("reask", "p1"): "truncated"}
    assert {r["attempts"] for r in rows if r["outcome"] == "reasked"} == {2}
    # The requests as the gateway's users send them: a system turn, the prompt, max_tokens.
    first = fake.requests[0].json
    assert first["messages"][1] == {"role": "user", "content": "a function number 0"}
    assert first["max_tokens"] == 64
    report = (out / "report.md").read_text()
    assert "| function_ir | `reask` | 2 | **50%** | 0 (0%) | 0 (0%) | 0 (0%) | 1 (50%) | " \
           "0 (0%) | 1 (50%) | 0 (0%) | 3 |" in report
    assert "--policies error,reask" in report and "![outcome" in report
    assert (out / "outcomes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "4/4" in capsys.readouterr().err  # the progress bar


async def test_eval_keeps_to_its_concurrency(fake: FakeUpstream, tmp_path: Path) -> None:
    _prompts(tmp_path / "prompts", "function_ir", 4)
    fake.default = Slow(2.0, then=Reply(VALID))  # each answer held: the first two block
    async with running_gateway(unit_settings(fake.url)) as gw:
        run = asyncio.create_task(asyncio.to_thread(main, [
            "eval", "--url", gw.url, "--prompts", str(tmp_path / "prompts"),
            "--policies", "repair", "--concurrency", "2", "--no-plot",
            "--out", str(tmp_path / "report")]))
        await fake.wait_requests(2)
        await asyncio.sleep(1.0)  # a third request would have come by now without the bound
        held = len(fake.requests)
        assert await run == 0
    assert held == 2 and len(fake.requests) == 4


def test_prompt_sets_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    for text in ('{"id": "a"}\n', '{"id": "a", "prompt": "p"}\n{"id": "a", "prompt": "q"}\n',
                 "not json\n", "\n"):
        path.write_text(text)
        with pytest.raises(PromptSetError):
            read_prompt_set(path)
    path.write_text('{"id": "a", "prompt": "p"}\n\n{"id": "b", "prompt": "q"}\n')
    assert [p.id for p in read_prompt_set(path, limit=1)] == ["a"]


def test_an_unknown_policy_or_missing_set_is_refused(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--prompts", str(tmp_path), "--policies", "hope"]) == 2
    assert "hope" in capsys.readouterr().err
    assert main(["eval", "--prompts", str(tmp_path)]) == 2
    assert "no <schema>.jsonl" in capsys.readouterr().err


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert (percentile(values, 50), percentile(values, 95)) == (5.0, 10.0)
    assert percentile([3.0], 95) == 3.0
