"""EnergyToken: the OpenZeppelin ERC-20 compiles, deploys and works (foundation requirement)."""

from typing import Any

import brownie
from conftest import err


def test_token_deploy_mint_transfer(accounts: Any, EnergyToken: Any) -> None:
    token = EnergyToken.deploy(accounts[0], {"from": accounts[0]})
    assert token.decimals() == 6
    assert token.symbol() == "TEGT"
    token.mint(accounts[1], 1_000_000, {"from": accounts[0]})
    tx = token.transfer(accounts[2], 250_000, {"from": accounts[1]})
    assert tx.events["Transfer"]["value"] == 250_000
    assert token.balanceOf(accounts[1]) == 750_000
    assert token.balanceOf(accounts[2]) == 250_000
    assert token.totalSupply() == 1_000_000


def test_mint_not_minter_reverts(ledger: Any, accounts: Any) -> None:
    role = ledger.token.MINTER_ROLE()
    with brownie.reverts(err("AccessControlUnauthorizedAccount", accounts[1].address, role)):
        ledger.token.mint(accounts[1], 1, {"from": accounts[1]})
