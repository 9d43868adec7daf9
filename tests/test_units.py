import pytest

from oocstore.errors import UsageError
from oocstore.units import format_size, parse_size


@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("1048576", 1 << 20), ("512B", 512), ("4KiB", 4096), ("512MiB", 512 << 20),
    ("8GiB", 8 << 30), ("1TiB", 1 << 40), ("1.5GiB", 3 << 29), ("0.5KiB", 512),
    (" 2 MiB ", 2 << 20), ("8gib", 8 << 30), (4096, 4096), (0, 0),
])
def test_parse_size_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, unit", [("8GB", "8GiB"), ("512MB", "512MiB"), ("4K", "4KiB"),
                                        ("1tb", "1TiB"), ("3g", "3GiB")])
def test_decimal_units_refused_with_hint(text, unit):
    with pytest.raises(UsageError, match=f"decimal unit: write {unit}"):
        parse_size(text)


@pytest.mark.parametrize("value", ["-1", "-1MiB", -5])
def test_negative_refused(value):
    with pytest.raises(UsageError, match="negative"):
        parse_size(value)


def test_fractional_bytes_refused():
    with pytest.raises(UsageError, match="fractional byte count"):
        parse_size("1.5")
    with pytest.raises(UsageError, match="fractional byte count"):
        parse_size("2.5B")


@pytest.mark.parametrize("value", ["", "abc", "1.2.3GiB", "GiB", "1e9", "nan"])
def test_garbage_refused_with_example(value):
    with pytest.raises(UsageError, match="512MiB"):
        parse_size(value)


def test_unknown_unit_and_bool_refused():
    with pytest.raises(UsageError, match="unknown unit 'PiB'"):
        parse_size("1PiB")
    with pytest.raises(UsageError, match="not a size"):
        parse_size(True)


def test_what_names_the_option():
    with pytest.raises(UsageError, match="--cpu-budget '8GB'"):
        parse_size("8GB", what="--cpu-budget")


def test_usage_error_is_value_error():
    with pytest.raises(ValueError):
        parse_size("8GB")


@pytest.mark.parametrize("nbytes, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (3 << 29, "1.50 GiB"),
    (1 << 40, "1.00 TiB"), (5 << 20, "5.00 MiB"),
])
def test_format_size(nbytes, text):
    assert format_size(nbytes) == text


@pytest.mark.parametrize("nbytes", [1 << 10, 3 << 20, 7 << 30])
def test_format_then_parse_round_trips(nbytes):
    assert parse_size(format_size(nbytes).replace(" ", "")) == nbytes
