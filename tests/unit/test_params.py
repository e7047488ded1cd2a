"""Decoding a plugin's ``parameters`` mapping: keys, types, durations, nesting, error paths."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from epp.errors import ConfigError
from epp.framework.params import Duration, decode_params, field_key, parse_duration, require

WHERE = "plugins[0].parameters"


@dataclass(frozen=True, slots=True, kw_only=True)
class Inner:
    size: int = 1
    label: str = ""

    def __post_init__(self) -> None:
        require(self.size > 0, "size", "must be > 0", self.size)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    lru_capacity_per_server: int = 31250
    ratio: float = 0.5
    enabled: bool = True
    scheme: Literal["http", "https"] = "http"
    name: str = "x"
    timeout: Duration = Duration(1.0)
    max_ttft_penalty_ms: float = field(default=5000.0, metadata={"key": "maxTTFTPenaltyMs"})
    optional_limit: int | None = None
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    items: list[Inner] = field(default_factory=list)
    max_queue_depth: int = 10

    def __post_init__(self) -> None:
        require(self.max_queue_depth <= 100, "max_queue_depth", "must be <= 100", self.max_queue_depth)


def test_missing_keys_take_the_field_defaults() -> None:
    assert decode_params(Sample, {}, WHERE) == Sample()
    assert decode_params(Sample, None, WHERE) == Sample()


def test_yaml_keys_are_the_camel_case_field_names() -> None:
    decoded = decode_params(Sample, {"lruCapacityPerServer": 7, "optionalLimit": 3, "maxQueueDepth": 5}, WHERE)
    assert (decoded.lru_capacity_per_server, decoded.optional_limit, decoded.max_queue_depth) == (7, 3, 5)


def test_an_explicit_key_in_field_metadata_replaces_the_camel_case_name() -> None:
    by_name = {f.name: f for f in dataclasses.fields(Sample)}
    assert field_key(by_name["max_ttft_penalty_ms"]) == "maxTTFTPenaltyMs"
    assert field_key(by_name["lru_capacity_per_server"]) == "lruCapacityPerServer"
    assert decode_params(Sample, {"maxTTFTPenaltyMs": 250}, WHERE).max_ttft_penalty_ms == 250.0
    with pytest.raises(ConfigError) as err:
        decode_params(Sample, {"maxTtftPenaltyMs": 250}, WHERE)
    assert err.value.field == f"{WHERE}.maxTtftPenaltyMs"


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("lru_capacity_per_server", id="the snake_case field name is not a key"),
        pytest.param("bogus", id="a key no field has is rejected"),
    ],
)
def test_unknown_keys_are_errors_naming_the_path_and_listing_the_allowed_keys(key: str) -> None:
    with pytest.raises(ConfigError) as err:
        decode_params(Sample, {"ratio": 0.1, key: 1}, WHERE)
    assert err.value.field == f"{WHERE}.{key}"
    assert "unknown parameter" in err.value.reason
    assert "lruCapacityPerServer" in err.value.reason and "maxTTFTPenaltyMs" in err.value.reason


@pytest.mark.parametrize(
    ("raw", "bad_key", "reason"),
    [
        pytest.param({"lruCapacityPerServer": "3"}, "lruCapacityPerServer", "expected an integer",
                     id="a string is not an integer"),
        pytest.param({"lruCapacityPerServer": True}, "lruCapacityPerServer", "expected an integer",
                     id="a bool is not an integer"),
        pytest.param({"lruCapacityPerServer": 2.5}, "lruCapacityPerServer", "expected an integer",
                     id="a float is not an integer"),
        pytest.param({"ratio": True}, "ratio", "expected a number", id="a bool is not a number"),
        pytest.param({"ratio": "0.5"}, "ratio", "expected a number", id="a string is not a number"),
        pytest.param({"enabled": "true"}, "enabled", "expected true or false", id="a string is not a bool"),
        pytest.param({"enabled": 1}, "enabled", "expected true or false", id="an integer is not a bool"),
        pytest.param({"name": 5}, "name", "expected a string", id="a number is not a string"),
        pytest.param({"scheme": "ftp"}, "scheme", "must be one of ['http', 'https']",
                     id="a literal accepts only its listed values"),
        pytest.param({"tags": "a,b"}, "tags", "expected a list", id="a string is not a list"),
        pytest.param({"tags": ["a", 2]}, "tags[1]", "expected a string", id="list items are type checked by index"),
        pytest.param({"inner": [1]}, "inner", "expected a mapping of parameters",
                     id="a nested dataclass needs a mapping"),
        pytest.param({"optionalLimit": "x"}, "optionalLimit", "expected an integer",
                     id="an optional field still checks the type of a given value"),
    ],
)
def test_values_are_type_checked(raw: dict[str, Any], bad_key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        decode_params(Sample, raw, WHERE)
    assert err.value.field == f"{WHERE}.{bad_key}"
    assert err.value.reason == reason


def test_an_integer_is_accepted_for_a_float_and_becomes_a_float() -> None:
    decoded = decode_params(Sample, {"ratio": 1}, WHERE)
    assert decoded.ratio == 1.0 and type(decoded.ratio) is float


def test_an_optional_field_accepts_null() -> None:
    assert decode_params(Sample, {"optionalLimit": None}, WHERE).optional_limit is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("200ms", 0.2, id="milliseconds"),
        pytest.param("5s", 5.0, id="seconds"),
        pytest.param("1m30s", 90.0, id="minutes and seconds combine"),
        pytest.param("2h45m30.5s", 9930.5, id="hours, minutes and fractional seconds"),
        pytest.param("1.5h", 5400.0, id="fractional hours"),
        pytest.param("250us", 250e-6, id="microseconds written us"),
        pytest.param("250µs", 250e-6, id="microseconds written with the micro sign"),
        pytest.param("100ns", 100e-9, id="nanoseconds"),
        pytest.param("0", 0.0, id="a bare zero needs no unit, as in Go"),
        pytest.param(3, 3.0, id="an integer is seconds"),
        pytest.param(0.25, 0.25, id="a float is seconds"),
    ],
)
def test_durations_accept_go_duration_strings_and_numbers(text: Any, seconds: float) -> None:
    parsed = parse_duration(text, "x")
    assert isinstance(parsed, Duration)
    assert parsed == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("5", id="a non-zero number string needs a unit"),
        pytest.param("1m30", id="a trailing number without unit"),
        pytest.param("5 s", id="a space inside the duration"),
        pytest.param("5d", id="days are not a Go duration unit"),
        pytest.param("-1s", id="a negative duration string"),
        pytest.param(-2, id="a negative number"),
        pytest.param(True, id="a bool"),
        pytest.param(["1s"], id="a list"),
        pytest.param("fast", id="words"),
    ],
)
def test_invalid_durations_are_errors_naming_the_field(text: Any) -> None:
    with pytest.raises(ConfigError) as err:
        parse_duration(text, f"{WHERE}.timeout")
    assert err.value.field == f"{WHERE}.timeout"


def test_duration_fields_decode_go_strings() -> None:
    decoded = decode_params(Sample, {"timeout": "1m30s"}, WHERE)
    assert decoded.timeout == 90.0 and isinstance(decoded.timeout, Duration)
    with pytest.raises(ConfigError) as err:
        decode_params(Sample, {"timeout": "soon"}, WHERE)
    assert err.value.field == f"{WHERE}.timeout"


def test_nested_dataclasses_and_lists_of_them_are_decoded() -> None:
    decoded = decode_params(Sample, {"inner": {"size": 3}, "items": [{"size": 2, "label": "a"}, {}]}, WHERE)
    assert decoded.inner == Inner(size=3)
    assert decoded.items == [Inner(size=2, label="a"), Inner()]


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        pytest.param({"maxQueueDepth": 101}, "maxQueueDepth", id="a range error is reported under its yaml key"),
        pytest.param({"inner": {"size": 0}}, "inner.size", id="a nested range error gets the full path"),
        pytest.param({"items": [{}, {"size": -1}]}, "items[1].size", id="a range error in a list item names its index"),
        pytest.param({"items": [{"colour": "red"}]}, "items[0].colour",
                     id="an unknown key in a list item names its index"),
    ],
)
def test_post_init_errors_are_reprefixed_with_the_full_path(raw: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        decode_params(Sample, raw, WHERE)
    assert err.value.field == f"{WHERE}.{path}"


def test_post_init_error_keeps_its_reason_and_value() -> None:
    with pytest.raises(ConfigError) as err:
        decode_params(Sample, {"maxQueueDepth": 101}, WHERE)
    assert (err.value.reason, err.value.value) == ("must be <= 100", 101)
    assert str(err.value) == f"{WHERE}.maxQueueDepth: must be <= 100 (got 101)"


@dataclass(frozen=True, slots=True, kw_only=True)
class WithRequired:
    name: str
    size: int = 1


def test_a_missing_required_key_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as err:
        decode_params(WithRequired, {"size": 2}, WHERE)
    assert err.value.field == f"{WHERE}.name"
    assert "required" in err.value.reason


def test_parameters_that_are_not_a_mapping_are_an_error_at_the_parameters_path() -> None:
    with pytest.raises(ConfigError) as err:
        decode_params(Sample, [1, 2], WHERE)  # type: ignore[arg-type]
    assert err.value.field == WHERE
