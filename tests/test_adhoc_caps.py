"""The ad-hoc schema caps at their limits, and the cache (gateway/output/adhoc.py), without a
server: what a client sent just within a cap is compiled, one value past it is a 400 whose
message names the figure and the setting to raise."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import InvalidSchemaError
from gateway.output.adhoc import AdhocSchemas, PendingAdhoc, shape_error
from gateway.settings import Settings

PARAM = "response_format.json_schema.schema"


def schemas(**caps: Any) -> AdhocSchemas:
    values = {"policy": "repair", "max_bytes": 65_536, "max_depth": 32, "max_nodes": 1_000,
              "cache_size": 8, **caps}
    return AdhocSchemas(**values)


def refusal(cache: AdhocSchemas, schema: Any, param: str = PARAM) -> InvalidSchemaError:
    with pytest.raises(InvalidSchemaError) as error:
        cache.compile(PendingAdhoc("M", schema, param))
    assert error.value.status_code == 400 and error.value.param == param
    return error.value


def with_values(count: int) -> dict[str, Any]:
    """An object schema of exactly `count` JSON values (itself included)."""
    properties = {f"p{i}": {} for i in range(count - 3)}  # +1 "type", +1 "properties", +1 self
    return {"type": "object", "properties": properties}


def nested(levels: int) -> dict[str, Any]:
    """A schema `levels` JSON levels deep: {"not": {"not": ... {}}}."""
    schema: dict[str, Any] = {}
    for _ in range(levels - 1):
        schema = {"not": schema}
    return schema


def test_shape_error_counts_values_and_levels_exactly() -> None:
    assert shape_error(with_values(10), max_depth=8, max_nodes=10) is None
    assert "more than 9 JSON values (IRGW_ADHOC_SCHEMA_MAX_NODES)" in (
        shape_error(with_values(10), max_depth=8, max_nodes=9) or "")
    assert shape_error(nested(8), max_depth=8, max_nodes=100) is None
    # Arrays are levels too, and a value inside the innermost one is a level deeper.
    assert shape_error(["a", ["b", ["c"]]], max_depth=4, max_nodes=100) is None
    assert "nested deeper than 3 levels (IRGW_ADHOC_SCHEMA_MAX_DEPTH)" in (
        shape_error(["a", ["b", ["c"]]], max_depth=3, max_nodes=100) or "")
    assert "nested deeper than 7 levels" in (
        shape_error(nested(8), max_depth=7, max_nodes=100) or "")


@pytest.mark.parametrize("param", [PARAM, "tools[0].function.parameters"])
def test_the_caps_at_their_limits(param: str) -> None:
    cache = schemas(max_nodes=50, max_depth=6)
    assert cache.compile(PendingAdhoc("M", with_values(50), param)).adhoc
    error = refusal(cache, with_values(51), param)
    assert error.message == (f"{param} has more than 50 JSON values "
                             "(IRGW_ADHOC_SCHEMA_MAX_NODES); register it as a named schema "
                             "instead")
    assert cache.compile(PendingAdhoc("M", nested(6), param)).adhoc
    error = refusal(cache, nested(7), param)
    assert error.message == (f"{param} is nested deeper than 6 levels "
                             "(IRGW_ADHOC_SCHEMA_MAX_DEPTH)")


def test_the_size_cap_at_its_limit_names_both_sizes() -> None:
    schema = {"type": "object", "description": "x" * 100}
    size = len(orjson.dumps(schema))
    assert schemas(max_bytes=size).compile(PendingAdhoc("M", schema)).adhoc
    error = refusal(schemas(max_bytes=size - 1), schema)
    assert error.message == (f"{PARAM} is {size} bytes of JSON, more than {size - 1} "
                             "(IRGW_ADHOC_SCHEMA_MAX_BYTES); register it as a named schema "
                             "instead")


def test_a_schema_orjson_cannot_write_is_a_400_saying_why() -> None:
    deep = nested(300)  # past orjson's 255 levels, under any byte cap
    assert refusal(schemas(), deep).message == (
        f"{PARAM} is nested deeper than 32 levels (IRGW_ADHOC_SCHEMA_MAX_DEPTH)")
    error = refusal(schemas(), {"type": "integer", "maximum": 2**70})
    assert error.message == f"{PARAM} cannot be used: Integer exceeds 64-bit range"


def test_a_cache_of_size_zero_keeps_nothing() -> None:
    cache = schemas(cache_size=0)
    first = cache.compile(PendingAdhoc("M", with_values(5)))
    second = cache.compile(PendingAdhoc("M", with_values(5)))
    assert first is not second and len(cache) == 0


def test_a_cached_schema_is_the_same_compiled_schema() -> None:
    cache = schemas(cache_size=1)
    first = cache.compile(PendingAdhoc("M", with_values(5)))
    assert cache.compile(PendingAdhoc("M", with_values(5))) is first


async def test_compiled_off_the_loop_the_same_way_and_from_the_same_cache() -> None:
    cache = schemas(max_nodes=50)
    first = await cache.compile_off_loop(PendingAdhoc("M", with_values(5)))
    assert await cache.compile_off_loop(PendingAdhoc("M", with_values(5))) is first
    assert cache.compile(PendingAdhoc("M", with_values(5))) is first
    with pytest.raises(InvalidSchemaError, match="more than 50 JSON values"):
        await cache.compile_off_loop(PendingAdhoc("M", with_values(51)))
    with pytest.raises(InvalidSchemaError, match="must be a JSON object"):
        await cache.compile_off_loop(PendingAdhoc("M", True))


def test_the_settings_reach_the_caps_and_the_policy() -> None:
    settings = Settings(adhoc_output_policy="error", adhoc_schema_max_bytes=5_000,
                        adhoc_schema_max_depth=9, adhoc_schema_max_nodes=300,
                        adhoc_schema_cache_size=3)
    cache = AdhocSchemas.from_settings(settings)
    assert cache.compile(PendingAdhoc("M", with_values(5))).output_policy == "error"
    assert "more than 5000" in refusal(cache, {"description": "x" * 5_000}).message
    assert "deeper than 9 levels" in refusal(cache, nested(10)).message
    assert "more than 300 JSON values" in refusal(cache, with_values(301)).message
    for i in range(5):
        cache.compile(PendingAdhoc(f"M{i}", with_values(5)))
    assert len(cache) == 3


def test_an_adhoc_schema_is_named_as_such() -> None:
    assert PendingAdhoc("Weather", {}).ref == "Weather (ad-hoc)"
    assert PendingAdhoc("Weather", {}).param == PARAM


@pytest.mark.parametrize("param", [PARAM, "tools[0].function.parameters"])
@pytest.mark.parametrize("schema", [True, False, [], "x"])
def test_a_schema_that_is_no_object_is_a_400_naming_where_it_was_sent(param: str,
                                                                      schema: Any) -> None:
    assert refusal(schemas(), schema, param).message == f"{param} must be a JSON object"


def test_a_schema_number_past_64_bit_integers_is_refused_not_rounded() -> None:
    # The body's reader (orjson) reads 2**64 + 1 as the float 2**64: `"const": 2**64 + 1`
    # then passed the answer 2**64, and vLLM was sent the rounded schema.
    cache = schemas()
    for written in (b"18446744073709551617", b"-18446744073709551617", b"1e30"):
        schema = orjson.loads(b'{"type": "object", "properties": {"n": {"const": %s}}}'
                              % written)
        error = refusal(cache, schema)
        assert "past 64-bit integers" in error.message and error.param == PARAM
    # Up to 64 bits they are exact integers, and ordinary floats stay as they are.
    for fine in (2**64 - 1, -(2**63), 1.5e19, 0.1):
        assert cache.compile(PendingAdhoc("M", {"maximum": fine}, PARAM)).adhoc
