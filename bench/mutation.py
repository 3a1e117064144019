"""Mutation testing of the modules that carry the gateway's promise, within a time budget.

For each module, mutmut (the `mutation` extra: `pip install -e '.[mutation]'`) makes small
changes to the code one at a time (a `<` for a `<=`, a constant, a dropped call) and runs the
unit tests that cover the changed function; a mutant the tests still pass is a gap in the
tests, or a change that does not change behaviour (an *equivalent* mutant). The score is
killed / (killed + survived + not covered by the selected tests); mutants left unchecked
when the budget ran out are counted apart.

Each module runs in its own copy of the repository under `bench/.mutation/<module>/`
(ignored by git; `--resume` continues there instead of starting afresh), with only the test
files listed for it below, one mutant at a time (the machine is shared). Not part of CI.

    .venv/bin/python bench/mutation.py --budget-min 60                  # every module
    .venv/bin/python bench/mutation.py --budget-min 10 gateway/access/auth.py  # one

Results: bench/results/mutation.md (score per module, then every survivor's diff; the row
and survivors of a module not run this time are kept from the previous file).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common.procs import exit_on_signals, stop_group  # noqa: E402

WORK = REPO / "bench" / ".mutation"
RESULTS = REPO / "bench" / "results" / "mutation.md"

# The module, and the fast unit tests that exercise it (mutmut then runs, per mutant, only
# those of them that cover the mutated function).
MODULES: dict[str, list[str]] = {
    "gateway/output/validation.py": ["tests/test_validation.py", "tests/test_output_exactness.py",
                                     "tests/test_checks.py", "tests/test_chat.py",
                                     "tests/test_streaming.py"],
    "gateway/output/registry.py": ["tests/test_registry_files.py", "tests/test_registry.py",
                                   "tests/test_validation.py", "tests/test_chat.py"],
    "gateway/access/keys.py": ["tests/test_keys.py", "tests/test_key_guards.py",
                               "tests/test_keys_file_store.py"],
    "gateway/access/auth.py": ["tests/test_keys.py", "tests/test_key_guards.py",
                               "tests/test_auth_guidance.py"],
    "gateway/ratelimit/base.py": ["tests/test_ratelimit.py", "tests/test_retry_after.py",
                                  "tests/test_ratelimit_refusals.py"],
    "gateway/ratelimit/memory.py": ["tests/test_ratelimit.py", "tests/test_ratelimit_refusals.py"],
    "gateway/ratelimit/limiter.py": ["tests/test_ratelimit.py", "tests/test_retry_after.py",
                                     "tests/test_ratelimit_refusals.py"],
    "gateway/ratelimit/fallback.py": ["tests/test_ratelimit_fallback.py",
                                      "tests/test_ratelimit.py"],
    "gateway/ratelimit/inflight.py": ["tests/test_ratelimit.py", "tests/test_retry_after.py",
                                      "tests/test_ratelimit_refusals.py",
                                      "tests/test_inflight_gate.py"],
    "gateway/ratelimit/circuit.py": ["tests/test_ratelimit.py", "tests/test_ratelimit_circuit.py"],
    "gateway/ratelimit/redis.py": ["tests/test_ratelimit_redis_quotas.py",
                                   "tests/test_ratelimit.py", "tests/test_ratelimit_scripts.py",
                                   "tests/test_retry_after.py"],
    "gateway/generation/streaming.py": ["tests/test_stream_relay.py", "tests/test_streaming.py"],
    "gateway/generation/planning.py": ["tests/test_planning_rules.py", "tests/test_planning.py",
                                       "tests/test_tools.py", "tests/test_chat.py",
                                       "tests/test_routes.py"],
    "gateway/generation/contract.py": ["tests/test_contract_checks.py", "tests/test_contract.py",
                                       "tests/test_planning.py",
                                       "tests/test_budget.py"],
    "gateway/generation/tools.py": ["tests/test_tools.py", "tests/test_routes.py",
                                    "tests/test_streaming.py"],
    "gateway/generation/budget.py": ["tests/test_budget.py", "tests/test_key_guards.py"],
    "gateway/output/adhoc.py": ["tests/test_adhoc_caps.py", "tests/test_adhoc_admission.py"],
    "gateway/output/checks.py": ["tests/test_checks.py"],
    "gateway/output/engine_rules.py": ["tests/test_engine_rules.py", "tests/test_engine_lint.py"],
    "gateway/output/engine_regex.py": ["tests/test_engine_regex_bounds.py",
                                       "tests/test_engine_rules.py"],
}
# (gateway/ratelimit/scripts.py is Lua in strings: mutmut does not mutate it; its checks are
# tests/test_ratelimit_scripts.py and the planted-bug runs described in the README.)

KILLED = {"killed", "timeout", "segfault", "caught by type check"}
_STRING = re.compile(r"""[rbf]*("([^"\\]|\\.)*"|'([^'\\]|\\.)*')""")


def text_only(diff: str) -> bool:
    """A mutant that changes only the text of string literals (mutmut's "XX...XX" and case
    changes): in an error or log message that is wording, which the tests deliberately do
    not pin; elsewhere (a header name, a JSON key) it is behaviour. Flagged, not excused."""
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-")
               and not line.startswith("---")]
    added = [line[1:] for line in diff.splitlines() if line.startswith("+")
             and not line.startswith("+++")]
    def strip(lines: list[str]) -> list[str]:
        return [_STRING.sub('""', line) for line in lines]
    return bool(removed) and removed != added and strip(removed) == strip(added)


@dataclass
class Outcome:
    module: str
    statuses: dict[str, str] = field(default_factory=dict)  # mutant -> status
    diffs: dict[str, str] = field(default_factory=dict)  # survivors and uncovered
    seconds: float = 0.0
    finished: bool = False

    def count(self, *names: str) -> int:
        return sum(status in names for status in self.statuses.values())

    @property
    def killed(self) -> int:
        return self.count(*KILLED)

    @property
    def scored(self) -> int:
        return self.killed + self.count("survived", "no tests")

    @property
    def text_only(self) -> int:
        return sum(self.statuses[name] == "survived" and text_only(diff)
                   for name, diff in self.diffs.items())

    def row(self) -> str:
        score = f"{100 * self.killed / self.scored:.0f}%" if self.scored else "-"
        rest = self.scored - self.text_only
        behaviour = f"{100 * self.killed / rest:.0f}%" if rest else "-"
        unchecked = self.count("not checked")
        took = f"{self.seconds / 60:.0f} min" + ("" if self.finished else " (budget)")
        return (f"| `{self.module}` | {len(self.statuses)} | {self.killed} | "
                f"{self.count('survived')} ({self.text_only} text only) | "
                f"{self.count('no tests')} | {unchecked} | **{score}** | {behaviour} | {took} |")


def slug(module: str) -> str:
    return module.removeprefix("gateway/").removesuffix(".py").replace("/", "_")


def prepare(module: str, tests: list[str], resume: bool) -> Path:
    """A copy of the tracked files, with mutmut's configuration for this module."""
    work = WORK / slug(module)
    if work.exists() and not resume:
        shutil.rmtree(work)
    if not work.exists():
        files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True,
                               capture_output=True).stdout.decode().split("\0")
        for name in filter(None, files):
            if (REPO / name).is_file():  # a file deleted but not yet committed is skipped
                (work / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, work / name)
        config = (
            "\n[tool.mutmut]\n"
            f"paths_to_mutate = [{json.dumps(module)}]\n"
            f"tests_dir = {json.dumps(tests)}\n"
            'also_copy = ["schemas/", "gateway/", "tests/", "openapi/"]\n'
            'pytest_add_cli_args = ["-m", "not integration", "-p", "no:cacheprovider", '
            '"-q", "-x"]\n'
        )
        with (work / "pyproject.toml").open("a") as toml:
            toml.write(config)
    return work


def refresh_tests(work: Path) -> list[str]:
    """After tests were added: the repository's tests copied over `work`'s, and the names of
    the mutants that survived there (or had no test), for mutmut to run again."""
    files = subprocess.run(["git", "ls-files", "-z", "tests"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / name)
    from mutmut.stats import status_by_exit_code

    again = []
    for meta in (work / "mutants").rglob("*.meta"):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        again += [name for name, code in codes.items()
                  if status_by_exit_code[code] in ("survived", "no tests")]
    return again


def unchecked(work: Path) -> int:
    return sum(code is None for meta in (work / "mutants").rglob("*.meta")
               for code in json.loads(meta.read_text())["exit_code_by_key"].values())


MEMORY_LIMIT = 3 * 1024**3  # address space of mutmut and each mutant's test run


def _limit_memory() -> None:
    """A mutant that loops while it allocates (a loop bound turned around) grew past 4 GB
    before mutmut's CPU limit stopped it, and drove the shared machine into reclaim. With
    this cap its allocation fails instead: a MemoryError fails its tests, which kills it."""
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_mutmut(work: Path, budget_s: float, names: list[str] | None = None
               ) -> tuple[float, bool]:
    """mutmut in `work` until done or out of time (only `names`, if given; else those not
    yet checked); its results are saved per mutant."""
    mutmut = Path(sys.executable).with_name("mutmut")
    started = time.monotonic()
    log = (work / "mutmut.log").open("a")
    process = subprocess.Popen([str(mutmut), "run", "--max-children", "1", *(names or [])],
                               cwd=work, preexec_fn=_limit_memory,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finished = False
    try:
        process.wait(timeout=budget_s)
        finished = process.returncode == 0
    except subprocess.TimeoutExpired:
        pass
    finally:
        stop_group(process)  # its own session: mutmut and its children, also on a signal
        log.close()
    return time.monotonic() - started, finished


def collect(module: str, work: Path) -> Outcome:
    """Statuses and survivors' diffs, read with mutmut's own code from inside `work`."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    outcome = Outcome(module)
    meta = work / "mutants" / f"{module}.meta"
    if not meta.exists():
        return outcome
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    here = Path.cwd()
    os.chdir(work)
    try:
        for name, code in sorted(codes.items()):
            status = status_by_exit_code[code]
            outcome.statuses[name] = status
            if status in ("survived", "no tests"):
                try:
                    outcome.diffs[name] = get_diff_for_mutant(name, path=module)
                except Exception as exc:  # a report line is worth more than a traceback
                    outcome.diffs[name] = f"(diff unavailable: {exc!r})"
    finally:
        os.chdir(here)
    return outcome


def previous_rows() -> dict[str, str]:
    if not RESULTS.exists():
        return {}
    rows = {}
    for line in RESULTS.read_text().splitlines():
        match = re.match(r"\| `([^`]+)` \|", line)
        if match:
            rows[match[1]] = line
    return rows


def previous_survivors() -> dict[str, list[str]]:
    """Each module's survivors section from the previous file, kept for modules not run."""
    if not RESULTS.exists():
        return {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in RESULTS.read_text().splitlines():
        match = re.match(r"### `([^`]+)`: \d+", line)
        if match:
            current = sections.setdefault(match[1], [])
        if current is not None:
            current.append(line)
    return sections


def write_report(outcomes: list[Outcome], budget_min: float) -> None:
    rows = previous_rows()
    sections = previous_survivors()
    for outcome in outcomes:
        rows[outcome.module] = outcome.row()
    lines = [
        "# Mutation testing (mutmut)",
        "",
        f"`bench/mutation.py`, last run {time.strftime('%Y-%m-%d %H:%M')} with a budget of "
        f"{budget_min:g} min, one mutant at a time on a 2-vCPU machine shared with other work. "
        "Score = killed / (killed + survived + not covered by the module's selected tests); "
        "'unchecked' mutants ran out of budget and are not in the score. 'text only': survivors "
        "that change nothing but a string literal's text (mostly error and log wording, which "
        "the tests deliberately do not pin; each is listed below to check that it is one); "
        "'without text' is the score without them. Target: 90%.",
        "",
        "| module | mutants | killed | survived | not covered | unchecked | score "
        "| without text | time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(rows[module] for module in MODULES if module in rows),
        "",
        "## Survivors of each module's last run",
        "",
        "Each is a gap in the tests or an equivalent mutant; `## Judged equivalent` in",
        "bench/README.md lists those judged equivalent and why.",
        "",
    ]
    for outcome in outcomes:
        section = [f"### `{outcome.module}`: {len(outcome.diffs)}", ""]
        for name, diff in outcome.diffs.items():
            kind = outcome.statuses[name] + (", text only" if text_only(diff) else "")
            section += [f"`{name}` ({kind})", "", "```diff", diff, "```", ""]
        sections[outcome.module] = section
    for module in MODULES:
        lines += sections.get(module, [])
    RESULTS.write_text("\n".join(lines).rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"default: all of {list(MODULES)}")
    parser.add_argument("--budget-min", type=float, default=60.0,
                        help="wall-clock minutes for all modules together (default 60)")
    parser.add_argument("--resume", action="store_true",
                        help="continue in bench/.mutation/<module> instead of starting afresh")
    parser.add_argument("--recheck", action="store_true",
                        help="after adding tests: in bench/.mutation/<module>, take the "
                        "repository's tests, run the survivors again, then go on with the "
                        "mutants not yet checked")
    args = parser.parse_args()
    exit_on_signals()
    if args.recheck:
        args.resume = True
    modules = args.modules or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {list(MODULES)}")
    deadline = time.monotonic() + args.budget_min * 60
    outcomes = []
    for index, module in enumerate(modules):
        # Spread what is left over the modules still to run.
        share = (deadline - time.monotonic()) / (len(modules) - index)
        if share < 30:
            print(f"{module}: skipped, budget spent", flush=True)
            continue
        work = prepare(module, MODULES[module], args.resume)
        seconds = 0.0
        again = refresh_tests(work) if args.recheck else []
        if again:
            seconds, _ = run_mutmut(work, share, again)
        if args.recheck and not unchecked(work):
            finished = True  # nothing left for a plain run to do (it would rerun the tests)
        else:
            more, finished = (run_mutmut(work, share - seconds) if share - seconds > 30
                              else (0, False))
            seconds += more
        outcome = collect(module, work)
        outcome.seconds, outcome.finished = seconds, finished
        outcomes.append(outcome)
        print(outcome.row(), flush=True)
    write_report(outcomes, args.budget_min)
    print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
