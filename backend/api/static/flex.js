// The active Neural Grid of one interval: flexibility offers, the clearing's activations, the
// control actions sent to the devices (with their acks), and the interval's imbalance settlement.
import { h, kwh, tokens, shortAddr } from "./util.js";

export const ZERO_TRADE = "0x" + "00".repeat(32);
const DIRECTION = ["up", "down"];
const ARROW = ["▲", "▼"];

/** "▲ up" / "▼ down": the direction in a glyph and a word, never by colour alone. */
export function directionLabel(direction) {
  return `${ARROW[direction] ?? "?"} ${DIRECTION[direction] ?? direction}`;
}

/** W with a sign where it matters ("-3,000 W"), thousands separated. */
export function watts(w) {
  return `${Number(w).toLocaleString("en-US")} W`;
}

/** Signed Wh as kWh with an explicit sign ("+1", "−4", "0"). */
export function signedKwh(wh) {
  const n = Number(wh);
  if (n === 0) return "0";
  return (n > 0 ? "+" : "−") + kwh(Math.abs(n));
}

/** An action's state as the user reads it: "acknowledged (applied -2,000 W)", "refused: expired". */
export function actionState(a) {
  if (a.state === "refused") return `refused: ${a.reason ?? "no reason given"}`;
  if (a.state === "acknowledged" && a.ack) return `acknowledged (applied ${watts(a.ack.appliedW)})`;
  if (a.state === "sent") return `sent (${a.attempts} attempt${a.attempts === 1 ? "" : "s"})`;
  return a.state;
}

/** What pays an activation: the rescued trade's parties, or the balancing account (DSO service). */
function purpose(a) {
  return a.tradeId === ZERO_TRADE ? "DSO service" : `rescues trade ${shortAddr(a.tradeId)}`;
}

/** Tooltip / accessible description of one activation with its control action (if any). */
export function activationText(a, action) {
  return `${directionLabel(a.direction)} ${watts(a.activatedW)} at bus ${a.busId} · setpoint ${watts(a.setpointW)}` +
    ` · device ${shortAddr(a.device)} · ${purpose(a)}` +
    (action ? ` · control ${actionState(action)}` : " · control: not sent yet");
}

function empty(colspan, text) {
  return h("tr", { class: "empty" }, h("td", { colspan }, text));
}

/** The list beside the map: one focusable item per activation, linked to its bus mark. */
export function renderActivationList(ul, activations, actionsById) {
  ul.replaceChildren();
  if (!activations.length) {
    ul.append(h("li", { class: "empty" }, "no activations in this interval: the clearing buys flexibility only to rescue a vetoed trade or to repair a limit the base state breaks"));
    return;
  }
  for (const a of activations) {
    const action = actionsById.get(a.id);
    ul.append(h("li", {
      id: `act-${a.id}`, tabindex: 0, class: `act dir-${DIRECTION[a.direction]}`,
      dataset: { activation: a.id, bus: String(a.busId), trade: a.tradeId },
    }, activationText(a, action)));
  }
}

/** The flexibility panel: offers, activations (cost, payers), control actions. */
export function renderFlexPanel(root, { offers, activations, actions }) {
  const offerBody = root.querySelector("#offers-table tbody");
  offerBody.replaceChildren();
  if (!offers.length) offerBody.append(empty(6, "no flexibility offers for this interval: a registered device's owner signs one (POST /flex)"));
  for (const o of offers) {
    const status = o.status === "activated" ? `activated · ${watts(o.remainingW ?? 0)} left` : o.status;
    offerBody.append(h("tr", { dataset: { offer: o.hash }, class: `offer ${o.status}` },
      h("td", { class: "mono" }, shortAddr(o.device)),
      h("td", {}, directionLabel(o.direction)),
      h("td", { class: "num" }, watts(o.powerW)),
      h("td", { class: "num" }, watts(o.baselineW)),
      h("td", { class: "num" }, tokens(o.pricePerKWh, 6)),
      h("td", { dataset: { status: o.status } }, status),
    ));
  }
  const actBody = root.querySelector("#activations-table tbody");
  actBody.replaceChildren();
  if (!activations.length) actBody.append(empty(6, "no activations: they appear when the clearing rescues a vetoed trade with the offers above (or buys a DSO repair)"));
  for (const a of activations) {
    const payers = (a.payers || []).map((p) => `${shortAddr(p.account)} ${tokens(p.share, 6)}`).join(", ");
    actBody.append(h("tr", { dataset: { activation: a.id } },
      h("td", {}, `${directionLabel(a.direction)} bus ${a.busId}`),
      h("td", { class: "num" }, watts(a.activatedW)),
      h("td", { class: "num" }, watts(a.setpointW)),
      h("td", { class: "num" }, tokens(a.cost, 6)),
      h("td", { class: "mono" }, payers || "balancing account"),
      h("td", {}, purpose(a)),
    ));
  }
  const ctlBody = root.querySelector("#control-table tbody");
  ctlBody.replaceChildren();
  if (!actions.length) ctlBody.append(empty(3, "no control actions: the dispatcher (tegrid dispatcher) signs one per activation once the batch is on chain"));
  for (const c of actions) {
    ctlBody.append(h("tr", { dataset: { action: c.activationId, state: c.state } },
      h("td", { class: "mono" }, shortAddr(c.device)),
      // a grid mode switch told to a grid-forming device has a mode, not a setpoint
      h("td", { class: "num" }, c.kind === "mode" ? `switch: ${c.mode.replace("_", " ")}` : watts(c.setpointW)),
      h("td", { class: `state ${c.state}` }, actionState(c)),
    ));
  }
}

/** Contracted vs metered positions and imbalance payments (GET /intervals/{id}'s imbalance). */
export function renderImbalance(root, imbalance, status) {
  const meta = root.querySelector("#imbalance-meta");
  const body = root.querySelector("#imbalance-table tbody");
  body.replaceChildren();
  if (!imbalance) {
    meta.textContent = "";
    body.append(empty(6, status === "settled"
      ? "no imbalance settled for this interval (reclaimed, or nobody traded)"
      : "imbalance is settled with the interval's last settlement page, once the meters have reported"));
    return;
  }
  // the short and long prices are basis points of P, the interval's energy-weighted price
  const P = BigInt(imbalance.clearingPricePerKWh);
  const price = (bps) => `${Number(bps) / 10000} × P = ${tokens((P * BigInt(bps) / 10000n).toString(), 6)}`;
  meta.textContent = `· P ${tokens(imbalance.clearingPricePerKWh, 6)} token/kWh · short ${price(imbalance.shortPriceBps)}` +
    ` · long ${price(imbalance.longPriceBps)} token/kWh · collected ${tokens(imbalance.collected, 6)}` +
    ` · paid out ${tokens(imbalance.paidOut, 6)}`;
  if (!imbalance.participants.length) body.append(empty(6, "every party metered what it contracted"));
  for (const p of imbalance.participants) {
    const money = p.paid !== "0" ? `pays ${tokens(p.paid, 6)}` : p.received !== "0" ? `receives ${tokens(p.received, 6)}` : "—";
    body.append(h("tr", { dataset: { account: p.account } },
      h("td", { class: "mono" }, shortAddr(p.account)),
      h("td", { class: "num" }, signedKwh(p.contractedWh)),
      h("td", { class: "num" }, signedKwh(p.meteredWh)),
      h("td", { class: "num" }, `${signedKwh(p.deviationWh)} ${Number(p.deviationWh) < 0 ? "(short)" : Number(p.deviationWh) > 0 ? "(long)" : ""}`.trim()),
      h("td", { class: "num" }, money),
      h("td", { class: "num" }, p.owed !== "0" ? tokens(p.owed, 6) : "—"),
    ));
  }
}
