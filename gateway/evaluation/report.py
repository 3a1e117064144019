"""Per schema and policy: counts and rates of each outcome, tokens per answer, latency
p50/p95; as a Markdown report and a PNG plot (matplotlib, the `bench` extra)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.evaluation.runner import ACCEPTED, OUTCOMES, Result

# Colours of the plot's outcomes, from good to bad.
_COLOURS = {"passed": "#2e7d32", "repaired": "#66bb6a", "retried": "#9ccc65",
            "reasked": "#26a69a", "failed": "#e53935", "truncated": "#fb8c00",
            "error": "#757575"}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: with 10 samples p95 is the slowest)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


@dataclass(frozen=True)
class Cell:
    schema: str
    policy: str
    total: int
    counts: Counter[str]
    tokens_per_answer: float | None  # mean usage.total_tokens over accepted answers
    p50_s: float
    p95_s: float
    attempts: int  # upstream calls, all requests together
    reasons: Counter[str]  # failing constraints of the 422s, the errors' messages

    def rate(self, outcome: str) -> float:
        return self.counts[outcome] / self.total if self.total else 0.0

    @property
    def valid_rate(self) -> float:
        """Answers the client got (any accepted outcome) out of all requests."""
        return sum(self.counts[o] for o in ACCEPTED) / self.total if self.total else 0.0


def summarise(results: Sequence[Result]) -> list[Cell]:
    groups: dict[tuple[str, str], list[Result]] = {}
    for result in results:
        groups.setdefault((result.schema, result.policy), []).append(result)
    cells = []
    for (schema, policy), rows in groups.items():
        tokens = [r.tokens for r in rows if r.outcome in ACCEPTED and r.tokens is not None]
        latencies = [r.latency_s for r in rows]
        cells.append(Cell(
            schema, policy, len(rows), Counter(r.outcome for r in rows),
            sum(tokens) / len(tokens) if tokens else None,
            percentile(latencies, 50), percentile(latencies, 95),
            sum(r.attempts for r in rows),
            Counter(f"{r.outcome}: {r.detail}" for r in rows
                    if r.outcome in ("failed", "truncated", "error") and r.detail),
        ))
    return cells


def _count(cell: Cell, outcome: str) -> str:
    return f"{cell.counts[outcome]} ({cell.rate(outcome):.0%})"


def markdown(cells: Sequence[Cell], *, command: str, header: Sequence[str] = (),
             plot_name: str | None = None) -> str:
    lines = ["# Structured-output success by schema and policy", "",
             "Made by:", "", "```", command, "```", ""]
    lines += [f"- {line}" for line in header]
    lines += ["", "Outcomes: `passed` (valid as generated), `repaired` (raw control characters "
              "escaped), `retried` / `reasked` (valid after asking again), `failed` (a 422 "
              "after the policy ran out), `truncated` (cut off by max_tokens), `error` (the "
              "run's own: a 5xx, a timeout). **valid** = the share of requests that got an "
              "answer. Tokens per answer: mean `usage.total_tokens` of the answers; under "
              "`reask` it sums every attempt, under `retry` it is the accepted attempt's only "
              "(the gateway's usage rules), so `retry`'s real cost is higher than shown. "
              "Latency is the client's wall clock per request, retries included.", ""]
    head = ["schema", "policy", "n", "valid", *OUTCOMES, "upstream calls", "tokens/answer",
            "p50 s", "p95 s"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for cell in cells:
        tokens = f"{cell.tokens_per_answer:.0f}" if cell.tokens_per_answer is not None else "-"
        lines.append("| " + " | ".join([
            cell.schema, f"`{cell.policy}`", str(cell.total), f"**{cell.valid_rate:.0%}**",
            *(_count(cell, o) for o in OUTCOMES), str(cell.attempts), tokens,
            f"{cell.p50_s:.1f}", f"{cell.p95_s:.1f}"]) + " |")
    lines += ["", *_reask_vs_retry(cells), *_reasons(cells)]
    if plot_name:
        lines += ["", f"![outcome rates per schema and policy]({plot_name})"]
    return "\n".join(lines) + "\n"


def _reask_vs_retry(cells: Sequence[Cell]) -> list[str]:
    by = {(c.schema, c.policy): c for c in cells}
    lines = []
    for schema in dict.fromkeys(c.schema for c in cells):
        reask, retry = by.get((schema, "reask")), by.get((schema, "retry"))
        if reask and retry:
            delta = 100 * (reask.valid_rate - retry.valid_rate)
            lines.append(f"- {schema}: `reask` {reask.valid_rate:.0%} valid vs `retry` "
                         f"{retry.valid_rate:.0%}: {delta:+.0f} points "
                         f"({reask.total} and {retry.total} requests)")
    return ["## reask vs retry", "", *lines, ""] if lines else []


def _reasons(cells: Sequence[Cell]) -> list[str]:
    lines = ["## Most frequent failing constraints (422s) and errors", ""]
    found = False
    for cell in cells:
        for reason, count in cell.reasons.most_common(3):
            found = True
            lines.append(f"- {cell.schema} `{cell.policy}`: {count} x `{reason}`")
    return [*lines, ""] if found else []


def plot(cells: Sequence[Cell], path: Path) -> None:
    """Stacked outcome rates, one panel per schema, one bar per policy."""
    import matplotlib

    matplotlib.use("Agg")  # no display; a file only
    import matplotlib.pyplot as plt

    schemas = list(dict.fromkeys(c.schema for c in cells))
    figure, axes = plt.subplots(1, len(schemas), figsize=(4.2 * len(schemas), 4.2),
                                sharey=True, squeeze=False)
    for axis, schema in zip(axes[0], schemas, strict=True):
        mine = [c for c in cells if c.schema == schema]
        bottoms = [0.0] * len(mine)
        for outcome in OUTCOMES:
            rates = [c.rate(outcome) for c in mine]
            axis.bar([c.policy for c in mine], rates, bottom=bottoms,
                     color=_COLOURS[outcome], label=outcome)
            bottoms = [b + r for b, r in zip(bottoms, rates, strict=True)]
        axis.set_title(f"{schema} (n={mine[0].total} per policy)")
        axis.set_ylim(0, 1)
    axes[0][0].set_ylabel("share of requests")
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
