"""bench/overhead.py's plot: latency CDFs at 200 req/s, latency against the offered rate,
and the gateways' RSS over the run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.common.load import BUDGET_RATE, pooled
from bench.overhead_run import MAX_RATE_ACHIEVED, MAX_RATE_P99_MS, Run

if TYPE_CHECKING:
    from pathlib import Path

    from bench.overhead_report import Summary


def write_plot(run: Run, summaries: dict[str, Summary], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    ax = axes[0]
    colors = {"direct": "tab:blue", "floor": "tab:gray", "gateway": "tab:orange",
              "gateway+auth": "tab:green"}
    for name in ("direct", "floor", "gateway", "gateway+auth"):
        data = sorted(pooled([r[name] for r in run.rounds]))
        if not data:
            continue
        ys = [(i + 1) / len(data) for i in range(len(data))]
        s = summaries[name]
        ax.plot(data, ys, color=colors[name], lw=1.6,
                label=f"{name}: p50 {s.p50:.2f} / p99 {s.p99:.2f} ms")
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.axhline(0.99, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (from scheduled send; log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"Latency CDF, open loop at {BUDGET_RATE} req/s "
                 f"({len(run.rounds)} interleaved rounds)")
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[1]
    rates = [ph.offered_rps for ph in run.steps]
    ax.plot(rates, [ph.pct(50) for ph in run.steps], "o-", color="tab:orange",
            label="gateway p50")
    ax.plot(rates, [ph.pct(99) for ph in run.steps], "s-", color="tab:red", label="gateway p99")
    if run.step_direct:
        dr = [ph.offered_rps for ph in run.step_direct]
        ax.plot(dr, [ph.pct(50) for ph in run.step_direct], "o", mfc="none", color="tab:blue",
                label="direct p50 (probe)")
        ax.plot(dr, [ph.pct(99) for ph in run.step_direct], "s", mfc="none", color="tab:blue",
                label="direct p99 (probe)")
    for ph in run.steps:
        if ph.n_errors or ph.achieved_rps < MAX_RATE_ACHIEVED * ph.offered_rps:
            ax.annotate(f"{ph.n_errors} errors\n{ph.achieved_rps:.0f}/s done",
                        (ph.offered_rps, ph.pct(50)), fontsize=8, ha="center", va="top",
                        textcoords="offset points", xytext=(0, -10))
    ax.axhline(MAX_RATE_P99_MS, color="grey", ls="--", lw=1, label=f"{MAX_RATE_P99_MS:g} ms limit")
    if run.max_rate:
        ax.axvline(run.max_rate, color="tab:green", ls=":", lw=1.2,
                   label=f"highest passing rate {run.max_rate}/s")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate, req/s (open loop)")
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_title("Gateway latency vs offered rate")
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[2]
    t0 = run.rss_timeline[0][0] if run.rss_timeline else 0.0
    for name in ("gateway", "gateway+auth"):
        pts = [(t - t0, row[name] / 1024) for t, row in run.rss_timeline if name in row]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[name], lw=1.2, label=name)
    shade = {"warm-up": "#eeeeee", "closed": "#e0ecff"}
    for start, end, label in run.phase_marks:
        if label.startswith("gateway ") and not label.startswith("gateway+"):
            kind = "closed" if "closed" in label else ("warm-up" if "warm" in label else "")
            step = any(label == f"gateway {ph.label}" for ph in run.steps)
            color = shade.get(kind) or ("#ffe7cc" if step else "#fff6cc")
            ax.axvspan(start - t0, end - t0, color=color, lw=0)
    ax.set_xlabel("time since start of load, s (shaded: gateway phases; orange = rate steps)")
    ax.set_ylabel("RSS, MiB")
    ax.set_title("Gateway process RSS (VmRSS, sampled every 50 ms)")
    ax.legend(fontsize=9, loc="lower right")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
