"""A wallet's money in the market, for wallets that sign their own transactions (the dashboard):
the settlement token (``EnergyMarket.token()``: address, symbol, decimals), what the wallet holds
and has approved to the market, its escrow (available, locked), and the calls a deposit takes
(ERC-20 ``approve``, then ``EnergyMarket.deposit``), encoded from the compiled ABIs so that the
wallet only signs and sends them.

Amounts typed by people are decimal strings in tokens; :func:`token_units` turns them into base
units exactly (``decimal.Decimal``, no binary floating point)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Context, Decimal, Inexact, Rounded
from typing import Any

from web3 import Web3

from backend.chain.address import checksum
from backend.chain.contracts import contract_at
from backend.chain.errors import (
    AmountError,
    ChainUnavailableError,
    InsufficientTokensError,
)

UINT128_MAX = 2**128 - 1
_DECIMAL = re.compile(r"[0-9]{1,40}(\.[0-9]{1,40})?")  # ASCII digits only (\d takes any script's)
# Room for every digit the pattern lets through plus the token's decimals, and a trap should any
# step still round: the default context keeps 28 digits and would round a large amount silently.
_EXACT = Context(prec=160, traps=[Inexact, Rounded])


@dataclass(frozen=True)
class Token:
    address: str
    symbol: str
    decimals: int

    def show(self, units: int) -> str:
        """Base units as a decimal string in tokens, without trailing zeros ("12.5")."""
        whole, frac = divmod(units, 10**self.decimals)
        digits = f"{frac:0{self.decimals}d}".rstrip("0") if self.decimals else ""
        return f"{whole}.{digits}" if digits else str(whole)


def token_units(text: str, decimals: int) -> int:
    """``"12.345678"`` tokens -> 12_345_678 base units (6 decimals), exactly. Refuses anything but
    plain digits with an optional fraction, more fraction digits than the token has, zero, and
    amounts past uint128 (the market's balances)."""
    if not _DECIMAL.fullmatch(text):
        raise AmountError(
            f"amount {text!r} is not a decimal number of tokens (digits, optionally '.' and "
            "more digits)"
        )
    units = Decimal(text).scaleb(decimals, context=_EXACT)
    if units != units.to_integral_value(context=_EXACT):
        raise AmountError(f"amount {text} has more than the token's {decimals} decimals")
    if units == 0:
        raise AmountError("amount must be more than zero")
    if units > UINT128_MAX:
        raise AmountError(f"amount {text} is more than the market's balances can hold")
    return int(units)


class Funds:
    """Reads and deposit calls for one deployed ``EnergyMarket`` (its token looked up once)."""

    def __init__(self, w3: Web3, market_address: str) -> None:
        self.w3 = w3
        self.market = contract_at(w3, "EnergyMarket", market_address)
        self._token: Token | None = None

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn.call()
        except Exception as exc:  # web3 raises transport errors of many kinds
            raise ChainUnavailableError(f"{what} failed: {exc}") from exc

    def token(self) -> Token:
        if self._token is None:
            fns = self.market.functions
            address = checksum(self._call("reading the market's token", fns.token()))
            erc20 = contract_at(self.w3, "IERC20Metadata", address).functions
            self._token = Token(
                address=address,
                symbol=str(self._call("reading the token's symbol", erc20.symbol())),
                decimals=int(self._call("reading the token's decimals", erc20.decimals())),
            )
        return self._token

    def of(self, wallet: str) -> dict[str, int]:
        """Base units: ``walletBalance`` (the wallet's own tokens), ``allowance`` (approved to the
        market), ``available`` and ``locked`` (its escrow in the market)."""
        wallet = checksum(wallet)
        erc20 = contract_at(self.w3, "IERC20Metadata", self.token().address)
        available, locked = self._call(
            "reading the market balance", self.market.functions.balanceOf(wallet)
        )
        return {
            "walletBalance": int(
                self._call("reading the token balance", erc20.functions.balanceOf(wallet))
            ),
            "allowance": int(
                self._call(
                    "reading the allowance",
                    erc20.functions.allowance(wallet, self.market.address),
                )
            ),
            "available": int(available),
            "locked": int(locked),
        }

    def deposit_calls(self, wallet: str, units: int) -> list[dict[str, str]]:
        """The transactions (``from``, ``to``, ``data``, ``value``) that move ``units`` from the
        wallet into its available balance: ``approve(market, units)`` unless the allowance
        already covers it, then ``deposit(units)``. Refuses more than the wallet holds."""
        wallet = checksum(wallet)
        token = self.token()
        held = self.of(wallet)
        if held["walletBalance"] < units:
            raise InsufficientTokensError(
                f"the wallet holds {token.show(held['walletBalance'])} {token.symbol}, less than "
                f"the {token.show(units)} {token.symbol} to deposit"
            )
        calls = []
        if held["allowance"] < units:
            erc20 = contract_at(self.w3, "IERC20Metadata", token.address)
            calls.append(
                {
                    "action": "approve",
                    "from": wallet,
                    "to": token.address,
                    "data": erc20.encode_abi("approve", args=[self.market.address, units]),
                    "value": "0x0",
                }
            )
        calls.append(
            {
                "action": "deposit",
                "from": wallet,
                "to": self.market.address,
                "data": self.market.encode_abi("deposit", args=[units]),
                "value": "0x0",
            }
        )
        return calls
