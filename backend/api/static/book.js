// The order book of one interval as supply and demand step curves, with the clearing point.
import { compareUnits, svg, TOKEN_DECIMALS, ZERO_ADDRESS } from "./util.js";

const W = 520;
const H = 300;
const M = { l: 56, r: 14, t: 14, b: 38 };

/**
 * Cumulative steps: [{from, to, toWh, price}] in kWh (toWh: the exact running total in Wh) and
 * token/kWh. API numbers may come as JSON numbers or decimal strings.
 */
export function steps(orders, ascending) {
  const sorted = [...orders].sort((a, b) =>
    ascending ? compareUnits(a.pricePerKWh, b.pricePerKWh) : compareUnits(b.pricePerKWh, a.pricePerKWh));
  let atWh = 0;
  return sorted.map((o) => {
    const from = atWh / 1000;
    atWh += Number(o.energyWh);
    return { from, to: atWh / 1000, toWh: atWh, price: Number(o.pricePerKWh) / 10 ** TOKEN_DECIMALS };
  });
}

const totalWh = (st) => (st.length ? st[st.length - 1].toWh : 0);
const sumWh = (orders) => orders.reduce((s, o) => s + Number(o.energyWh), 0);

/**
 * The book of one interval as the chart draws it, and the figures told beside it, from one
 * computation: orders not cancelled; those open to anyone form the supply (sells, cheapest
 * first) and demand (buys, dearest first) curves, whose ends are `offeredWh` and `bidWh`;
 * bilateral orders (naming a counterparty) stay outside the curves and are counted apart.
 */
export function bookOf(orders) {
  const live = orders.filter((o) => o.status !== "cancelled");
  const auction = live.filter((o) => o.counterparty === ZERO_ADDRESS);
  const bilateral = live.filter((o) => o.counterparty !== ZERO_ADDRESS);
  const supply = steps(auction.filter((o) => Number(o.side) === 0), true);
  const demand = steps(auction.filter((o) => Number(o.side) === 1), false);
  return {
    live: auction,
    supply,
    demand,
    offeredWh: totalWh(supply),
    bidWh: totalWh(demand),
    bilateral: bilateral.length,
    bilateralSellWh: sumWh(bilateral.filter((o) => Number(o.side) === 0)),
    bilateralBuyWh: sumWh(bilateral.filter((o) => Number(o.side) === 1)),
  };
}

/** Where the curves cross (indicative, before the gate closes): volume and mid price. */
export function crossing(supply, demand) {
  let i = 0;
  let j = 0;
  let q = 0;
  let price = null;
  while (i < supply.length && j < demand.length && supply[i].price <= demand[j].price) {
    price = (supply[i].price + demand[j].price) / 2;
    const next = Math.min(supply[i].to, demand[j].to);
    q = next;
    if (supply[i].to <= next) i++;
    if (demand[j].to <= next) j++;
  }
  return price === null ? null : { q, price };
}

/**
 * Draw the book into `root` and return it (`bookOf`). `interval` is a GET /intervals answer;
 * `trades` its trades (the auction volume is the energy of its auction-kind trades, approved or
 * not).
 */
export function drawBook(root, orders, interval, trades) {
  root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  root.replaceChildren();
  const book = bookOf(orders);
  const { live, supply, demand } = book;
  const all = [...supply, ...demand];
  const maxQ = Math.max(1, ...all.map((s) => s.to)) * 1.08;
  const prices = all.map((s) => s.price);
  let clearPrice = interval && interval.clearingPrice !== null ? Number(interval.clearingPrice) / 10 ** TOKEN_DECIMALS : null;
  const auctionWh = trades.filter((t) => t.kind === "auction").reduce((s, t) => s + Number(t.energyWh), 0);
  if (clearPrice !== null) prices.push(clearPrice);
  const maxP = Math.max(0.01, ...prices) * 1.15;
  const x = (q) => M.l + (q / maxQ) * (W - M.l - M.r);
  const y = (p) => H - M.b - (p / maxP) * (H - M.t - M.b);

  const axes = svg("g", { class: "axes" });
  axes.append(svg("line", { x1: M.l, y1: H - M.b, x2: W - M.r, y2: H - M.b }));
  axes.append(svg("line", { x1: M.l, y1: M.t, x2: M.l, y2: H - M.b }));
  for (let k = 0; k <= 4; k++) {
    const q = (maxQ / 4) * k;
    const p = (maxP / 4) * k;
    axes.append(svg("text", { x: x(q), y: H - M.b + 14, "text-anchor": "middle" }, q.toFixed(q < 10 ? 1 : 0)));
    axes.append(svg("text", { x: M.l - 6, y: y(p) + 4, "text-anchor": "end" }, p.toFixed(p < 1 ? 3 : 2)));
    if (k) axes.append(svg("line", { x1: M.l, y1: y(p), x2: W - M.r, y2: y(p), class: "gridline" }));
  }
  axes.append(svg("text", { x: (M.l + W - M.r) / 2, y: H - 6, "text-anchor": "middle", class: "axis-title" }, "energy (kWh)"));
  axes.append(svg("text", { x: 12, y: (M.t + H - M.b) / 2, transform: `rotate(-90 12 ${(M.t + H - M.b) / 2})`, "text-anchor": "middle", class: "axis-title" }, "price (token/kWh)"));
  root.append(axes);

  const path = (st) => {
    if (!st.length) return "";
    let d = `M${x(0)},${y(st[0].price)}`;
    for (const s of st) d += ` L${x(s.from)},${y(s.price)} L${x(s.to)},${y(s.price)}`;
    return d;
  };
  if (supply.length) root.append(svg("path", { d: path(supply), class: "curve supply", "data-total-wh": book.offeredWh }));
  if (demand.length) root.append(svg("path", { d: path(demand), class: "curve demand", "data-total-wh": book.bidWh }));

  let point = null;
  if (clearPrice !== null && auctionWh > 0) point = { q: auctionWh / 1000, price: clearPrice, final: true };
  else {
    const c = crossing(supply, demand);
    if (c) point = { ...c, final: false };
  }
  if (point) {
    const g = svg("g", { class: "clearing" + (point.final ? " final" : " indicative") });
    g.append(svg("line", { x1: x(point.q), y1: y(point.price), x2: x(point.q), y2: H - M.b, class: "guide" }));
    g.append(svg("line", { x1: M.l, y1: y(point.price), x2: x(point.q), y2: y(point.price), class: "guide" }));
    g.append(svg("circle", { cx: x(point.q), cy: y(point.price), r: 6 }));
    const label = `${point.final ? "cleared" : "indicative"} ${point.q.toFixed(2)} kWh @ ${point.price.toFixed(4)}`;
    const right = x(point.q) > W * 0.6;
    g.append(svg("text", { x: x(point.q) + (right ? -10 : 10), y: y(point.price) - 10, "text-anchor": right ? "end" : "start" }, label));
    root.append(g);
  }
  if (!live.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no auction orders for this interval yet"));
  }
  return book;
}
