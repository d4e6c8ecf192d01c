"""Participants: plug-and-play connection requests signed by the wallet, the registry view, and a
wallet's money (its tokens, escrow, and the transactions a deposit takes, for it to send)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from eth_utils import to_checksum_address
from fastapi import APIRouter, Query

from backend.api.deps import MarketDep
from backend.api.schemas import (
    Address,
    ConnectionIn,
    DepositOut,
    ErrorResponse,
    FundsOut,
    ParticipantOut,
    TokenOut,
    TypedDataTemplate,
    WalletTransaction,
)
from backend.chain.funds import Funds, Token, token_units
from backend.market.errors import ConflictError

router = APIRouter(prefix="/participants", tags=["participants"])
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 409, 422, 503)
}


@router.get("/eip712", response_model=TypedDataTemplate)
def connection_template(market: MarketDep) -> dict[str, Any]:
    """Typed-data template of ``ConnectionRequest`` (domain "tegrid ParticipantRegistry" v1)."""
    return market.template("ConnectionRequest")


@router.post("", status_code=201, response_model=ParticipantOut, responses=ERRORS)
async def request_connection(body: ConnectionIn, market: MarketDep) -> ParticipantOut:
    """The Neural Grid checks the hosting capacity at the bus; the grid operator key registers the
    participant on chain, or the request is refused with the reason (HOSTING_CAPACITY,
    UNKNOWN_BUS...)."""
    await asyncio.to_thread(market.request_connection, body.message.model_dump(), body.signature)
    return _participant(market, body.message.wallet)


@router.get("/{address}", response_model=ParticipantOut)
def get_participant(address: Address, market: MarketDep) -> ParticipantOut:
    return _participant(market, address)


def _participant(market: Any, address: str) -> ParticipantOut:
    wallet = to_checksum_address(address)
    p = market.participant(wallet, fresh=True)
    req = market.store.get_connection(wallet)
    request = None
    if req is not None:
        request = {
            "status": req.status,
            "reason": req.reason,
            "busId": req.bus_id,
            "hostingCapacityW": req.hosting_capacity_w,
            "txHash": req.tx_hash,
        }
    return ParticipantOut(
        wallet=wallet,
        registered=p is not None,
        active=bool(p and p.active),
        meter=p.meter if p else None,
        busId=p.bus_id if p else None,
        maxExportW=p.max_export_w if p else None,
        maxImportW=p.max_import_w if p else None,
        index=p.index if p else None,
        request=request,
        availableBalance=market.available_balance(wallet, fresh=True) if p else None,
        reservedByOrders=market.reserved(wallet) if p else None,
    )


_funds: dict[tuple[int, str], Funds] = {}


def _funds_of(market: Any) -> Funds:
    """The market's ``Funds`` (token looked up once per deployment); 409 NO_CHAIN without one."""
    ledger = market.ledger
    w3 = getattr(ledger, "w3", None)
    if w3 is None:
        raise ConflictError("this market keeps no balances on a chain", reason="NO_CHAIN")
    key = (id(w3), str(ledger.market_address))
    if key not in _funds:
        _funds[key] = Funds(w3, ledger.market_address)
    return _funds[key]


def _token_out(token: Token) -> TokenOut:
    return TokenOut(address=token.address, symbol=token.symbol, decimals=token.decimals)


def _funds_out(funds: Funds, wallet: str) -> FundsOut:
    held = funds.of(wallet)
    return FundsOut(
        wallet=to_checksum_address(wallet),
        token=_token_out(funds.token()),
        **held,
    )


@router.get("/{address}/funds", response_model=FundsOut, responses=ERRORS)
async def get_funds(address: Address, market: MarketDep) -> FundsOut:
    """The wallet's tokens, its allowance to the market, and its escrow (available, locked), in
    token base units, read from the chain."""
    return await asyncio.to_thread(_funds_out, _funds_of(market), address)


@router.get("/{address}/deposit-transactions", response_model=DepositOut, responses=ERRORS)
async def deposit_transactions(
    address: Address,
    market: MarketDep,
    amount: Annotated[
        str,
        Query(
            max_length=82,
            description='tokens as a decimal string ("12.5"), at most the token\'s decimals',
            examples=["12.5"],
        ),
    ],
) -> DepositOut:
    """The transactions that deposit ``amount`` tokens into the wallet's available balance:
    ERC-20 ``approve`` of exactly that amount (unless the allowance already covers it), then
    ``EnergyMarket.deposit``. The wallet signs and sends them; nothing changes until it does.
    422 INVALID_AMOUNT for an amount that is not a positive decimal within the token's decimals,
    409 INSUFFICIENT_TOKENS when the wallet holds less."""
    funds = _funds_of(market)

    def plan() -> DepositOut:
        token = funds.token()
        units = token_units(amount, token.decimals)
        return DepositOut(
            wallet=to_checksum_address(address),
            token=_token_out(token),
            amount=amount,
            amountUnits=units,
            transactions=[
                WalletTransaction.model_validate(t) for t in funds.deposit_calls(address, units)
            ],
        )

    return await asyncio.to_thread(plan)
