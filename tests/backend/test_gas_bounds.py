"""``GasBounds`` and ``ChainClient.transact(bounded=True)``: batch calls sent without
``eth_estimateGas`` once their shape is known; out of gas falls back to an estimate."""

from __future__ import annotations

import shutil

import pytest

from backend.chain.client import ChainClient, EncodedCall, GasBounds
from backend.chain.contracts import load_artifact
from backend.chain.errors import TransactionRevertedError
from backend.settings import ANVIL_KEYS


def test_bound_scales_with_calldata_and_keeps_the_highest_rate() -> None:
    bounds = GasBounds(headroom=1.5, slack=1_000)
    key, size = bounds.key("0xAbC", "0x12345678" + "00" * 96)
    assert key == ("0xabc", "0x12345678") and size == 100
    assert bounds.bound(key, size) is None  # unknown shape: estimate first
    bounds.learn(key, size, 50_000)  # 500 gas per byte
    bounds.learn(key, 1_000, 200_000)  # 200 per byte: lower, kept at 500
    assert bounds.bound(key, 200) == int(500 * 200 * 1.5) + 1_000


@pytest.mark.skipif(shutil.which("anvil") is None, reason="needs anvil")
def test_bounded_transact_estimates_first_and_recovers_from_out_of_gas() -> None:
    from backend.devtools.anvil import AnvilProcess

    with AnvilProcess() as anvil:
        client = ChainClient(anvil.url, ANVIL_KEYS[0])
        address, _ = client.deploy(load_artifact("EnergyToken"), client.address)
        token = client.w3.eth.contract(address=address, abi=load_artifact("EnergyToken").abi)

        def mint(amount: int) -> EncodedCall:
            data = token.functions.mint(client.address, amount)._encode_transaction_data()
            return EncodedCall(client.w3, address, data)

        first = mint(1)
        key, size = client.gas_bounds.key(first.to, first.data)
        assert client.transact(first, bounded=True)["status"] == 1
        assert client.gas_bounds.bound(key, size) is not None  # learned from the estimate

        # A rate far too low: the bounded send runs out of gas, is estimated and sent again.
        client.gas_bounds._rate[key] = 1.0
        client.gas_bounds.slack = 0
        receipt = client.transact(mint(2), bounded=True)
        assert receipt["status"] == 1
        assert token.functions.totalSupply().call() == 3
        assert client.gas_bounds.bound(key, size) >= int(receipt["gasUsed"])  # learned again

        # A real revert is still reported as one (the key holds no role on a fresh token).
        other = ChainClient(anvil.url, ANVIL_KEYS[1])
        data = token.functions.mint(other.address, 1)._encode_transaction_data()
        other.gas_bounds.learn(*other.gas_bounds.key(address, data), 100_000)
        with pytest.raises(TransactionRevertedError) as info:
            other.transact(EncodedCall(other.w3, address, data), bounded=True)
        assert not info.value.gas_exhausted
