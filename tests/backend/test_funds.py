"""Token amounts typed by people -> base units, exactly (``backend.chain.funds``)."""

from __future__ import annotations

import pytest

from backend.chain.errors import AmountError
from backend.chain.funds import UINT128_MAX, Token, token_units


@pytest.mark.parametrize(
    ("text", "decimals", "units"),
    [
        ("12.345678", 6, 12_345_678),
        ("0.000001", 6, 1),
        ("1.10", 6, 1_100_000),
        ("1.100000000", 6, 1_100_000),  # trailing zeros past the decimals are exact
        ("007", 6, 7_000_000),
        ("0.3", 6, 300_000),  # 0.3 has no exact binary float; the units are exact
        ("5", 0, 5),
        ("340282366920938463463374.607431768211455", 15, UINT128_MAX),
    ],
)
def test_token_units_converts_exactly(text: str, decimals: int, units: int) -> None:
    assert token_units(text, decimals) == units


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.0000001", "amount 1.0000001 has more than the token's 6 decimals"),
        ("0", "amount must be more than zero"),
        ("0.000000", "amount must be more than zero"),
        (
            "340282366920938463463374607431768.211456",
            "amount 340282366920938463463374607431768.211456 "
            "is more than the market's balances can hold",
        ),
    ],
)
def test_token_units_refuses_amounts_the_token_cannot_hold(text: str, message: str) -> None:
    with pytest.raises(AmountError) as err:
        token_units(text, 6)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 1",
        "1 ",
        "-1",
        "+1",
        "1e3",
        "1.",
        ".5",
        "1,5",
        "NaN",
        "Infinity",
        "0x10",
        "\u0663",
        "1" * 41,
    ],
)
def test_token_units_refuses_what_is_not_a_plain_decimal(text: str) -> None:
    with pytest.raises(AmountError) as err:
        token_units(text, 6)
    assert str(err.value) == (
        f"amount {text!r} is not a decimal number of tokens (digits, optionally '.' and more "
        "digits)"
    )


@pytest.mark.parametrize(
    ("units", "shown"), [(12_345_678, "12.345678"), (50_000_000, "50"), (1, "0.000001"), (0, "0")]
)
def test_token_show_is_exact_without_trailing_zeros(units: int, shown: str) -> None:
    assert Token("0x" + "11" * 20, "TEGT", 6).show(units) == shown
