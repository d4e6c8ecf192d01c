// Sign a tegrid order with viem 2, as its docs say (account.signTypedData; uint64/uint128 as bigint).
// stdin: {"template": GET /orders/eip712?for=viem, "order": the message, "privateKey": "0x..."}
// stdout: {"signature"}
import { readFileSync } from "node:fs";

const { template, order, privateKey } = JSON.parse(readFileSync(0, "utf8"));

// README: viem
import { privateKeyToAccount } from "viem/accounts";

const account = privateKeyToAccount(privateKey);
const { domain, types, primaryType } = template; // GET /orders/eip712?for=viem
const message = {
  ...order,
  intervalId: BigInt(order.intervalId),
  energyWh: BigInt(order.energyWh),
  pricePerKWh: BigInt(order.pricePerKWh),
  nonce: BigInt(order.nonce),
  expiry: BigInt(order.expiry),
};
const signature = await account.signTypedData({ domain, types, primaryType, message });
// README: end

process.stdout.write(JSON.stringify({ signature }) + "\n");
