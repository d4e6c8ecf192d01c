// "Connect wallet" through EIP-1193 (window.ethereum): bring the wallet onto the market's chain,
// ask for a grid connection, deposit tokens, sign an EIP-712 order and post it.
import { api, ApiError, baseUnits, parseUnits, TOKEN_DECIMALS, ZERO_ADDRESS } from "./util.js";

const RECEIPT_POLL_MS = 500;
const RECEIPT_TIMEOUT_MS = 120_000;
const USER_REJECTED = 4001; // EIP-1193: the user refused the request
const UNKNOWN_CHAIN = 4902; // wallet_switchEthereumChain: the wallet does not know the chain

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
  return { account: accounts[0], chainId: await walletChainId() };
}

/** The chain the wallet is on (a number), or null when it does not say. */
export async function walletChainId() {
  try {
    return parseInt(await provider().request({ method: "eth_chainId" }), 16);
  } catch {
    return null;
  }
}

/** An EIP-1193 error's code; some wallets wrap the switch's 4902 in data.originalError. */
function errorCode(err) {
  return err?.data?.originalError?.code ?? err?.code;
}

function errorMessage(err) {
  return err && err.message ? err.message : String(err);
}

/**
 * Bring the wallet onto the market's chain. `addChain` is GET /contracts' `addChain`
 * (wallet_addEthereumChain parameters). Asks the wallet to switch; a wallet that does not know
 * the chain (4902) is asked to add it, then to switch. Returns {ok: true} or {ok: false, code,
 * message} (USER_REJECTED when the user declined).
 */
export async function ensureChain(addChain) {
  const eth = provider();
  const want = parseInt(addChain.chainId, 16);
  if ((await walletChainId()) === want) return { ok: true };
  const switchTo = () => eth.request({ method: "wallet_switchEthereumChain", params: [{ chainId: addChain.chainId }] });
  try {
    try {
      await switchTo();
    } catch (err) {
      if (errorCode(err) !== UNKNOWN_CHAIN) throw err;
      await eth.request({ method: "wallet_addEthereumChain", params: [addChain] });
      await switchTo();
    }
  } catch (err) {
    if (errorCode(err) === USER_REJECTED) {
      return {
        ok: false,
        code: "USER_REJECTED",
        message: `you declined to switch the wallet to chain ${want} (${addChain.chainName}); signing stays off until the wallet is on it`,
      };
    }
    return { ok: false, code: String(errorCode(err) ?? "WALLET_ERROR"), message: errorMessage(err) };
  }
  const now = await walletChainId();
  return now === want
    ? { ok: true }
    : { ok: false, code: "WRONG_CHAIN", message: `the wallet is still on chain ${now}, the market is on ${want}` };
}

/** A refusal from the API or the wallet as {ok: false, code, message}. */
function refusal(err) {
  if (err instanceof ApiError) return { ok: false, code: err.code, message: err.message };
  if (errorCode(err) === USER_REJECTED) return { ok: false, code: "USER_REJECTED", message: "you declined in the wallet" };
  return { ok: false, code: String(errorCode(err) ?? "WALLET_ERROR"), message: errorMessage(err) };
}

async function receipt(txHash) {
  const eth = provider();
  const deadline = Date.now() + RECEIPT_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const r = await eth.request({ method: "eth_getTransactionReceipt", params: [txHash] });
    if (r) return r;
    await new Promise((ok) => setTimeout(ok, RECEIPT_POLL_MS));
  }
  throw new Error(`transaction ${txHash} was not mined within ${RECEIPT_TIMEOUT_MS / 1000} s`);
}

/**
 * Deposit `amount` tokens (a decimal string) into the market escrow: the API checks the amount
 * and encodes the calls (approve unless the allowance covers it, then deposit); the wallet sends
 * each after the previous one is mined. `progress(action, txHash)` reports each step. Returns
 * {ok: true, plan, hashes} or {ok: false, code, message}.
 */
export async function deposit(account, amount, progress = () => {}) {
  const eth = provider();
  const hashes = [];
  try {
    const plan = await api(`/participants/${account}/deposit-transactions?amount=${encodeURIComponent(amount.trim())}`);
    for (const tx of plan.transactions) {
      progress(tx.action, null);
      const hash = await eth.request({
        method: "eth_sendTransaction",
        params: [{ from: tx.from, to: tx.to, data: tx.data, value: tx.value }],
      });
      progress(tx.action, hash);
      const r = await receipt(hash);
      if (r.status !== "0x1") return { ok: false, code: "REVERTED", message: `the ${tx.action} transaction ${hash} reverted` };
      hashes.push(hash);
    }
    return { ok: true, plan, hashes };
  } catch (err) {
    return refusal(err);
  }
}

/**
 * Ask for a grid connection: the wallet signs the API's ConnectionRequest typed data (bus, meter
 * key, connection limits in W) and POSTs it; the Neural Grid checks the hosting capacity and the
 * grid operator registers the participant. `form` holds busId, meter, maxExportKw, maxImportKw
 * (decimal strings, converted to W exactly) and expiry. Returns {ok, participant} or a refusal.
 */
export async function requestConnection(account, form) {
  const eth = provider();
  let message;
  try {
    const watts = (text, what) => {
      const w = parseUnits(text, 3, what);
      if (w >= 2n ** 32n) throw new Error(`${what} ${text} kW is more than a connection can have`);
      return Number(w);
    };
    message = {
      wallet: account,
      meter: form.meter.trim(),
      busId: Number(form.busId),
      maxExportW: watts(form.maxExportKw, "max export"),
      maxImportW: watts(form.maxImportKw, "max import"),
      nonce: freshNonce(),
      expiry: Number(form.expiry),
    };
    if (!/^0x[0-9a-fA-F]{40}$/.test(message.meter)) throw new Error(`meter "${message.meter}" is not an address (0x and 40 hex digits)`);
  } catch (err) {
    return { ok: false, code: "INVALID_INPUT", message: errorMessage(err) };
  }
  try {
    const template = await api("/participants/eip712");
    const signature = await eth.request({
      method: "eth_signTypedData_v4",
      params: [account, JSON.stringify({ ...template, message })],
    });
    return { ok: true, participant: await api("/participants", { json: { message, signature } }) };
  } catch (err) {
    return refusal(err);
  }
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
