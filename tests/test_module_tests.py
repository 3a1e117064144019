"""Every module in gateway/ that holds logic has tests a reader can find (issue 18), so that a
new module without tests is noticed here rather than in production.

A module is covered when a test file imports it, or a name it defines (also through a
package or module that re-exports the name). A module reached only through the HTTP API,
a command or another module is listed in TESTED_THROUGH with the test files that drive it:
each must exist and reach the module through its imports (its helpers' included: a running
gateway imports gateway.app). EXEMPT is code with no unit tests at all, each with its reason.
Both lists must stay true: an entry for a module that is gone, or that a test now imports,
is an error. tests/README.md maps the packages to their test files for a reader.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"

# Reached through the API, a command or the limiter, not imported by a test.
TESTED_THROUGH: dict[str, tuple[str, ...]] = {
    # the HTTP routes, one module per resource, driven by requests to a running gateway
    "gateway.routes.admin": ("test_admin_api.py",),
    "gateway.routes.chat": ("test_chat.py", "test_routes.py", "test_streaming.py"),
    "gateway.routes.common": ("test_malformed_bodies.py", "test_server_limits.py"),
    "gateway.routes.completions": ("test_routes.py", "test_streaming.py"),
    "gateway.routes.health": ("test_routes.py", "test_canary.py"),
    "gateway.routes.models": ("test_routes.py", "test_key_visibility.py"),
    "gateway.routes.schemas": ("test_routes.py", "test_key_visibility.py"),
    "gateway.services": ("test_routes.py",),
    # the generation pipeline behind those routes
    "gateway.generation.admission": ("test_limits_e2e.py", "test_adhoc_admission.py",
                                     "test_token_budget_e2e.py"),
    "gateway.generation.cached": ("test_cache.py",),
    "gateway.generation.pipeline": ("test_chat.py", "test_routes.py", "test_streaming.py"),
    "gateway.generation.context": ("test_chat.py", "test_routes.py"),
    "gateway.generation.failures": ("test_chat.py", "test_streaming.py", "test_reask.py"),
    "gateway.generation.checking": ("test_chat.py", "test_reask.py", "test_checks_e2e.py"),
    "gateway.generation.engine_failures": ("test_engine_failures.py",),
    "gateway.generation.relaying": ("test_streaming.py",),
    "gateway.access.cache": ("test_cache.py",),
    "gateway.access.admin_ops": ("test_admin_api.py",),
    "gateway.server.body_budget": ("test_body_budget.py", "test_body_budget_held.py"),
    "gateway.server.reading": ("test_malformed_bodies.py", "test_server_limits.py"),
    # requests observed: metrics, logs, traces
    "gateway.observe.logs": ("test_observe.py",),
    "gateway.observe.metrics": ("test_observe.py", "test_dashboard_prometheus.py"),
    "gateway.observe.observer": ("test_observe.py", "test_tracing.py"),
    # the OpenAPI document, built and checked by its command
    "gateway.openapi_doc.admin": ("test_openapi_doc.py",),
    "gateway.openapi_doc.document": ("test_openapi_doc.py",),
    "gateway.openapi_doc.operations": ("test_openapi_doc.py",),
    "gateway.openapi_doc.schemas": ("test_openapi_doc.py",),
    # `ir-gateway` commands, run as a user runs them
    "gateway.access.remote": ("test_admin_api.py",),
    "gateway.access.usage_cli": ("test_usage.py",),
    "gateway.evaluation.cli": ("test_eval.py",),
    "gateway.output.schemas_cli": ("test_engine_lint.py",),
    "gateway.dev.cli": ("test_dev_stack.py",),
    "gateway.dev.options": ("test_dev_stack.py",),
    "gateway.dev.reaper": ("test_dev_stack_signals.py",),
    # the limiter's parts, through both limiters
}

EXEMPT: dict[str, str] = {
    module: "a model builder run in the vLLM environment (torch), not the gateway's; what it "
    "builds is served by vLLM in the integration suite (tests/integration/)"
    for module in ("gateway.dev.models.chatml", "gateway.dev.models.corpus",
                   "gateway.dev.models.smollm", "gateway.dev.models.tiny")
}


# -- reading the imports

def modules_of(package: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module under `package` (a directory)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


@functools.cache
def parsed(path: Path) -> tuple[ast.AST, tuple[ast.AST, ...]]:
    """A file's tree and all its nodes (read once per test session)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return tree, tuple(ast.walk(tree))


def has_logic(path: Path) -> bool:
    """A function or class at its top level: constants and re-exports need no tests."""
    tree = parsed(path)[0]
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
               for node in getattr(tree, "body", ()))


def imported_names(path: Path, prefixes: tuple[str, ...]) -> set[str]:
    """What `path` imports from modules under `prefixes`, anywhere in it (a deferred import
    counts), as dotted names: `module` or `module.name`."""
    names: set[str] = set()
    for node in parsed(path)[1]:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] in prefixes)
        elif (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
              and node.module.split(".")[0] in prefixes):
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


class Imports:
    """Which module a dotted name lands in, and what a module reaches."""

    def __init__(self, modules: dict[str, Path]) -> None:
        self.modules = modules
        prefixes = tuple({name.split(".")[0] for name in modules})
        self.direct = {name: imported_names(path, prefixes) for name, path in modules.items()}
        self._reached: dict[str, set[str]] = {}

    def defining(self, dotted: str, seen: frozenset[str] = frozenset()) -> str | None:
        """The module that defines `dotted` (a module itself, or `module.name`, followed
        through re-exports), or None outside these modules."""
        if dotted in self.modules:
            return dotted
        module, _, name = dotted.rpartition(".")
        if module not in self.modules:
            return self.defining(module, seen) if module else None
        for imported in self.direct[module]:  # `from elsewhere import name` in `module`
            if imported.rpartition(".")[2] == name and imported not in seen:
                return self.defining(imported, seen | {imported}) or module
        return module

    def reached(self, names: set[str]) -> set[str]:
        """Every module these names import, transitively."""
        found: set[str] = set()
        for module in {m for m in (self.defining(n) for n in names) if m is not None}:
            found |= self._from(module)
        return found

    def _from(self, start: str) -> set[str]:
        if start not in self._reached:
            found: set[str] = set()
            todo = [start]
            while todo:
                module = todo.pop()
                if module not in found:
                    found.add(module)
                    todo.extend(m for m in (self.defining(n) for n in self.direct[module])
                                if m is not None)
            self._reached[start] = found
        return self._reached[start]


def files_of_tests(tests: Path = TESTS) -> list[Path]:
    return sorted(tests.glob("test_*.py")) + sorted(tests.glob("integration/test_*.py"))


def run_as_commands(path: Path, package: str) -> set[str]:
    """Modules a test runs in a subprocess: `-m gateway` (or the `ir-gateway` script it
    installs) is `gateway.__main__`; `-m gateway.dev.reaper` is that module."""
    names = set()
    for node in parsed(path)[1]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in (package, f"ir-{package}"):
                names.add(f"{package}.__main__")
            elif node.value.startswith(f"{package}.") and " " not in node.value:
                names.add(node.value)
    return names


def drives(path: Path, package: str, tests: Path = TESTS) -> set[str]:
    """What a test file imports or runs, with what its helpers in tests/ (conftest.py's
    fixtures included) import."""
    names: set[str] = set()
    todo = [path, *(p for p in (tests / "conftest.py", path.parent / "conftest.py")
                    if p.is_file())]
    seen: set[Path] = set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        names |= run_as_commands(current, package)
        for name in imported_names(current, (package, tests.name)):
            if name.split(".")[0] == tests.name:
                for candidate in (name, name.rpartition(".")[0]):
                    helper = tests.parent / (candidate.replace(".", "/") + ".py")
                    if helper.is_file():
                        todo.append(helper)
                        break
            else:
                names.add(name)
    return names


def untested(package: Path, tests: Path, through: dict[str, tuple[str, ...]],
             exempt: dict[str, str]) -> tuple[list[str], list[str]]:
    """(modules with logic no test covers, problems with the two lists)."""
    imports = Imports(modules_of(package))
    covered: set[str] = set()
    for path in files_of_tests(tests):
        names = {n for n in imported_names(path, (package.name,))}
        covered.update(m for m in (imports.defining(n) for n in names) if m is not None)
    missing = [name for name, path in imports.modules.items()
               if has_logic(path) and name not in covered and name not in through
               and name not in exempt]
    problems = []
    for name in [*through, *exempt]:
        if name not in imports.modules:
            problems.append(f"{name} is listed but no longer exists: drop its entry")
        elif name in covered:
            problems.append(f"{name} is imported by a test now: drop its entry")
    for name, files in through.items():
        for file in files:
            path = tests / file
            if not path.is_file():
                problems.append(f"{name}: {file} does not exist")
            elif name in imports.modules and name not in imports.reached(
                    drives(path, package.name, tests)):
                problems.append(f"{name}: {file} does not reach it through its imports")
    return missing, problems


# -- the checks

def test_every_module_with_logic_has_tests_a_reader_can_find() -> None:
    missing, problems = untested(REPO / "gateway", TESTS, TESTED_THROUGH, EXEMPT)
    assert not missing, (
        "modules no test file imports: add tests/test_<module>.py that imports it, or, if "
        "only the API or a command reaches it, list it in TESTED_THROUGH with the test files "
        "that drive it (and in tests/README.md):\n  " + "\n  ".join(missing))
    assert not problems, "\n".join(problems)


def test_the_exemptions_say_why() -> None:
    assert all(len(reason.split()) >= 5 for reason in EXEMPT.values())
    assert all(files for files in TESTED_THROUGH.values())


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_module_without_tests_is_found_and_a_re_export_counts(tmp_path: Path) -> None:
    _tree(tmp_path, {
        "app/__init__.py": "from app.inner import Thing\n",
        "app/inner.py": "class Thing:\n    pass\n",
        "app/direct.py": "def f():\n    return 1\n",
        "app/lonely.py": "def g():\n    return 2\n",
        "app/constants.py": "LIMIT = 3\n",
        "app/served.py": "def h():\n    return 4\n",
        "app/front.py": "def serve():\n    from app import served\n",
        "checks/__init__.py": "",
        "checks/helper.py": "from app.front import serve\n",
        "checks/test_a.py": "from app import Thing\nfrom app.direct import f\n",
        "checks/test_b.py": "def test():\n    from checks.helper import serve\n",
        "checks/test_c.py": "import subprocess\nsubprocess.run(['python', '-m', 'app.lonely'])\n",
    })
    package, tests = tmp_path / "app", tmp_path / "checks"
    missing, problems = untested(package, tests, {}, {})
    assert missing == ["app.front", "app.lonely", "app.served"] and problems == []
    # reached through a helper's import of the front: a valid TESTED_THROUGH entry
    # and a module a test runs as a command is reached by it
    through = {"app.served": ("test_b.py",), "app.front": ("test_b.py",),
               "app.lonely": ("test_c.py",)}
    missing, problems = untested(package, tests, through, {})
    assert missing == [] and problems == []
    # entries that are no longer true are errors
    stale = {"app.served": ("test_a.py",), "app.direct": ("test_a.py",),
             "app.gone": ("test_a.py",), "app.front": ("test_d.py",)}
    _, problems = untested(package, tests, stale, {"app.inner": "a reason"})
    assert problems == [
        "app.direct is imported by a test now: drop its entry",
        "app.gone is listed but no longer exists: drop its entry",
        "app.inner is imported by a test now: drop its entry",
        "app.served: test_a.py does not reach it through its imports",
        "app.front: test_d.py does not exist",
    ]


@pytest.mark.parametrize("module", sorted(TESTED_THROUGH))
def test_tests_readme_says_where_each_module_without_an_import_is_tested(module: str) -> None:
    # a line of its table names the module's file and one of the files that drive it
    lines = (TESTS / "README.md").read_text(encoding="utf-8").splitlines()
    file = f"`{module.rpartition('.')[2]}.py`"
    drivers = [name.removesuffix(".py") for name in TESTED_THROUGH[module]]
    assert any(file in line and any(d in line for d in drivers) for line in lines), \
        f"tests/README.md has no line naming {file} with one of {drivers}"
