// Sign a tegrid order with @metamask/eth-sig-util (what MetaMask runs for eth_signTypedData_v4).
// stdin: {"template": GET /orders/eip712, "order": the message, "privateKey": "0x..."}
// stdout: {"signature"}
import { readFileSync } from "node:fs";

const { template, order, privateKey } = JSON.parse(readFileSync(0, "utf8"));

// README: eth-sig-util
import { SignTypedDataVersion, signTypedData } from "@metamask/eth-sig-util";

const signature = signTypedData({
  privateKey: Buffer.from(privateKey.slice(2), "hex"),
  data: { ...template, message: order }, // GET /orders/eip712 (types with EIP712Domain)
  version: SignTypedDataVersion.V4,
});
// README: end

process.stdout.write(JSON.stringify({ signature }) + "\n");
