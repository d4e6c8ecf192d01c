"""A test EIP-1193 wallet for the dashboard's browser tests: ``window.ethereum`` in the page, every
request answered in Python. The wallet is the one part of a user's setup outside tegrid, so it is
the one part played here; everything behind it is real: reads and raw transactions go to the real
Anvil, typed data and transactions are signed with eth-account.

It behaves as a browser wallet does where the dashboard depends on it: it starts on the chain it is
given and knows only ``known_chains``; ``wallet_switchEthereumChain`` to an unknown chain fails with
4902, ``wallet_addEthereumChain`` checks that the RPC URL it is given answers that chain id;
declining (``refuse_switch``) fails with 4001; it signs typed data only for the chain it is on and
sends transactions only there. Every ``wallet_*`` request is kept in ``calls``, every signed typed
data in ``signed``, every transaction it sent in ``sent``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from eth_account import Account

USER_REJECTED = 4001
UNSUPPORTED = 4200
DISCONNECTED = 4901
UNKNOWN_CHAIN = 4902
INVALID_PARAMS = -32602

SHIM = """
(() => {
  const listeners = {};
  window.ethereum = {
    async request({ method, params }) {
      const json = await window.tegridTestWallet(method, JSON.stringify(params ?? []));
      const answer = JSON.parse(json);
      for (const [event, value] of answer.emit || []) {
        for (const fn of listeners[event] || []) fn(value);
      }
      const err = answer.error;
      if (err) throw Object.assign(new Error(err.message), { code: err.code });
      return answer.result;
    },
    on(event, fn) { (listeners[event] ||= []).push(fn); },
    // for the test: what the wallet tells the page when the user acts in the wallet itself
    _emit(event, value) { for (const fn of listeners[event] || []) fn(value); },
    removeListener(event, fn) {
      listeners[event] = (listeners[event] || []).filter((f) => f !== fn);
    },
  };
})();
"""


class WalletError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def rpc(url: str, method: str, params: list[Any]) -> Any:
    """One JSON-RPC call; a JSON-RPC error becomes a WalletError with its code."""
    body = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=30
    ).json()
    if "error" in body:
        raise WalletError(int(body["error"].get("code", -32603)), str(body["error"]["message"]))
    return body["result"]


@dataclass
class TestWallet:
    key: str
    rpc_url: str  # the real chain's JSON-RPC endpoint
    chain_id: int  # the chain the wallet is on now
    known_chains: set[int] = field(default_factory=set)
    refuse_switch: bool = False
    calls: list[dict[str, Any]] = field(default_factory=list)
    signed: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)

    __test__ = False  # not a pytest test class

    def __post_init__(self) -> None:
        self.account = Account.from_key(self.key)
        self.rpc_chain_id = int(rpc(self.rpc_url, "eth_chainId", []), 16)
        self.known_chains = {*self.known_chains, self.chain_id}

    @property
    def address(self) -> str:
        return str(self.account.address)

    def user_switches_to(self, page: Any, chain_id: int) -> None:
        """The user moves the wallet to another chain in the wallet itself (``chainChanged``)."""
        self.known_chains.add(chain_id)
        self.chain_id = chain_id
        page.evaluate("(id) => window.ethereum._emit('chainChanged', id)", hex(chain_id))

    def install(self, page: Any) -> None:
        """Put the wallet into ``page`` (before it loads)."""
        page.expose_function("tegridTestWallet", self._request)
        page.add_init_script(SHIM)

    # ------------------------------------------------------------------ dispatch
    def _request(self, method: str, params_json: str) -> str:
        params = json.loads(params_json)
        emit: list[list[Any]] = []
        try:
            result = self._answer(method, params, emit)
            return json.dumps({"result": result, "emit": emit})
        except WalletError as exc:
            return json.dumps({"error": {"code": exc.code, "message": str(exc)}, "emit": emit})

    def _answer(self, method: str, params: list[Any], emit: list[list[Any]]) -> Any:
        if method.startswith("wallet_"):
            self.calls.append({"method": method, "params": params})
        if method in ("eth_requestAccounts", "eth_accounts"):
            return [self.address]
        if method == "eth_chainId":
            return hex(self.chain_id)
        if method == "wallet_switchEthereumChain":
            return self._switch(params, emit)
        if method == "wallet_addEthereumChain":
            return self._add(params)
        if method == "eth_signTypedData_v4":
            return self._sign_typed_data(params)
        if method == "eth_sendTransaction":
            return self._send_transaction(params)
        if method.startswith("eth_"):
            self._on_real_chain()
            return rpc(self.rpc_url, method, params)
        raise WalletError(UNSUPPORTED, f"the test wallet does not support {method}")

    def _on_real_chain(self) -> None:
        if self.chain_id != self.rpc_chain_id:
            raise WalletError(
                DISCONNECTED, f"the wallet is on chain {self.chain_id}, which it cannot reach"
            )

    # ------------------------------------------------------------------ wallet_*
    def _switch(self, params: list[Any], emit: list[list[Any]]) -> None:
        if self.refuse_switch:
            raise WalletError(USER_REJECTED, "User rejected the request.")
        target = int(params[0]["chainId"], 16)
        if target not in self.known_chains:
            raise WalletError(
                UNKNOWN_CHAIN,
                f"Unrecognized chain ID {params[0]['chainId']}. Try adding the chain using "
                "wallet_addEthereumChain first.",
            )
        if target != self.chain_id:
            self.chain_id = target
            emit.append(["chainChanged", hex(target)])
        return None

    def _add(self, params: list[Any]) -> None:
        chain = params[0]
        missing = {"chainId", "chainName", "rpcUrls", "nativeCurrency"} - set(chain)
        if missing:
            raise WalletError(INVALID_PARAMS, f"missing {sorted(missing)}")
        answered = int(rpc(chain["rpcUrls"][0], "eth_chainId", []), 16)
        if answered != int(chain["chainId"], 16):
            raise WalletError(INVALID_PARAMS, f"the RPC URL answers chain {answered}")
        self.known_chains.add(answered)
        return None

    # ------------------------------------------------------------------ signing
    def _sign_typed_data(self, params: list[Any]) -> str:
        address, typed_json = params
        if address.lower() != self.address.lower():
            raise WalletError(INVALID_PARAMS, f"{address} is not this wallet's account")
        typed = json.loads(typed_json)
        if int(typed["domain"]["chainId"]) != self.chain_id:
            raise WalletError(
                INVALID_PARAMS,
                f"the typed data is for chain {typed['domain']['chainId']}; the wallet is on "
                f"{self.chain_id}",
            )
        self.signed.append(typed)
        sig = self.account.sign_typed_data(full_message=typed).signature
        return "0x" + sig.hex().removeprefix("0x")

    def _send_transaction(self, params: list[Any]) -> str:
        self._on_real_chain()
        tx = dict(params[0])
        if str(tx.get("from", "")).lower() != self.address.lower():
            raise WalletError(INVALID_PARAMS, f"{tx.get('from')} is not this wallet's account")
        call = {k: tx[k] for k in ("from", "to", "data", "value") if k in tx}
        gas = int(rpc(self.rpc_url, "eth_estimateGas", [call]), 16)
        signed = self.account.sign_transaction(
            {
                "to": tx["to"],
                "data": tx.get("data", "0x"),
                "value": int(tx.get("value", "0x0"), 16),
                "gas": gas * 5 // 4,
                "gasPrice": int(rpc(self.rpc_url, "eth_gasPrice", []), 16),
                "nonce": int(
                    rpc(self.rpc_url, "eth_getTransactionCount", [self.address, "pending"]), 16
                ),
                "chainId": self.chain_id,
            }
        )
        raw = "0x" + signed.raw_transaction.hex().removeprefix("0x")
        tx_hash = str(rpc(self.rpc_url, "eth_sendRawTransaction", [raw]))
        self.sent.append({**call, "hash": tx_hash})
        return tx_hash
