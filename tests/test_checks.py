"""Checks beyond JSON Schema (gateway/output/checks.py): each check on its own, pass and fail; the
`checks` field of a schema file as the registry reads it; and the shipped schemas' checks
on answers that are schema-valid but not usable as IR."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.output import checks
from gateway.output.checks import (
    CheckCrashedError,
    CheckSpecError,
    check_dotted_module_name,
    check_python_identifier,
    check_python_type,
    check_test_function_name,
    compile_checks,
)
from gateway.output.registry import SchemaFileError, SchemaRegistry
from gateway.output.validation import CheckFailure, check_output
from tests.ir_samples import FUNCTION_IR

REPO = Path(__file__).resolve().parent.parent
REGISTRY = SchemaRegistry.load(REPO / "schemas")


@pytest.fixture(autouse=True)
def _no_remembered_type_answers() -> None:
    # The parse of a type expression is cached per process: each test reads its own
    # answers, not those an earlier test (or run) left behind.
    checks._parsed_type_problem.cache_clear()


@pytest.mark.parametrize("name", ["add", "_private", "x1", "snake_case_name", "match", "type",
                                  "_", "déjà"])
def test_identifiers_pass(name: str) -> None:
    assert check_python_identifier(name) is None


@pytest.mark.parametrize(("name", "why"), [
    ("class", "keyword"), ("None", "keyword"), ("lambda", "keyword"), ("async", "keyword"),
    ("2add", "not a Python identifier"), ("my-func", "not a Python identifier"),
    ("", "not a Python identifier"), ("a b", "not a Python identifier"),
    (7, "expected a string"),
])
def test_identifiers_fail(name: Any, why: str) -> None:
    assert why in (check_python_identifier(name) or "")


def test_test_function_names() -> None:
    assert check_test_function_name("test_empty_input") is None
    assert check_test_function_name("testEdge") is None
    assert "does not start with 'test'" in (check_test_function_name("check_empty") or "")
    assert "not a Python identifier" in (check_test_function_name("test empty") or "")


@pytest.mark.parametrize("module", ["os", "os.path", "collections.abc", "_thread", "a.b.c.d"])
def test_dotted_module_names_pass(module: str) -> None:
    assert check_dotted_module_name(module) is None


@pytest.mark.parametrize("module", ["os.", ".os", "os..path", "import", "my.class.x",
                                    "my-lib", "1os", ""])
def test_dotted_module_names_fail(module: str) -> None:
    assert "not a dotted Python module name" in (check_dotted_module_name(module) or "")


@pytest.mark.parametrize("hint", [
    "int", "str", "None", "os.PathLike", "typing.Optional[int]", "list[str]",
    "dict[str, list[int]]", "tuple[int, ...]", "tuple[()]", "Callable[..., int]",
    "Callable[[int, str], bool]", "int | None", "str | bytes | None", "'Node'",
    "list['Node']", "Literal['a', 'b']", "Literal[1, -1, True]", "Annotated[int, 'meta']",
    "collections.abc.Iterator[tuple[str, int]]", "tuple[*Ts]", " int ",
])
def test_type_expressions_pass(hint: str) -> None:
    assert check_python_type(hint) is None


@pytest.mark.parametrize(("hint", "why"), [
    ("print(1)", "a call"),
    ("__import__('os').system('x')", "a call"),
    ("lambda: int", "a lambda"),
    ("[x for x in y]", "a comprehension"),
    ("list[int for x in y]", "not a Python type expression"),
    ("int, str", "a bare tuple"),
    ("[int]", "a bare list"),
    ("int or None", "BoolOp"),
    ("a + b", "BinOp"),
    ("x if y else z", "IfExp"),
    ("{'a': int}", "Dict"),
    ("...", "the constant Ellipsis"),
    ("1", "the constant 1"),
    ("list[1.5]", "the constant 1.5"),
    ("b'x'", "the constant b'x'"),
    ("f'{x}'", "JoinedStr"),
    ("list[int][str]", "only a name can be subscripted"),
    ("f().x", "not a dotted name"),
    ("x[1:2]", "Slice"),
    ("(x := int)", "NamedExpr"),
    ("def f(): pass", "not a Python type expression"),
    ("int\x00", "not a Python type expression"),
    ("", "empty"),
    ("   ", "empty"),
    ("list[" * 60 + "int" + "]" * 60, "longer than"),
    (None, "expected a string"),
])
def test_type_expressions_fail(hint: Any, why: str) -> None:
    assert why in (check_python_type(hint) or "")


def test_deep_nesting_within_the_length_bound_is_read_without_trouble() -> None:
    # ~100 levels fit in 200 characters: parsed and walked, answered either way, never raised.
    assert check_python_type("A[" * 49 + "int" + "]" * 49) is None
    assert check_python_type("(" * 98 + "int" + ")" * 98) is None


def document(**changes: Any) -> dict[str, Any]:
    ir = copy.deepcopy(FUNCTION_IR)
    ir["signature"].update(changes)
    return ir


def check_function_ir(ir: Any) -> CheckFailure | None:
    try:
        check_output(json.dumps(ir), REGISTRY.resolve("function_ir@1"), repair=True)
    except CheckFailure as failure:
        return failure
    return None


def test_function_ir_checks_pass_a_usable_answer() -> None:
    assert check_function_ir(FUNCTION_IR) is None
    assert check_function_ir(document(parameters=[], returns="None")) is None


@pytest.mark.parametrize(("changes", "pointer", "check"), [
    ({"name": "class"}, "/signature/name", "python_identifier"),
    ({"parameters": [{"name": "a", "type_hint": "int"}, {"name": "lambda", "type_hint": "int"}]},
     "/signature/parameters/1/name", "python_identifier"),
    ({"parameters": [{"name": "a", "type_hint": "int"}, {"name": "a", "type_hint": "str"}]},
     "/signature/parameters/1/name", "unique"),
    ({"parameters": [{"name": "a", "type_hint": "os.system('rm')"}]},
     "/signature/parameters/0/type_hint", "python_type"),
    ({"returns": "the sum"}, "/signature/returns", "python_type"),
])
def test_function_ir_checks_fail_with_the_pointer(changes: dict[str, Any], pointer: str,
                                                  check: str) -> None:
    failure = check_function_ir(document(**changes))
    assert failure is not None
    assert failure.pointer == pointer
    assert failure.constraint.startswith(f"check {check} at ")
    assert not failure.truncated


def test_several_findings_name_the_first_and_count_the_rest() -> None:
    failure = check_function_ir(document(name="def", returns="1 +"))
    assert failure is not None and failure.pointer == "/signature/name"
    assert "(and 1 more finding)" in failure.reason
    assert failure.raw_output == json.dumps(document(name="def", returns="1 +"))


MODULE = {
    "purpose": "Slugs for blog posts.", "module_name": "blog.slugs",
    "imports": [{"module": "re", "names": ["sub"]}, {"module": "unicodedata", "names": []}],
    "functions": [
        {"intent": "Slugify.", "name": "slugify",
         "parameters": [{"name": "title", "type_hint": "str"}], "returns": "str",
         "visibility": "public"},
        {"intent": "Strip accents.", "name": "_strip",
         "parameters": [{"name": "title", "type_hint": "str"}], "returns": "str",
         "visibility": "private"},
    ],
}


def check_module(ir: Any) -> CheckFailure | None:
    try:
        check_output(json.dumps(ir), REGISTRY.resolve("module_ir@1"), repair=True)
    except CheckFailure as failure:
        return failure
    return None


def test_module_ir_checks() -> None:
    # The same parameter name in two functions is fine: unique is per array.
    assert check_module(MODULE) is None
    bad_import = copy.deepcopy(MODULE)
    bad_import["imports"][1]["module"] = "import.tools"
    assert (failure := check_module(bad_import)) is not None
    assert failure.pointer == "/imports/1/module" and "dotted_module_name" in failure.constraint
    twice = copy.deepcopy(MODULE)
    twice["functions"][1]["name"] = "slugify"
    assert (failure := check_module(twice)) is not None
    assert failure.pointer == "/functions/1/name" and "/functions/0/name" in failure.reason
    same_param = copy.deepcopy(MODULE)
    same_param["functions"][0]["parameters"].append({"name": "title", "type_hint": "int"})
    assert (failure := check_module(same_param)) is not None
    assert failure.pointer == "/functions/0/parameters/1/name"
    bad_type = copy.deepcopy(MODULE)
    bad_type["functions"][1]["returns"] = "str if x else bytes"
    assert (failure := check_module(bad_type)) is not None
    assert failure.pointer == "/functions/1/returns"


PLAN = {
    "function_name": "slugify", "strategy": "Typical titles, then edge cases.",
    "cases": [
        {"rationale": "Typical.", "name": "test_simple_title", "kind": "typical",
         "inputs": [{"name": "title", "value": "'Hello World'"}],
         "expected": {"outcome": "returns", "value": "'hello-world'"}},
        {"rationale": "Empty.", "name": "test_empty_title", "kind": "edge",
         "inputs": [{"name": "title", "value": "''"}],
         "expected": {"outcome": "returns", "value": "''"}},
    ],
}


def test_test_plan_ir_checks() -> None:
    schema = REGISTRY.resolve("test_plan_ir@1")
    check_output(json.dumps(PLAN), schema, repair=True)
    twice = copy.deepcopy(PLAN)
    twice["cases"][1]["name"] = "test_simple_title"
    with pytest.raises(CheckFailure) as failure:
        check_output(json.dumps(twice), schema, repair=True)
    assert failure.value.pointer == "/cases/1/name" and "unique" in failure.value.constraint
    keyword_function = copy.deepcopy(PLAN)
    keyword_function["function_name"] = "yield"
    with pytest.raises(CheckFailure) as failure:
        check_output(json.dumps(keyword_function), schema, repair=True)
    assert failure.value.pointer == "/function_name"


def test_test_function_name_check_beyond_the_shipped_pattern() -> None:
    # test_plan_ir's pattern already wants `test_`; the check stands for schemas without one.
    schema = {"type": "object", "properties": {"cases": {"type": "array", "items": {
        "type": "object", "properties": {"name": {"type": "string"}}}}}}
    compiled = compile_checks([{"check": "test_function_name", "at": "/cases/*/name"}], schema)
    found = compiled[0].run({"cases": [{"name": "test_ok"}, {"name": "verify_it"}]})
    assert [(f.pointer, f.check) for f in found] == [("/cases/1/name", "test_function_name")]


def test_a_missing_optional_field_is_not_a_finding() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    compiled = compile_checks([{"check": "python_identifier", "at": "/name"}], schema)
    assert compiled[0].run({}) == []


def test_checks_follow_local_refs() -> None:
    schema = {"type": "object", "$defs": {"p": {"type": "object", "properties": {
        "name": {"type": "string"}}}}, "properties": {"ps": {"type": "array",
                                                             "items": {"$ref": "#/$defs/p"}}}}
    compiled = compile_checks([{"check": "unique", "at": "/ps/*/name"}], schema)
    found = compiled[0].run({"ps": [{"name": "a"}, {"name": "b"}, {"name": "a"}]})
    assert [f.pointer for f in found] == ["/ps/2/name"]


@pytest.mark.parametrize(("spec", "why"), [
    ([{"check": "python_identifers", "at": "/signature/name"}],
     "unknown check 'python_identifers'"),
    ([{"check": "python_identifier", "at": "/signature/nmae"}], "nothing at /signature/nmae"),
    ([{"check": "python_identifier", "at": "signature/name"}], "starting with '/'"),
    ([{"check": "python_identifier", "at": "/signature/parameters"}], "is of type 'array'"),
    ([{"check": "unique", "at": "/signature/name"}], "needs a '*'"),
    ([{"check": "python_type"}], "exactly 'check' and 'at'"),
    ([{"check": "python_type", "at": []}], "non-empty list"),
    ({"python_type": "/signature/returns"}, "must be a list"),
    ("python_identifier", "must be a list"),
])
def test_a_broken_checks_field_stops_the_server_naming_the_file(
    tmp_path: Path, spec: Any, why: str,
) -> None:
    data = json.loads((REPO / "schemas" / "function_ir.v1.json").read_text())
    data["checks"] = spec
    path = tmp_path / "function_ir.v1.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SchemaFileError) as error:
        SchemaRegistry.load(tmp_path)
    assert str(error.value).startswith(str(path)) and why in str(error.value)


def test_the_shipped_schemas_name_their_checks() -> None:
    names = {schema.ref: {check.name for check in schema.checks} for schema in REGISTRY}
    assert names == {
        "function_ir@1": {"python_identifier", "unique", "python_type"},
        "module_ir@1": {"dotted_module_name", "python_identifier", "unique", "python_type"},
        "test_plan_ir@1": {"python_identifier", "test_function_name", "unique"},
    }
    public = REGISTRY.resolve("function_ir@1").public()
    assert {"check": "unique", "at": ["/signature/parameters/*/name"]} in public["checks"]


def test_a_check_that_raises_is_a_gateway_error_never_a_pass(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(value: Any) -> str | None:
        raise RuntimeError("bug")

    monkeypatch.setitem(checks.VALUE_CHECKS, "python_type", broken)
    with pytest.raises(CheckCrashedError) as error:
        check_function_ir(FUNCTION_IR)
    assert error.value.status_code == 500 and error.value.code == "internal_error"
    assert error.value.message == ("internal error in the gateway: the python_type check of "
                                   "function_ir@1 failed to run")
    # The operator's log names the check, the schema and what it raised, with the traceback.
    assert any(r.getMessage() == "semantic check python_type on function_ir@1 raised "
               "RuntimeError: a gateway bug" and r.exc_info for r in caplog.records)


def test_compile_checks_refuses_a_non_string_target_for_value_checks() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    with pytest.raises(CheckSpecError, match="checks strings"):
        compile_checks([{"check": "python_identifier", "at": "/n"}], schema)


def test_unique_takes_values_as_written_hashable_or_not() -> None:
    # The quick walk (a set of values) must not decide alone: 1 == True in Python, and
    # lists cannot be hashed. The answer is the careful walk's.
    schema = {"type": "object", "properties": {"xs": {"type": "array", "items": {}}}}
    unique = compile_checks([{"check": "unique", "at": "/xs/*"}], schema)[0]
    assert unique.run({"xs": [1, True, "1", [1], {"a": 1}]}) == []
    assert [f.pointer for f in unique.run({"xs": [[1], {"a": 1}, [1]]})] == ["/xs/2"]


# -- the limits and corners a schema author or a client meets (found by mutation testing)


@pytest.mark.parametrize(("hint", "why"), [
    ("class", "not a Python type expression"),  # a keyword is no name, dotted or not
    ("os.class", "not a Python type expression"),
    ("int | 1", "the constant 1"),  # either side of a `|` is checked
    ("1 | int", "the constant 1"),
    ("list[int | 1]", "the constant 1"),  # a union of a type and a literal raises, even
    ("tuple[str, ... | None]", "the constant Ellipsis"),  # inside brackets
    ("Callable[[int, 1.5], bool]", "the constant 1.5"),  # the items of a bracketed list
    ("Literal[-1.5]", "UnaryOp"),  # only a negative integer literal
    ("Literal[+1]", "UnaryOp"),
    ("Literal[-x]", "UnaryOp"),
    ("-1", "UnaryOp"),  # and only inside brackets
    ("tuple[*f()]", "Starred"),
    ("*Ts", "not a Python type expression"),
    ("list[f()]", "a call"),  # the items of a subscript, one by one
    ("dict[str, f()]", "a call"),
    ("{x for x in y}", "a comprehension"),
    ("{x: 1 for x in y}", "a comprehension"),
    ("(x for x in y)", "a comprehension"),
])
def test_type_expressions_fail_in_every_position(hint: str, why: str) -> None:
    assert why in (check_python_type(hint) or "")


def test_a_type_expression_may_use_the_whole_length_bound() -> None:
    bound = checks.MAX_TYPE_EXPRESSION_CHARS
    assert bound == 200  # the README's limit ("anything over 200 characters fails")
    at_bound = "list[" + "a" * (bound - 6) + "]"
    assert len(at_bound) == bound and check_python_type(at_bound) is None
    over = "list[" + "a" * (bound - 5) + "]"
    assert f"longer than {bound} characters" in (check_python_type(over) or "")
    # A plain dotted name too: anything over the bound fails.
    assert check_python_type("a." * 100 + "b") == "type expression longer than 200 characters"
    assert check_python_type("a." * 99 + "bc") is None


def test_pointers_with_escaped_names_find_the_field_and_name_it_escaped() -> None:
    # RFC 6901: `~1` is a `/` in a property name, `~0` a `~`; a finding's pointer is escaped
    # the same way, so a client can follow it into the answer.
    schema = {"type": "object", "properties": {"a/b": {"type": "string"},
                                               "m~n": {"type": "string"}}}
    compiled = compile_checks([{"check": "python_identifier", "at": ["/a~1b", "/m~0n"]}], schema)
    found = compiled[0].run({"a/b": "1x", "m~n": "class"})
    assert [(f.pointer, f.at) for f in found] == [("/a~1b", "/a~1b"), ("/m~0n", "/m~0n")]
    assert compiled[0].run({"a/b": "ok", "m~n": "fine"}) == []


def nested_schema(depth: int) -> tuple[dict[str, Any], str]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema, "/x" * depth


def test_a_pointer_may_be_sixteen_levels_deep_not_more() -> None:
    schema, at = nested_schema(16)
    compile_checks([{"check": "python_identifier", "at": at}], schema)
    schema, at = nested_schema(17)
    with pytest.raises(CheckSpecError, match="deeper than 16 levels"):
        compile_checks([{"check": "python_identifier", "at": at}], schema)


def test_a_schema_may_name_sixty_four_checks_not_more() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    one = {"check": "python_identifier", "at": "/name"}
    assert len(compile_checks([one] * 64, schema)) == 64
    with pytest.raises(CheckSpecError, match="at most 64"):
        compile_checks([one] * 65, schema)


def test_an_unknown_check_is_refused_naming_the_known_ones() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    with pytest.raises(CheckSpecError) as error:
        compile_checks([{"check": "identifier", "at": "/name"}], schema)
    assert str(error.value) == (
        "checks[0]: unknown check 'identifier' (known: dotted_module_name, python_identifier, "
        "python_type, test_function_name, unique)")


def test_the_target_of_a_check_is_read_through_refs_and_untyped_is_a_string() -> None:
    defs = {"n": {"type": "integer"}, "s": {"type": "string"}, "any": {}}
    schema = {"type": "object", "$defs": defs, "properties": {
        "n": {"$ref": "#/$defs/n"}, "s": {"$ref": "#/$defs/s"}, "free": {"$ref": "#/$defs/any"},
        "far": {"$ref": "https://example.com/s.json"}}}
    # A $ref that ends the pointer is followed too: an integer is no place for a name check.
    with pytest.raises(CheckSpecError, match="is of type 'integer'"):
        compile_checks([{"check": "python_identifier", "at": "/n"}], schema)
    compiled = compile_checks([{"check": "python_identifier", "at": ["/s", "/free"]}], schema)
    assert [f.pointer for f in compiled[0].run({"s": "1", "free": "def"})] == ["/s", "/free"]
    with pytest.raises(CheckSpecError, match="only local \\$refs"):
        compile_checks([{"check": "python_identifier", "at": "/far"}], schema)


def test_one_finding_is_named_alone_and_more_are_counted() -> None:
    # What a client reads in the 422's message: the first finding, then how many more.
    only = check_function_ir(document(name="def"))
    assert only is not None and only.reason == "'def' is a Python keyword, not usable as a name"
    three = check_function_ir(document(name="def", returns="1 +", parameters=[
        {"name": "class", "type_hint": "int"}]))
    assert three is not None and three.pointer == "/signature/name"
    assert three.reason == ("'def' is a Python keyword, not usable as a name "
                            "(and 2 more findings)")
    assert three.constraint == "check python_identifier at /signature/name"


@pytest.mark.parametrize(("value", "message"), [
    (7, "expected a string, got int"),
    ("print(1)", "'print(1)' is not a Python type expression: a call is not allowed in a type "
                 "expression"),
    ("lambda: int", "'lambda: int' is not a Python type expression: a lambda is not allowed "
                    "in a type expression"),
    ("[x for x in y]", "'[x for x in y]' is not a Python type expression: a comprehension is "
                       "not allowed in a type expression"),
    ("{x for x in y}", "'{x for x in y}' is not a Python type expression: a comprehension is "
                       "not allowed in a type expression"),
    ("{x: 1 for x in y}", "'{x: 1 for x in y}' is not a Python type expression: a "
                          "comprehension is not allowed in a type expression"),
    ("(x for x in y)", "'(x for x in y)' is not a Python type expression: a comprehension is "
                       "not allowed in a type expression"),
    ("int, str", "'int, str' is not a Python type expression: a bare tuple (use tuple[...]) "
                 "is not allowed in a type expression"),
    ("[int]", "'[int]' is not a Python type expression: a bare list (use list[...]) is not "
              "allowed in a type expression"),
    ("int or None", "'int or None' is not a Python type expression: BoolOp is not allowed in "
                    "a type expression"),
    ("list[int][str]", "'list[int][str]' is not a Python type expression: only a name can be "
                       "subscripted, not 'list[int]'"),
    ("f().x", "'f().x' is not a Python type expression: 'f().x' is not a dotted name"),
    ("list[1.5]", "'list[1.5]' is not a Python type expression: the constant 1.5 is not a "
                  "type"),
])
def test_a_type_expression_refusal_says_what_is_not_allowed(value: Any, message: str) -> None:
    # The finding's message is the 422's reason: the schema author and the client read it.
    assert check_python_type(value) == message


@pytest.mark.parametrize("hint", [
    "typing.Optional[int]", "dict[str, os.PathLike]", "'Node' | None", "Literal[None, 'a']",
    "tuple[int, ...]", "Literal[True, 1, -1]", "int | None", "Callable[[int], str]",
    "tuple[*Ts]", "a.b.c[d.e]", "Literal['a'] | None", "Annotated[int, [1, -1, True]]",
])
def test_type_expressions_pass_parsed(hint: str) -> None:
    assert check_python_type(hint) is None


def test_an_optional_field_missing_beside_a_finding_is_skipped() -> None:
    schema = {"type": "object", "properties": {"ps": {"type": "array", "items": {
        "type": "object", "properties": {"name": {"type": "string"}}}}}}
    compiled = compile_checks([{"check": "python_identifier", "at": "/ps/*/name"}], schema)
    found = compiled[0].run({"ps": [{"name": "1x"}, {}, {"name": "ok"}]})
    assert [f.pointer for f in found] == ["/ps/0/name"]


@pytest.mark.parametrize(("at", "message"), [
    ("/signature/nmae/x", "'at' '/signature/nmae/x': the schema has nothing at "
                          "/signature/nmae"),
    ("/signature/name/x", "'at' '/signature/name/x': the schema has nothing at "
                          "/signature/name/x"),
])
def test_a_pointer_that_leads_nowhere_is_named_where_it_stops(at: str, message: str) -> None:
    schema = REGISTRY.resolve("function_ir@1").schema
    with pytest.raises(CheckSpecError) as error:
        compile_checks([{"check": "python_identifier", "at": at}], schema)
    assert str(error.value) == message


@pytest.mark.parametrize("ref", ["#/$defs/gone", "#/$defs/gone/deeper", "#/$defs/list/0"])
def test_a_ref_that_leads_nowhere_is_a_clear_refusal(ref: str) -> None:
    schema = {"type": "object", "$defs": {"list": [1]},
              "properties": {"p": {"$ref": ref}}}
    with pytest.raises(CheckSpecError) as error:
        compile_checks([{"check": "python_identifier", "at": "/p/x"}], schema)
    assert str(error.value) == "'at' '/p/x' leads nowhere in the schema"


def ref_chain(hops: int) -> dict[str, Any]:
    defs: dict[str, Any] = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(hops - 1)}
    defs[f"d{hops - 1}"] = {"type": "object", "properties": {"name": {"type": "string"}}}
    return {"type": "object", "$defs": defs, "properties": {"p": {"$ref": "#/$defs/d0"}}}


def test_a_chain_of_eight_refs_is_followed_not_more() -> None:
    check = [{"check": "python_identifier", "at": "/p/name"}]
    assert [f.pointer for f in compile_checks(check, ref_chain(8))[0].run(
        {"p": {"name": "1x"}})] == ["/p/name"]
    with pytest.raises(CheckSpecError, match="nothing at /p/name"):
        compile_checks(check, ref_chain(9))


def test_a_unique_finding_names_its_pattern_and_both_places() -> None:
    failure = check_function_ir(document(parameters=[{"name": "a", "type_hint": "int"},
                                                     {"name": "a", "type_hint": "str"}]))
    assert failure is not None
    assert failure.constraint == "check unique at /signature/parameters/*/name"
    assert failure.reason == ("duplicate 'a' (first at /signature/parameters/0/name); must be "
                              "unique")


@pytest.mark.parametrize(("spec", "message"), [
    ({"check": "unique"}, "'checks' must be a list of at most 64 objects "
                          '{"check": NAME, "at": POINTER or [POINTER, ...]}'),
    ([{"check": "unique", "at": "/signature/name"}],
     "checks[0]: unique needs a '*' in '/signature/name' (the array whose items must differ)"),
])
def test_a_checks_field_refusal_says_what_is_expected(spec: Any, message: str) -> None:
    with pytest.raises(CheckSpecError) as error:
        compile_checks(spec, REGISTRY.resolve("function_ir@1").schema)
    assert str(error.value) == message


@pytest.mark.parametrize(("hint", "why"), [
    # A forward reference is code to `typing.get_type_hints`, which evaluates it: what is
    # inside the quotes is held to the same rules (the shell command below ran).
    ("'__import__(\"os\").system(\"echo x\")'", "a call"),
    ("'exec(input())'", "a call"),
    ("''", "empty"),
    ("list['']", "empty"),
    ("dict[str, 'print(1)']", "a call"),
    ("Annotated['x()', 'doc']", "a call"),
    ("Optional['1']", "the constant 1"),
])
def test_a_quoted_type_must_hold_a_type_expression(hint: str, why: str) -> None:
    assert why in (check_python_type(hint) or "")


@pytest.mark.parametrize("hint", ["'list[int]'", "Optional['Node']", "dict[str, 'list[int]']",
                                  "Literal['exec(x)', '']", "typing.Literal['a b']",
                                  "Annotated[int, 'any text: (x)']"])
def test_strings_that_are_values_or_good_forward_references_pass(hint: str) -> None:
    # A Literal's strings and Annotated's metadata are values, never evaluated.
    assert check_python_type(hint) is None
