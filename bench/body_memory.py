"""What large request bodies cost the gateway in memory (issue 17, finding 7).

Usage::

    .venv/bin/python bench/body_memory.py            # writes bench/results/body_memory.md
    .venv/bin/python bench/body_memory.py --label before --no-write

A gateway process (`ir-gateway serve`, auth off) in front of the bench's fake vLLM
(bench/common/fake_vllm.py). For each scenario: the gateway's RSS after a warm-up, its peak while
eight clients send their bodies at once (VmRSS sampled every 10 ms, and VmHWM), and its
RSS a second after the answers (glibc keeps freed memory: the gateway runs with
PYTHONMALLOC=malloc,
gateway/server/runtime.py). Bodies are one chat message of ASCII text, the shape of a
long prompt. All traffic on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common.fake_vllm import start_fake  # noqa: E402
from bench.common.gateway import gateway_env, start_gateway  # noqa: E402
from bench.common.machine import git_rev  # noqa: E402
from bench.common.procs import HOST, exit_on_signals, proc_status_kb  # noqa: E402

RESULTS_MD = REPO / "bench" / "results" / "body_memory.md"
CLIENTS = 8
MIB = 1024 * 1024


def body_of(size: int, shape: str = "text") -> bytes:
    """`text`: one long message. `tiny`: a short message and an extra field (passed on to
    vLLM) holding a list of empty objects, the costliest JSON per byte to parse."""
    if shape == "tiny":
        base = orjson.dumps({"model": "qwen-coder", "messages": [
            {"role": "user", "content": "hi"}], "x": []})
        return base[:-2] + b",".join([b"{}"] * ((size - len(base)) // 3)) + b"]}"
    filler = size - len(orjson.dumps({"model": "qwen-coder", "messages": [
        {"role": "user", "content": ""}]}))
    words = (b"lorem ipsum dolor sit amet " * (filler // 27 + 1))[:filler].decode()
    return orjson.dumps({"model": "qwen-coder", "messages": [{"role": "user", "content": words}]})


async def scenario(name: str, upstream_url: str, workdir: Path, env_extra: dict[str, str],
                   size: int, shape: str, tree: Path | None,
                   clients: int) -> dict[str, object]:
    import aiohttp

    env = gateway_env(tree=tree, IRGW_LOG_LEVEL="warning", IRGW_AUTH_ENABLED="false",
                      IRGW_CANARY="off", **env_extra)  # the fake vLLM does not constrain
    child, port = start_gateway("gateway", upstream_url, workdir, env, tree=tree,
                                ready=("/healthz",))
    url = f"http://{HOST}:{port}/v1/chat/completions"
    body = body_of(size, shape)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            for _ in range(5):  # warm-up: small requests
                async with session.post(url, data=body_of(2000),
                                        headers={"content-type": "application/json"}) as r:
                    await r.read()
            await asyncio.sleep(0.5)
            before = child.rss_kb()
            peak = before
            done = asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, child.rss_kb())
                    await asyncio.sleep(0.01)

            async def one() -> str:
                async with session.post(url, data=body,
                                        headers={"content-type": "application/json"}) as r:
                    answer = await r.read()
                    if r.status == 200:
                        return "200"
                    with contextlib.suppress(Exception):
                        return f"{r.status} {orjson.loads(answer)['error']['code']}"
                    return str(r.status)

            sampler = asyncio.create_task(sample())
            statuses = Counter(await asyncio.gather(*(one() for _ in range(clients))))
            done.set()
            await sampler
            await asyncio.sleep(1.0)
            after = child.rss_kb()
            hwm = proc_status_kb(child.pid, "VmHWM")
    finally:
        child.close()
    return {"name": name, "size": size, "before": before, "peak": peak, "hwm": hwm,
            "after": after, "statuses": dict(statuses), "clients": clients}


async def run(label: str, tree: Path | None) -> list[dict[str, object]]:
    raised = {"IRGW_MAX_REQUEST_BYTES": str(16 * MIB),
              "IRGW_MAX_BODY_BYTES_IN_FLIGHT": str(1024 * MIB)}
    big, fits = int(7.7 * 1000 * 1000), int(1.9 * 1000 * 1000)
    plan = [("7.7 MB text, limits raised", raised, big, "text"),
            ("7.7 MB tiny values, limits raised", raised, big, "tiny"),
            ("7.7 MB tiny values, defaults", {}, big, "tiny"),
            ("1.9 MB tiny values, defaults", {}, fits, "tiny"),
            ("1.9 MB tiny values, defaults, 16 clients", {}, fits, "tiny")]
    rows = []
    fake, fake_port = start_fake()
    try:
        with tempfile.TemporaryDirectory(prefix="irgw-bodymem-") as tmp:
            for name, env, size, shape in plan:
                clients = 16 if "16 clients" in name else CLIENTS
                rows.append(await scenario(name, f"http://{HOST}:{fake_port}", Path(tmp), env,
                                           size, shape, tree, clients))
    finally:
        fake.close()
    for row in rows:
        row["label"] = label
    return rows


def report(rows: list[dict[str, object]]) -> str:
    lines = [f"| run | {CLIENTS} clients at once (unless said), each | RSS before | "
             "peak (sampled) | VmHWM | RSS 1 s after | peak - before per client | answers |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        before, peak, hwm, after = (int(r[k]) // 1024 for k in ("before", "peak", "hwm", "after"))  # type: ignore[call-overload]
        per = (max(peak, hwm) - before) / int(r["clients"])  # type: ignore[call-overload]
        size_mb = int(r["size"]) / 1e6  # type: ignore[call-overload]
        lines.append(f"| {r['label']} | {r['name']} | {before} MiB | {peak} MiB | {hwm} MiB | "
                     f"{after} MiB | {per:.0f} MiB ({per * 1.048576 / size_mb:.1f}x the body) | "
                     f"{r['statuses']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--before", type=Path, metavar="TREE",
                        help="also run the gateway of another source tree (e.g. a `git "
                        "archive` of the base commit), first")
    parser.add_argument("--before-label", default="before")
    parser.add_argument("--label", default="this tree")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    exit_on_signals()
    rows = []
    if args.before is not None:
        rows += asyncio.run(run(args.before_label, args.before.resolve()))
    rows += asyncio.run(run(args.label, None))
    table = report(rows)
    print(table)
    if not args.no_write:
        RESULTS_MD.write_text(
            "# Gateway memory under large request bodies (bench/body_memory.py)\n\n"
            f"{CLIENTS} clients at once, one chat message each; {time.strftime('%Y-%m-%d')}, "
            f"git {git_rev()}.\n\n{table}\n")
        print(f"written: {RESULTS_MD}")


if __name__ == "__main__":
    main()
