// "Connect wallet" through EIP-1193 (window.ethereum): sign an EIP-712 order and post it.
import { api, ApiError, baseUnits, TOKEN_DECIMALS, ZERO_ADDRESS } from "./util.js";

export function provider() {
  return typeof window !== "undefined" && window.ethereum && typeof window.ethereum.request === "function"
    ? window.ethereum
    : null;
}

export async function connect() {
  const eth = provider();
  if (!eth) throw new Error("no EIP-1193 wallet (window.ethereum) in this browser");
  const accounts = await eth.request({ method: "eth_requestAccounts" });
  if (!accounts || !accounts.length) throw new Error("the wallet gave no account");
  let chainId = null;
  try {
    chainId = parseInt(await eth.request({ method: "eth_chainId" }), 16);
  } catch {
    chainId = null;
  }
  return { account: accounts[0], chainId };
}

/** A fresh uint64 nonce as the API spells nonces: a decimal string (63 random bits). */
export function freshNonce() {
  const words = crypto.getRandomValues(new Uint32Array(2));
  return ((BigInt(words[0] & 0x7fffffff) << 32n) | BigInt(words[1])).toString();
}

/**
 * Build the Order message from the form values, have the wallet sign the API's typed-data
 * template with eth_signTypedData_v4, and POST it. Returns {ok, order} or {ok: false, code, message}.
 */
export async function signAndSubmit(account, form) {
  const eth = provider();
  const template = await api("/orders/eip712");
  const energyWh = Math.round(Number(form.energyKwh) * 1000);
  const price = baseUnits(form.priceToken); // exact, as a decimal string
  if (price === null) {
    return { ok: false, code: "INVALID_PRICE", message: `the price must be a number of tokens with at most ${TOKEN_DECIMALS} decimals` };
  }
  const message = {
    trader: account,
    side: form.side === "buy" ? 1 : 0,
    intervalId: Number(form.intervalId),
    energyWh,
    pricePerKWh: price,
    nonce: freshNonce(),
    expiry: Number(form.expiry),
    counterparty: form.counterparty || ZERO_ADDRESS,
  };
  const typedData = { ...template, message };
  let signature;
  try {
    signature = await eth.request({
      method: "eth_signTypedData_v4",
      params: [account, JSON.stringify(typedData)],
    });
  } catch (err) {
    return { ok: false, code: "WALLET_REFUSED", message: err && err.message ? err.message : String(err) };
  }
  try {
    const order = await api("/orders", { json: { message, signature } });
    return { ok: true, order };
  } catch (err) {
    if (err instanceof ApiError) return { ok: false, code: err.code, message: err.message };
    return { ok: false, code: "NETWORK", message: String(err) };
  }
}
