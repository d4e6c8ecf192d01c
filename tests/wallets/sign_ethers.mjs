// Sign a tegrid order with ethers v6, as its docs say (Wallet.signTypedData).
// stdin: {"template": GET /orders/eip712?for=ethers, "order": the message, "privateKey": "0x..."}
// stdout: {"signature", "hash": TypedDataEncoder.hash, "compact": Signature.compactSerialized}
import { readFileSync } from "node:fs";
import { Signature, TypedDataEncoder } from "ethers";

const { template, order, privateKey } = JSON.parse(readFileSync(0, "utf8"));

// README: ethers
import { Wallet } from "ethers";

const wallet = new Wallet(privateKey);
const { domain, types } = template; // GET /orders/eip712?for=ethers (no EIP712Domain in types)
const signature = await wallet.signTypedData(domain, types, order);
// README: end

const hash = TypedDataEncoder.hash(domain, types, order);
const compact = Signature.from(signature).compactSerialized;
process.stdout.write(JSON.stringify({ signature, hash, compact }) + "\n");
