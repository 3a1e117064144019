"""bench/soak.py's measurements of the gateway process and its Markdown report."""

from __future__ import annotations

import argparse
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common.procs import proc_status_kb
from bench.common.stats import median, nearest_rank
from bench.soak_clients import Key, Tally

TOLERANCE = 0.10  # RSS and fds after the run settles: within 10 % of before
_METRIC_RE = re.compile(rb'^irgw_requests_total\{([^}]*)\} ([0-9.e+]+)$')
_STATUS_RE = re.compile(rb'status="([^"]*)"')


@dataclass
class Snapshot:
    rss_kb: int
    fds: int
    kinds: Counter[str] = field(default_factory=Counter)
    # RSS's anonymous part: the heap, where a leak shows. The rest is the mapped files
    # (libraries), whose pages the kernel may drop and read again when memory is short.
    anon_kb: int = 0

    @classmethod
    def gone(cls) -> Snapshot:
        return cls(0, 0)

    def line(self) -> str:
        return f"RSS {self.rss_kb / 1024:.0f} MiB, {self.fds} fds ({dict(self.kinds)})"


def _tcp_sockets() -> dict[str, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) for every IPv4/IPv6 TCP socket."""
    table = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
            table[inode] = (int(local.rsplit(":", 1)[1], 16),
                            int(remote.rsplit(":", 1)[1], 16), state)
    return table


def _unix_sockets() -> set[str]:
    try:
        return {line.split()[6] for line in Path("/proc/net/unix").read_text().splitlines()[1:]
                if len(line.split()) > 6}
    except OSError:
        return set()


def snapshot(pid: int, port: int, peers: dict[str, int]) -> Snapshot:
    """RSS and open fds of `pid`, the fds sorted by what they are."""
    sockets = _tcp_sockets()
    unix = _unix_sockets()
    kinds: Counter[str] = Counter()
    fd_dir = Path(f"/proc/{pid}/fd")
    names = os.listdir(fd_dir)
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue
        if target.startswith("socket:["):
            entry = sockets.get(target[8:-1])
            if entry is None:
                kinds["unix sockets" if target[8:-1] in unix else
                      "sockets in no table (closed, or never connected)"] += 1
            elif entry[2] == "0A":
                kinds["listening"] += 1
            elif entry[0] == port:
                kinds["client connections"] += 1
            else:
                peer = next((p for p, number in peers.items() if number == entry[1]), "other")
                kinds[f"to {peer}"] += 1
        else:
            kinds["files, pipes, others"] += 1
    return Snapshot(proc_status_kb(pid, "VmRSS"), len(names), kinds,
                    proc_status_kb(pid, "RssAnon"))


def metrics_counts(body: bytes) -> Counter[str]:
    """The gateway's own count of answers by status (`irgw_requests_total`)."""
    counts: Counter[str] = Counter()
    for line in body.splitlines():
        match = _METRIC_RE.match(line)
        if match:
            status = _STATUS_RE.search(match.group(1))
            counts[status.group(1).decode() if status else "?"] += int(float(match.group(2)))
    return counts


def _change(before: float, after: float) -> tuple[str, bool]:
    """The change, and whether `after` is back within TOLERANCE above `before` (less is
    no leak: a Redis pool that lost connections, library pages the kernel dropped)."""
    if before <= 0:
        return "n/a", False
    ratio = (after - before) / before
    return f"{ratio:+.1%}", ratio <= TOLERANCE


def _log_summary(text: str) -> list[str]:
    levels = Counter(word for line in text.splitlines() for word in line.split()[2:3]
                     if word in ("WARNING", "ERROR", "CRITICAL"))
    tracebacks = text.count("Traceback (most recent call last)")
    lines = [f"- gateway log: {levels['WARNING']} warnings, {levels['ERROR']} errors, "
             f"{levels['CRITICAL']} critical, {tracebacks} tracebacks"]
    distinct = Counter(" ".join(line.split()[2:])[:150] for line in text.splitlines()
                       if len(line.split()) > 2 and line.split()[2] in ("WARNING", "ERROR"))
    lines += [f"  - {count} x `{message}`" for message, count in distinct.most_common(8)]
    return lines


def _errors_by_phase(fives: Counter[tuple[int, str]], result: dict[str, Any]) -> list[str]:
    """Each error by when it was answered: during an outage (from the kill to 5 s after
    the part answers again), or outside one, where it needs another explanation."""
    windows: dict[str, list[float]] = result["windows"]
    phases: Counter[tuple[int, str, str]] = Counter()
    for at, status, code in result["tally"].errors:
        t = at - result["t0"]
        phase = next((f"{name} down" for name, (start, end) in windows.items()
                      if start <= t <= end + 5.0), "otherwise")
        phases[(status, code, phase)] += 1
    names = [f"{name} down" for name in windows] + ["otherwise"]
    lines = ["Counted by when the answer came: from a kill until 5 s after the part was back "
             "(vLLM answering `/version`, redis-server restarted), or otherwise.", "",
             "| status | code | answers | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for (status, code), n in fives.most_common():
        cells = " | ".join(str(phases[(status, code, name)]) for name in names)
        lines.append(f"| {status} | {code} | {n} | {cells} |")
    return lines


def render(result: dict[str, Any], *, args: argparse.Namespace, keys: list[Key],
           kinds: dict[str, tuple[int, bool]], command: str, started: datetime, rev: str,
           boot_s: float, gateway_env: dict[str, str], gateway_log: str) -> str:
    tally: Tally = result["tally"]
    before: Snapshot = result["before"]
    after: Snapshot = result["after"]
    load_s: float = result["load_s"]
    no_answer = sum(tally.no_answer.values()) + result["cancelled"]
    load = os.getloadavg()
    out = [
        "# Soak: the gateway under load and faults (real CPU vLLM, Redis limits)",
        "",
        *([f"**{args.label}**", ""] if args.label else []),
        f"- command: `{command}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; commit {rev}; {os.cpu_count()} cores shared "
        f"with other work (load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})",
        f"- stack on 127.0.0.1: redis-server, vLLM CPU build with the tiny model "
        f"(`{gateway_env.get('IRGW_UPSTREAM_MODEL')}`, booted in {boot_s:.0f} s), the gateway "
        "as `ir-gateway serve` with: " + ", ".join(
            f"`{k}={v}`" for k, v in gateway_env.items()
            if k not in ("IRGW_UPSTREAM_URL", "IRGW_REDIS_URL", "IRGW_KEYS_FILE", "IRGW_PORT")),
        f"- load: {args.clients} clients for {args.duration:g} s (mean pause {args.think:g} s "
        f"between a client's requests), client timeout {args.request_timeout:g} s; slow "
        f"readers stop reading for {args.slow_hold:g} s, idle sockets wait {args.idle_hold:g} s; "
        f"oversized head {args.head_kb} KiB, oversized body {args.body_limit} + 1 KiB bytes",
        "",
        "| key | rpm | tpm | concurrency | schemas | share of requests |",
        "|---|---|---|---|---|---|",
        *(f"| {k.name} | {k.rpm} | {k.tpm} | {k.concurrency} | {k.schemas} | {k.weight} % |"
          for k in keys),
        "",
        f"The load ran {result['load_phase_s']:.0f} s (`--duration`, extended until vLLM had "
        f"been back for {args.after_restart:g} s). Faults, in seconds from its start:",
        "",
        *(f"- {t:.0f} s: {what}" for t, what in result["events"]),
        *([] if result["events"] else ["- none (--no-faults)"]),
        "",
        f"## Requests sent: {sum(tally.sent.values())}",
        "",
        "| behaviour | owed an answer | sent | outcomes |",
        "|---|---|---|---|",
    ]
    for kind in sorted(tally.sent):
        base = kind.split(":")[0]
        outcomes = Counter({o: n for (k, o), n in tally.by_kind.items() if k == kind})
        outcomes.update({o: n for (k, o), n in tally.deliberate.items() if k == kind})
        text = ", ".join(f"{o}: {n}" for o, n in sorted(outcomes.items()))
        out.append(f"| {kind} | {'yes' if kinds.get(base, (0, True))[1] else 'no'} | "
                   f"{tally.sent[kind]} | {text} |")
    out += ["", f"## Answers by status and error code: {sum(tally.answers.values())}", "",
            "| status | code | answers |", "|---|---|---|"]
    out += [f"| {s} | {c} | {n} |" for (s, c), n in sorted(tally.answers.items())]
    out += ["", f"## Requests with no answer at all: {no_answer} (must be 0)", ""]
    if no_answer:
        out += ["| behaviour | how it ended | requests |", "|---|---|---|"]
        out += [f"| {k} | {why} | {n} |" for (k, why), n in sorted(tally.no_answer.items())]
        if result["cancelled"]:
            out.append(f"| (any) | still running at the hard stop | {result['cancelled']} |")
    fives = Counter({(s, c): n for (s, c), n in tally.answers.items()
                     if s >= 500 or c.startswith("stream error")})
    out += ["", f"## 5xx by cause: {sum(n for (s, _), n in fives.items() if s >= 500)} "
            "(and errors inside 200 streams)", ""]
    if fives:
        out += _errors_by_phase(fives, result)
    out += ["", "## Deliberate misbehaviour (owed no answer)", "",
            "| behaviour | what happened | count |", "|---|---|---|"]
    out += [f"| {k} | {o} | {n} |" for (k, o), n in sorted(tally.deliberate.items())]
    rss_change, rss_ok = _change(before.rss_kb, after.rss_kb)
    fd_change, fd_ok = _change(before.fds, after.fds)
    cold: Snapshot = result["cold"]
    out += ["", "## The gateway process", "",
            "Snapshots after the load settled. *Started*: the fresh process after "
            f"{args.warm} requests (its pools opened). *Before*: after "
            + (f"{args.warm_load:g} s of the same client mix on an unlimited key, without faults "
               "(`--warm-load`): its heap grown to what this load takes. "
               if args.warm_load > 0 else "nothing more (`--warm-load 0`). ")
            + "*After*: the run with its faults; the change (within 10 %) is against *before*: "
            "what the faults and more of the same load left behind.", "",
            "| | started | before | after | change |", "|---|---|---|---|---|",
            f"| RSS | {cold.rss_kb / 1024:.1f} MiB | {before.rss_kb / 1024:.1f} MiB | "
            f"{after.rss_kb / 1024:.1f} MiB | {rss_change} |",
            f"| - anonymous (the heap) | {cold.anon_kb / 1024:.1f} MiB | "
            f"{before.anon_kb / 1024:.1f} MiB | {after.anon_kb / 1024:.1f} MiB | "
            f"{_change(before.anon_kb, after.anon_kb)[0]} |",
            f"| open fds | {cold.fds} | {before.fds} | {after.fds} | {fd_change} |"]
    for kind in sorted(set(cold.kinds) | set(before.kinds) | set(after.kinds)):
        out.append(f"| - {kind} | {cold.kinds[kind]} | {before.kinds[kind]} | "
                   f"{after.kinds[kind]} | |")
    lags = result["lags"]
    probes = tally.healthz_ms
    out += [
        "",
        f"- `/healthz` while loaded: median {nearest_rank(probes, 50, empty=0.0):.0f} ms, p99 "
        f"{nearest_rank(probes, 99, empty=0.0):.0f} ms, max {max(probes, default=0):.0f} ms "
        f"({len(probes)} probes); this process's own loop ran late by up to "
        f"{max(lags, default=0) * 1000:.0f} ms (median "
        f"{median(lags) * 1000 if lags else 0:.1f} ms)",
    ]
    m_before, m_after = result["metrics"]
    delta = m_after - m_before
    out.append("- the gateway's own count of answers during the run (`irgw_requests_total`): "
               + (", ".join(f"{s}: {n}" for s, n in sorted(delta.items())) or "unavailable"))
    out += _log_summary(gateway_log)
    out += ["", "## Tokens per key against its TPM bucket", "",
            f"Allowed = tpm + tpm/60 x {load_s:.0f} s (the bucket's capacity plus its refill "
            "from the start of the load to the last answer). 'Tokens' is the `usage` the "
            "answers reported; requests that may have reached vLLM without reporting usage "
            "(hang-ups, cut streams, 422/5xx) are bounded by their prompt + n x max_tokens "
            "x (1 + retries). A Redis restart empties the buckets (no persistence) and the "
            "`open` failure policy starts per-instance ones meanwhile: each can hand a key "
            "a fresh capacity, which the 'allowed' figure does not include.", "",
            "| key | tpm | answers with usage | tokens | requests without usage | their bound "
            "| allowed | tokens / allowed | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    token_ok = True
    for key in keys:
        spend = tally.spend.get(key.name)
        if spend is None or key.tpm is None:
            continue
        allowed = key.tpm + key.tpm / 60 * load_s
        over = spend.known > allowed
        token_ok &= not over
        verdict = "OVER" if over else (
            "within" if spend.known + spend.unknown_bound <= allowed else
            "within (known usage; the bound could exceed)")
        out.append(f"| {key.name} | {key.tpm} | {spend.with_usage} | {spend.known} | "
                   f"{spend.without_usage} | {spend.unknown_bound} | {allowed:.0f} | "
                   f"{spend.known / allowed:.2f} | {verdict} |")
    verdicts = [
        ("every request owed an answer got one", no_answer == 0),
        ("the gateway process is still running", result["alive"]),
        ("RSS back to at most 10 % above before", rss_ok),
        ("open fds back to at most 10 % above before", fd_ok),
        ("no key spent past its TPM bucket", token_ok),
    ]
    out += ["", "## Verdicts", "", *(f"- {'PASS' if ok else 'FAIL'}: {what}"
                                      for what, ok in verdicts), ""]
    return "\n".join(out)
