// Small helpers shared by the dashboard modules: fetching, SVG elements, colour scales, formatting.

export const SVG_NS = "http://www.w3.org/2000/svg";
export const TOKEN_DECIMALS = 6; // EnergyToken (development settlement token)
export const ZERO_ADDRESS = "0x0000000000000000000000000000000000000000";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** fetch JSON; a non-2xx answer becomes an ApiError carrying the API's {detail: {code, message}}. */
export async function api(path, options = {}) {
  const init = { ...options, headers: { Accept: "application/json", ...(options.headers || {}) } };
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.body = JSON.stringify(options.json);
    init.headers["Content-Type"] = "application/json";
    delete init.json;
  }
  const res = await fetch(path, init);
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (!res.ok) {
    const d = body && body.detail;
    const code = d && typeof d === "object" ? d.code : `HTTP_${res.status}`;
    const msg = d && typeof d === "object" ? d.message : String(d || res.statusText);
    throw new ApiError(res.status, code, msg);
  }
  return body;
}

/** Create an SVG element with attributes (and optional children / text). */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  }
  for (const c of children) {
    el.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return el;
}

/** Create an HTML element: h("td", {class: "x"}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    el.append(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
  return el;
}

function lerp(a, b, t) {
  return a + (b - a) * t;
}

function scale(stops, v) {
  if (!Number.isFinite(v)) return "#777";
  if (v <= stops[0][0]) return rgb(stops[0][1]);
  for (let i = 1; i < stops.length; i++) {
    const [x1, c1] = stops[i];
    const [x0, c0] = stops[i - 1];
    if (v <= x1) {
      const t = (v - x0) / (x1 - x0);
      return rgb([lerp(c0[0], c1[0], t), lerp(c0[1], c1[1], t), lerp(c0[2], c1[2], t)]);
    }
  }
  return rgb(stops[stops.length - 1][1]);
}

function rgb([r, g, b]) {
  return `rgb(${Math.round(r)},${Math.round(g)},${Math.round(b)})`;
}

// Voltage: violet below the 0.90 pu limit, blue low, green nominal, amber high, red above 1.10 pu.
export const VOLTAGE_STOPS = [
  [0.88, [140, 60, 200]],
  [0.9, [60, 90, 230]],
  [0.95, [60, 160, 235]],
  [1.0, [60, 190, 110]],
  [1.05, [240, 190, 50]],
  [1.1, [230, 70, 50]],
  [1.12, [160, 20, 40]],
];
// Loading: grey-green idle, yellow half, orange heavy, red at the 100 % limit.
export const LOADING_STOPS = [
  [0, [110, 140, 130]],
  [40, [120, 190, 110]],
  [70, [240, 200, 60]],
  [90, [245, 130, 40]],
  [100, [230, 50, 50]],
  [120, [160, 20, 60]],
];
export const voltageColor = (vm) => scale(VOLTAGE_STOPS, vm);
export const loadingColor = (pct) => scale(LOADING_STOPS, pct);

export function shortAddr(a) {
  return a ? `${a.slice(0, 6)}…${a.slice(-4)}` : "—";
}

export function kwh(wh) {
  if (wh === null || wh === undefined) return "—";
  return (Number(wh) / 1000).toLocaleString("en-US", { maximumFractionDigits: 3 });
}

// The API's integers: token amounts (prices, balances, payments) and nonces are decimal strings
// (they may pass 2^53, where a Number rounds), every other integer a JSON number. Amounts are
// therefore handled as BigInt here and only turned into a Number to draw them.

/** Compare two base-unit amounts (decimal strings) exactly: for Array.prototype.sort. */
export function compareUnits(a, b) {
  const x = BigInt(a);
  const y = BigInt(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

/** Token base units (decimal string) -> human amount with the token's decimals, exact, with at
 * most `digits` fraction digits (cut, not rounded) and thousands separators. */
export function tokens(units, digits = 4) {
  if (units === null || units === undefined) return "—";
  const value = BigInt(units);
  const scale = 10n ** BigInt(TOKEN_DECIMALS);
  const whole = (value / scale).toLocaleString("en-US");
  const fraction = (value % scale).toString().padStart(TOKEN_DECIMALS, "0").slice(0, digits).replace(/0+$/, "");
  return fraction ? `${whole}.${fraction}` : whole;
}

/** A token amount typed by a person ("0.12") -> base units as a decimal string ("120000"), exact;
 * null when it is not a plain decimal with at most the token's decimals (see parseUnits). */
export function baseUnits(text) {
  try {
    return parseUnits(text, TOKEN_DECIMALS).toString();
  } catch {
    return null;
  }
}

export function pct(v) {
  return Number.isFinite(v) ? `${v.toFixed(1)} %` : "—";
}

export function pu(v) {
  return Number.isFinite(v) ? `${v.toFixed(4)} pu` : "—";
}

export function clock(unixS) {
  const d = new Date(unixS * 1000);
  return d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

export function timeOf(unixS) {
  return new Date(unixS * 1000).toISOString().slice(11, 19);
}

/**
 * A decimal string typed by a person -> integer units with `decimals` places, exactly (BigInt, no
 * binary floating point): parseUnits("1.5", 3) === 1500n. Throws an Error saying what is wrong.
 */
export function parseUnits(text, decimals, what = "amount") {
  const s = String(text).trim();
  const m = /^(\d*)(?:\.(\d*))?$/.exec(s);
  if (!m || (!m[1] && !m[2])) throw new Error(`${what} "${s}" is not a decimal number`);
  const frac = (m[2] || "").replace(/0+$/, "");
  if (frac.length > decimals) throw new Error(`${what} ${s} has more than ${decimals} decimal places`);
  return BigInt(m[1] || "0") * 10n ** BigInt(decimals) + BigInt(frac.padEnd(decimals, "0") || "0");
}

/** Integer units (BigInt, number or decimal string) -> exact decimal string: formatUnits(1500n, 3) === "1.5". */
export function formatUnits(units, decimals) {
  const v = BigInt(units);
  const sign = v < 0n ? "-" : "";
  const abs = v < 0n ? -v : v;
  const base = 10n ** BigInt(decimals);
  const frac = (abs % base).toString().padStart(decimals, "0").replace(/0+$/, "");
  return `${sign}${abs / base}${frac ? "." + frac : ""}`;
}
