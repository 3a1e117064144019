"""bench/overhead.py's report: the Markdown verdict and tables, the JSON of every phase."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from dataclasses import asdict, dataclass
from typing import Any

from bench.common.load import BUDGET_RATE, Phase, cpu_us, pooled
from bench.common.machine import cpu_model, git_rev, versions
from bench.common.payloads import completion_body, direct_body, gateway_body
from bench.common.procs import REPO
from bench.common.stats import fmt, percentile
from bench.overhead_plot import write_plot
from bench.overhead_run import (
    BUDGET_P50_MS,
    BUDGET_P99_MS,
    MAX_RATE_ACHIEVED,
    MAX_RATE_P99_MS,
    Run,
    step_passes,
)
from gateway.server.runtime import glibc_version, huge_page_environment, thp_mode

RESULTS = REPO / "bench" / "results"
RESULTS_MD = RESULTS / "overhead.md"
RESULTS_PNG = RESULTS / "overhead.png"
RESULTS_JSON = RESULTS / "overhead.json"
LITELLM_MS = 4.0
BIFROST_MS = 0.5
PACKAGES = ["fastapi", "starlette", "uvicorn", "httptools", "uvloop", "aiohttp", "jsonschema",
            "rpds-py", "orjson", "pydantic", "ir-gateway"]


def huge_pages_note() -> str:
    env = huge_page_environment({}, glibc=glibc_version(), thp=thp_mode())
    if env is None:
        return f"here: none, THP mode {thp_mode()}, glibc {glibc_version()}"
    return ", ".join(f"`{key}={value}`" for key, value in env.items())



@dataclass
class Summary:
    name: str
    n: int
    errors: int
    p50: float
    p90: float
    p99: float
    max: float
    p50_send: float
    p99_send: float
    lag_p99: float
    cpu_us: float
    wait_us: float
    other_pct: float
    rss_peak_mb: float


def summarise(phases: list[Phase]) -> Summary:
    lat = pooled(phases)
    send = [x for ph in phases for x in ph.from_send_ms]
    lag = [x for ph in phases for x in ph.send_lag_ms]
    ok = sum(ph.ok for ph in phases)
    cpu = sum(ph.target_cpu_s for ph in phases)
    wall = sum(ph.wall_s for ph in phases)
    return Summary(
        name=phases[0].target, n=ok, errors=sum(ph.n_errors for ph in phases),
        p50=percentile(lat, 50), p90=percentile(lat, 90), p99=percentile(lat, 99),
        max=max(lat, default=float("nan")), p50_send=percentile(send, 50),
        p99_send=percentile(send, 99), lag_p99=percentile(lag, 99),
        cpu_us=1e6 * cpu / ok if ok else float("nan"),
        wait_us=1e6 * sum(ph.target_wait_s for ph in phases) / ok if ok else float("nan"),
        other_pct=100 * sum(ph.other_cpu_s for ph in phases) / wall if wall else 0.0,
        rss_peak_mb=max(ph.rss_peak_kb for ph in phases) / 1024,
    )



def write_report(run: Run, quick: bool, wall_s: float, load_start: tuple[float, float, float],
                 load_end: tuple[float, float, float], other_pct_run: float) -> str:
    summaries = {name: summarise([r[name] for r in run.rounds])
                 for name in ("direct", "floor", "gateway", "gateway+auth", "gateway+tracing")}
    d, g, a = summaries["direct"], summaries["gateway"], summaries["gateway+auth"]
    tr = summaries["gateway+tracing"]
    trace50, trace99 = tr.p50 - d.p50, tr.p99 - d.p99
    f = summaries["floor"]
    add50, add99 = g.p50 - d.p50, g.p99 - d.p99
    floor50, floor99 = f.p50 - d.p50, f.p99 - d.p99
    auth50, auth99 = a.p50 - d.p50, a.p99 - d.p99
    pass50, pass99 = add50 <= BUDGET_P50_MS, add99 <= BUDGET_P99_MS
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    rows = ["| target | ok | errors | p50 ms | p90 ms | p99 ms | max ms | p50 / p99 from send ms "
            "| target CPU µs/req | target run-queue wait µs/req | other load (% of 1 core) "
            "| peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in (d, f, g, a, tr):
        rss = "-" if s.name in ("direct", "floor") else fmt(s.rss_peak_mb, 1)
        rows.append(f"| {s.name} | {s.n} | {s.errors} | {fmt(s.p50)} | {fmt(s.p90)} | "
                    f"{fmt(s.p99)} | {fmt(s.max, 1)} | {fmt(s.p50_send)} / {fmt(s.p99_send)} | "
                    f"{fmt(s.cpu_us, 0)} | {fmt(s.wait_us, 0)} | {s.other_pct:.0f} | {rss} |")
    main_table = "\n".join(rows)

    added = [
        "| | added p50 ms | added p99 ms | budget | result |",
        "|---|---|---|---|---|",
        f"| gateway (auth off) | **{add50:+.2f}** | **{add99:+.2f}** | p50 <= {BUDGET_P50_MS:g}, "
        f"p99 <= {BUDGET_P99_MS:g} | p50 {'PASS' if pass50 else 'FAIL'}, p99 "
        f"{'PASS' if pass99 else 'FAIL'} |",
        f"| gateway + auth + in-memory limits | {auth50:+.2f} | {auth99:+.2f} | (same) | p50 "
        f"{'PASS' if auth50 <= BUDGET_P50_MS else 'FAIL'}, p99 "
        f"{'PASS' if auth99 <= BUDGET_P99_MS else 'FAIL'} |",
        f"| gateway + tracing on (every request a trace of 4 spans, OTLP/HTTP to a local sink) "
        f"| {trace50:+.2f} | {trace99:+.2f} | (same) | p50 "
        f"{'PASS' if trace50 <= BUDGET_P50_MS else 'FAIL'}, p99 "
        f"{'PASS' if trace99 <= BUDGET_P99_MS else 'FAIL'} |",
        f"| tracing on over tracing off | {tr.p50 - g.p50:+.2f} | {tr.p99 - g.p99:+.2f} | "
        f"(CPU {tr.cpu_us - g.cpu_us:+.0f} µs/req) | - |",
        f"| floor: a proxy with no logic, same server and client | {floor50:+.2f} | "
        f"{floor99:+.2f} | (reference) | - |",
        f"| gateway (auth off) over the floor | {g.p50 - f.p50:+.2f} | {g.p99 - f.p99:+.2f} | "
        "(what the gateway's own work costs) | - |",
    ]
    per_round = ["| round | direct p50 / p99 | gateway p50 / p99 | gateway+auth p50 / p99 | "
                 "added p50 / p99 (gateway) | other load % |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(run.rounds, 1):
        dd, gg, aa = r["direct"], r["gateway"], r["gateway+auth"]
        other = 100 * sum(ph.other_cpu_s for ph in r.values()) / sum(
            ph.wall_s for ph in r.values())
        per_round.append(
            f"| {i} | {dd.pct(50):.2f} / {dd.pct(99):.2f} | {gg.pct(50):.2f} / {gg.pct(99):.2f} | "
            f"{aa.pct(50):.2f} / {aa.pct(99):.2f} | {gg.pct(50) - dd.pct(50):+.2f} / "
            f"{gg.pct(99) - dd.pct(99):+.2f} | {other:.0f} |")

    steps = ["| offered req/s | sent | ok | errors | achieved req/s | p50 ms | p99 ms | max ms | "
             "gateway CPU µs/req | gateway CPU % of 1 core | gateway run-queue wait µs/req | "
             "peak RSS MiB | other load % | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ph in run.steps:
        ok, why = step_passes(ph)
        busy = 100 * ph.target_cpu_s / ph.wall_s if ph.wall_s else 0.0
        steps.append(
            f"| {ph.offered_rps:.0f} | {ph.sent} | {ph.ok} | {ph.n_errors} | "
            f"{ph.achieved_rps:.0f} | {fmt(ph.pct(50))} | {fmt(ph.pct(99))} | "
            f"{fmt(max(ph.latencies_ms, default=float('nan')), 1)} | "
            f"{fmt(cpu_us(ph, ph.target_cpu_s), 0)} | {busy:.0f} | "
            f"{fmt(cpu_us(ph, ph.target_wait_s), 0)} | {ph.rss_peak_kb / 1024:.1f} | "
            f"{100 * ph.other_cpu_s / ph.wall_s:.0f} | {'pass' if ok else 'FAIL: ' + why} |")
    for ph in run.step_direct:
        ok, why = step_passes(ph)
        steps.append(
            f"| {ph.offered_rps:.0f} (direct probe) | {ph.sent} | {ph.ok} | {ph.n_errors} | "
            f"{ph.achieved_rps:.0f} | {fmt(ph.pct(50))} | {fmt(ph.pct(99))} | "
            f"{fmt(max(ph.latencies_ms, default=float('nan')), 1)} | - | - | - | - | "
            f"{100 * ph.other_cpu_s / ph.wall_s:.0f} | {'pass' if ok else 'FAIL: ' + why} |")

    closed = ["| target | requests | errors | req/s | p50 ms | p99 ms | target CPU µs/req | "
              "target CPU % of 1 core | target run-queue wait µs/req | other load % |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for ph in run.closed:
        closed.append(
            f"| {ph.target} | {ph.ok} | {ph.n_errors} | {ph.achieved_rps:,.0f} | "
            f"{fmt(ph.pct(50))} | {fmt(ph.pct(99))} | {fmt(cpu_us(ph, ph.target_cpu_s), 0)} | "
            f"{100 * ph.target_cpu_s / ph.wall_s:.0f} | {fmt(cpu_us(ph, ph.target_wait_s), 0)} | "
            f"{100 * ph.other_cpu_s / ph.wall_s:.0f} |")

    seq_rows = ["| target | requests | p50 ms | p99 ms | added p50 ms | added p99 ms | "
                "target CPU µs/req | target run-queue wait µs/req | other load % |",
                "|---|---|---|---|---|---|---|---|---|"]
    seq_added50 = seq_cpu = float("nan")
    if run.seq:
        seq_sum = {name: summarise([r[name] for r in run.seq])
                   for name in ("direct", "floor", "gateway", "gateway+auth")}
        sd = seq_sum["direct"]
        seq_added50 = seq_sum["gateway"].p50 - sd.p50
        seq_cpu = seq_sum["gateway"].cpu_us
        for s in seq_sum.values():
            a50 = "-" if s.name == "direct" else f"{s.p50 - sd.p50:+.2f}"
            a99 = "-" if s.name == "direct" else f"{s.p99 - sd.p99:+.2f}"
            seq_rows.append(f"| {s.name} | {s.n} | {fmt(s.p50)} | {fmt(s.p99)} | {a50} | {a99} | "
                            f"{fmt(s.cpu_us, 0)} | {fmt(s.wait_us, 0)} | {s.other_pct:.0f} |")

    step_peak = max((ph.rss_peak_kb for ph in run.steps), default=0) / 1024
    mem = [f"- {name}: {kb / 1024:.1f} MiB" for name, kb in run.rss.items()]
    mem.insert(2, f"- gateway peak during the {BUDGET_RATE} req/s rounds: {g.rss_peak_mb:.1f} MiB"
                  f" (gateway+auth: {a.rss_peak_mb:.1f} MiB)")
    mem.insert(3, f"- gateway peak during the rate steps (up to "
                  f"{run.steps[-1].offered_rps:.0f} req/s offered): {step_peak:.1f} MiB"
               if run.steps else "- (no rate steps ran)")

    if run.max_rate is None:
        max_text = "no step passed"
    else:
        max_text = f"**{run.max_rate} req/s**"
    fail_text = ""
    above = [ph for ph in run.steps
             if ph.offered_rps > (run.max_rate or 0) and not step_passes(ph)[0]]
    if above:
        nxt = min(above, key=lambda ph: ph.offered_rps)
        fail_text = f" (next step {nxt.offered_rps:.0f} req/s failed: {step_passes(nxt)[1]})"
    elif run.steps:
        fail_text = " (the step ladder ended without a failing step: the real limit is higher)"

    contention = other_pct_run > 15 or load_start[0] > 1.0
    verdict = "PASS" if pass50 and pass99 else "FAIL"
    lines = [
        "# Gateway overhead benchmark",
        "",
        "Generated by `.venv/bin/python bench/overhead.py" + (" --quick`" if quick else "`") +
        " (script: `bench/overhead.py`; figures also in `bench/results/overhead.json`, plot "
        "`bench/results/overhead.png`).",
        "",
        f"- date: {now}; run took {wall_s:.0f} s" + (" (**--quick: small samples**)" if quick
                                                     else ""),
        f"- machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), "
        f"{cpu_model()}, {platform.platform()}",
        f"- load average: {load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f} at "
        f"start, {load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f} at end; other "
        f"processes (not the benchmark, fake or gateways) used {other_pct_run:.0f}% of one core "
        "on average during the run",
        f"- python {platform.python_version()}; {versions(PACKAGES)}; gateway at git {git_rev()}",
        "",
    ]
    if contention:
        lines += [
            "> **Contention:** the 2 cores were shared with other work during this run "
            "(see the load average and the 'other load' columns; a vLLM/dev process may have "
            "been running). The load generator, the fake upstream and the gateway also share "
            "those 2 cores. Wall-clock latencies, and above all p99, are inflated by CPU "
            "scheduling delays; 'target CPU µs/req' is the figure least affected by it.",
            "",
        ]
    lines += [
        "## Verdict",
        "",
        f"Budget: added latency at {BUDGET_RATE} req/s, median <= {BUDGET_P50_MS:g} ms and "
        f"p99 <= {BUDGET_P99_MS:g} ms. **{verdict}**: added p50 {add50:+.2f} ms, added p99 "
        f"{add99:+.2f} ms (auth on: {auth50:+.2f} / {auth99:+.2f} ms). Gateway CPU per request "
        f"{g.cpu_us:.0f} µs (auth on: {a.cpu_us:.0f} µs), so one worker with a whole core to "
        f"itself would top out near {1e6 / g.cpu_us:,.0f} req/s (CPU-bound estimate; the "
        f"sequential test measured {seq_cpu:.0f} µs/req, i.e. ~{1e6 / seq_cpu:,.0f} req/s).",
        "",
        f"For scale: LiteLLM's proxy adds about {LITELLM_MS:g} ms per request and Bifrost (Go) "
        f"about {BIFROST_MS:g} ms in an independent sequential test. This gateway's median "
        f"addition in the comparable sequential test here is {seq_added50:.2f} ms "
        f"({seq_added50 / LITELLM_MS:.2f}x LiteLLM's, {seq_added50 / BIFROST_MS:.1f}x Bifrost's) "
        f"and {add50:.2f} ms at {BUDGET_RATE} req/s open loop (different machines and methods: "
        "an order-of-magnitude comparison only).",
        "",
        f"The floor on this machine: a proxy with no logic at all, built from the same parts "
        f"(the gateway's server protocol on uvicorn + uvloop in front, its own pooled upstream "
        f"transport "
        f"behind), adds "
        f"{floor50:+.2f} ms median / {floor99:+.2f} ms p99 at {BUDGET_RATE} req/s "
        f"({f.cpu_us:.0f} µs CPU per request). The gateway's own work (schema resolution, "
        f"limits, strict parse and validation, OpenAI shapes, metrics, disconnect watching) "
        f"adds {g.p50 - f.p50:+.2f} ms median over that floor.",
        "",
        f"- highest sustained open-loop rate: {max_text}{fail_text}",
        "- closed loop, 32 concurrent: "
        + ", ".join(f"{ph.target} {ph.achieved_rps:,.0f} req/s" for ph in run.closed),
        f"- gateway RSS: idle {run.rss.get('gateway idle (before load)', 0) / 1024:.1f} MiB, "
        f"peak at {BUDGET_RATE} req/s {g.rss_peak_mb:.1f} MiB, peak at max rate steps "
        f"{step_peak:.1f} MiB, after "
        f"{run.rss.get('gateway after load (+2 s idle)', 0) / 1024:.1f} MiB",
        "",
        f"## Added latency at {BUDGET_RATE} req/s",
        "",
        "\n".join(added),
        "",
        "Requests to the gateway and to the fake are separate streams, so there is no "
        "per-request pairing: 'added' is the **difference of percentiles** (gateway pN - "
        "direct pN), not a percentile of per-request differences.",
        "",
        f"### Pooled over {len(run.rounds)} interleaved rounds of {run.sizes.round_s:g} s each",
        "",
        main_table,
        "",
        "Latency runs from the request's scheduled send time to the end of the response "
        "body. 'from send' starts at the moment the generator actually issued it (the gap is "
        "the generator's own timer/loop lag: p99 "
        f"{d.lag_p99:.2f} / {g.lag_p99:.2f} / {a.lag_p99:.2f} ms for direct / gateway / "
        "gateway+auth; it hits both sides alike). 'target CPU' is the user+system CPU of the "
        "target process (the fake for direct, the gateway process otherwise) per request; "
        "'run-queue wait' is the time its threads were runnable but had no CPU "
        "(`/proc/<pid>/task/*/schedstat`), per request: the direct cost of sharing the cores.",
        "",
        "### Per round",
        "",
        "\n".join(per_round),
        "",
        "## Sequential requests (one at a time, closed loop c1)",
        "",
        "The setting of the LiteLLM/Bifrost figures: each request is sent when the previous "
        f"one has finished; {len(run.seq)} interleaved rounds of {run.sizes.seq_s:g} s per "
        "target; latency from send to end of body; 'added' = difference of percentiles.",
        "",
        "\n".join(seq_rows),
        "",
        "## Highest sustained rate (gateway, auth off)",
        "",
        f"Open loop, {run.sizes.step_s:g} s per step; a step passes with no errors, p99 <= "
        f"{MAX_RATE_P99_MS:g} ms and achieved rate >= {100 * MAX_RATE_ACHIEVED:.0f}% of offered "
        "(achieved = successful responses / time from the first scheduled send to the last "
        "response). At the first failing step the same rates are sent to the fake directly, "
        "to tell a gateway limit from a load-generator/machine limit. The gateway runs with "
        "its default in-flight cap (max_inflight 16, queue 16, queue timeout 5 s): beyond "
        "that it sheds load with 503 `overloaded`, which counts as an error here.",
        "",
        "\n".join(steps),
        "",
        "### Closed loop, 32 concurrent workers",
        "",
        "\n".join(closed),
        "",
        "## Gateway memory (VmRSS)",
        "",
        "\n".join(mem),
        "",
        "## Method",
        "",
        "- fake vLLM: its own process, uvicorn + httptools + uvloop, raw ASGI app, zero "
        "latency; `GET /version` -> 0.32.0, `GET /v1/models` -> `qwen-coder`, `POST "
        f"/v1/chat/completions` -> a {len(completion_body())}-byte `chat.completion` whose "
        "content is a compact valid `function_ir` document, with usage.",
        "- floor: its own process, the gateway's server protocol (`gateway/server/protocol.py`: "
        "uvicorn's httptools protocol with coalesced writes) on uvloop in front and the "
        "gateway's own upstream transport (`UpstreamClient`) behind; it forwards the direct "
        "request's bytes to the fake and the fake's answer back, nothing else; it runs with "
        f"the environment the gateway restarts itself in ({huge_pages_note()}).",
        "- gateway: `ir-gateway serve --upstream ... --port ...` as its own process (one "
        "uvicorn worker, uvloop + the gateway's protocol; its heap on huge pages where the "
        "system allows, `gateway/server/runtime.py`), `IRGW_AUTH_ENABLED=false`, "
        "`IRGW_LOG_LEVEL=warning`, all other settings default. The auth-on gateway is a "
        "second such process with `IRGW_KEYS_FILE` (one key from `ir-gateway keys create "
        "--rpm 10000000 --tpm 1000000000`) and the in-memory limiter; both run side by side, "
        "and only one receives traffic at a time.",
        f"- request to the gateway: `{gateway_body().decode()}` "
        f"({len(gateway_body())} bytes); the gateway resolves the schema, forwards to the fake "
        "with the schema as `response_format` (strict), parses the answer strictly and "
        "validates it against the JSON Schema, and must answer 200 with `x-irgw-output: "
        f"passed`. Direct request: the same messages with model `qwen-coder`, the same "
        f"`response_format` and `max_tokens: 1024` ({len(direct_body())} bytes; the gateway's "
        f"upstream body measured at the fake: {run.upstream_body_bytes.get('gateway', 0)} "
        "bytes). Upstream calls counted at the fake during the rounds vs successful answers: "
        + ", ".join(f"{k} {v} calls / {sum(r[k].ok for r in run.rounds)} ok"
                    for k, v in run.upstream_calls.items())
        + " (no retries happen; requests refused with 503 by the gateway's in-flight cap "
        "never reach the fake).",
        "- load generator: this process, aiohttp on uvloop, one pooled keep-alive session per "
        "target; open loop: sends are scheduled on a fixed clock (rate x duration requests) "
        "and never wait for earlier responses. Warm-up "
        f"{run.sizes.warmup_s:g} s per target first. The {BUDGET_RATE} req/s rounds go "
        "direct -> gateway -> gateway+auth, reversed on even rounds. Percentiles pool all "
        "rounds, by linear interpolation.",
        "- CPU: `/proc/<pid>/stat` utime+stime deltas; 'other load' = machine busy time "
        "(`/proc/stat`) minus the CPU of the benchmark, fake and gateway processes, as % of "
        "one core. Memory: `/proc/<pid>/status` VmRSS every 50 ms, VmHWM at the end.",
    ]
    md = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    RESULTS_MD.write_text(md)
    write_plot(run, summaries, RESULTS_PNG)

    def phase_json(ph: Phase) -> dict[str, Any]:
        return {
            "target": ph.target, "kind": ph.kind, "offered": ph.offered_rps, "label": ph.label,
            "sent": ph.sent, "ok": ph.ok, "errors": dict(ph.errors), "wall_s": ph.wall_s,
            "achieved_rps": ph.achieved_rps, "p50_ms": ph.pct(50), "p90_ms": ph.pct(90),
            "p99_ms": ph.pct(99), "max_ms": max(ph.latencies_ms, default=None),
            "p50_from_send_ms": ph.pct(50, ph.from_send_ms),
            "p99_from_send_ms": ph.pct(99, ph.from_send_ms),
            "target_cpu_us_per_req": cpu_us(ph, ph.target_cpu_s),
            "target_run_queue_wait_us_per_req": cpu_us(ph, ph.target_wait_s),
            "fake_cpu_us_per_req": cpu_us(ph, ph.fake_cpu_s),
            "generator_cpu_us_per_req": cpu_us(ph, ph.own_cpu_s),
            "other_load_pct": 100 * ph.other_cpu_s / ph.wall_s if ph.wall_s else None,
            "rss_peak_kb": ph.rss_peak_kb,
        }

    doc = {
        "date": now, "quick": quick, "wall_s": wall_s, "loadavg_start": load_start,
        "loadavg_end": load_end, "other_load_pct": other_pct_run, "versions": versions(PACKAGES),
        "git": git_rev(), "sizes": asdict(run.sizes),
        "summary_200rps": {k: asdict(v) for k, v in summaries.items()},
        "added_ms": {"gateway": {"p50": add50, "p99": add99},
                     "gateway+auth": {"p50": auth50, "p99": auth99},
                     "gateway+tracing": {"p50": trace50, "p99": trace99}},
        "budget_pass": {"p50": pass50, "p99": pass99},
        "max_rate_rps": run.max_rate,
        "rounds": [{k: phase_json(v) for k, v in r.items()} for r in run.rounds],
        "steps": [phase_json(ph) for ph in run.steps],
        "step_direct_probes": [phase_json(ph) for ph in run.step_direct],
        "closed_c32": [phase_json(ph) for ph in run.closed],
        "rss_kb": run.rss,
        "sequential": [{k: phase_json(v) for k, v in r.items()} for r in run.seq],
    }
    RESULTS_JSON.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return md
