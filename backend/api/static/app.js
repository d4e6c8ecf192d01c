// The dashboard: one selected interval, refreshed from the API whenever the event stream says so.
import { api, h, kwh, tokens, formatUnits, shortAddr, clock, timeOf, pu, pct, TOKEN_DECIMALS } from "./util.js";
import { GridMap } from "./gridmap.js";
import { drawBook } from "./book.js";
import { renderActivationList, renderFlexPanel, renderImbalance } from "./flex.js";
import { provider, connect, ensureChain, deposit, requestConnection, signAndSubmit } from "./wallet.js";

const EVENT_KINDS = [
  "order", "cancel", "clearing", "verdict", "recorded", "reading", "settlement", "participant", "interval",
  "flex", "activation", "control",
];
const MODES = ["grid-connected", "islanded"]; // ParticipantRegistry.gridMode()
const $ = (sel) => document.querySelector(sel);

const state = {
  health: null,
  interval: null, // selected interval id
  follow: true,
  intervalRow: null,
  trades: [],
  orders: [],
  participants: new Map(), // wallet -> GET /participants answer
  wallet: null,
  walletChainOk: false, // the wallet is on the market's chain (GET /contracts' addChain)
  contracts: null, // GET /contracts
  funds: null, // GET /participants/{wallet}/funds
  openInterval: null,
  intervalSeconds: 900,
  offers: [], // GET /flex?interval=
  actions: [], // GET /control/actions?interval=
  modes: new Map(), // interval -> gridMode, from the clearing events this page heard
};

// ------------------------------------------------------------------ tooltip
const tooltip = $("#tooltip");
function tip(html, ev) {
  if (!html) {
    tooltip.hidden = true;
    return;
  }
  tooltip.innerHTML = html;
  tooltip.hidden = false;
  const x = Math.min(ev.clientX + 14, window.innerWidth - tooltip.offsetWidth - 8);
  const y = Math.min(ev.clientY + 14, window.innerHeight - tooltip.offsetHeight - 8);
  tooltip.style.left = `${x}px`;
  tooltip.style.top = `${y}px`;
}

const map = new GridMap($("#grid-map"), tip);

// ------------------------------------------------------------------ errors shown, never thrown
function report(where, err) {
  const msg = err && err.code ? `${err.code}: ${err.message}` : String(err && err.message ? err.message : err);
  logLine("error", `${where}: ${msg}`);
}

// ------------------------------------------------------------------ refresh pieces
async function loadHealth() {
  try {
    state.health = await api("/health");
    const c = state.health.chain || {};
    state.intervalSeconds = state.health.market.intervalSeconds || 900;
    $("#chain").textContent = `chain ${c.chain_id} · block ${c.latest_block}` + (state.health.market.dev ? " · dev" : "");
    $("#chain").dataset.ok = String(state.health.ok);
  } catch (err) {
    $("#chain").textContent = "chain unreachable";
    $("#chain").dataset.ok = "false";
    report("health", err);
  }
}

async function loadTopology() {
  try {
    const topo = await api("/grid/topology");
    map.setTopology(topo);
    fillBusChoice(topo);
    $("#net-name").textContent = `${topo.network} · ${topo.buses.length} buses · ${topo.lines.length} lines · ${topo.trafos.length} trafos`;
  } catch (err) {
    report("topology", err);
  }
}

async function loadGridStatus() {
  const iv = state.interval;
  try {
    const st = await api(`/grid/status?interval=${iv}`);
    if (iv !== state.interval) return;
    map.setStatus(st);
    const vm = st.vm_pu || [];
    const loads = [...(st.line_loading_percent || []), ...(st.trafo_loading_percent || [])];
    $("#grid-summary").textContent = st.converged
      ? `· V ${pu(Math.min(...vm))} … ${pu(Math.max(...vm))} · max loading ${pct(Math.max(...loads))} · ${st.approvedTrades} approved trade(s) applied`
      : "· power flow did not converge";
  } catch (err) {
    report("grid status", err);
  }
}

async function loadInterval() {
  const iv = state.interval;
  try {
    const [row, trades, orders] = await Promise.all([
      api(`/intervals/${iv}`),
      api(`/trades?interval=${iv}`),
      api(`/orders?interval=${iv}&limit=1000`),
    ]);
    if (iv !== state.interval) return;
    state.intervalRow = row;
    if (row.gridMode !== null && row.gridMode !== undefined) state.modes.set(iv, row.gridMode);
    state.trades = trades;
    state.orders = orders;
    renderInterval();
    await loadFlex();
    await loadParticipants([...trades.flatMap((t) => [t.seller, t.buyer]), ...orders.map((o) => o.trader)]);
    renderSettlement();
  } catch (err) {
    report("interval", err);
  }
}

/** The interval's offers and control actions (the activations come with GET /intervals/{id}). */
async function loadFlex() {
  const iv = state.interval;
  try {
    const [offers, actions] = await Promise.all([
      api(`/flex?interval=${iv}&limit=1000`),
      api(`/control/actions?interval=${iv}`),
    ]);
    if (iv !== state.interval) return;
    state.offers = offers;
    state.actions = actions;
  } catch (err) {
    report("flexibility", err);
  }
  renderFlex();
}

function renderFlex() {
  const activations = state.intervalRow ? state.intervalRow.activations || [] : [];
  const actionsById = new Map(state.actions.map((a) => [a.activationId, a]));
  renderFlexPanel(document, { offers: state.offers, activations, actions: state.actions });
  renderActivationList($("#activation-list"), activations, actionsById);
  map.setActivations(activations, actionsById);
  const acked = state.actions.filter((a) => a.state === "acknowledged").length;
  $("#flex-meta").textContent = `· ${state.offers.length} offer(s), ${activations.length} activation(s), ` +
    `${state.actions.length} control action(s) (${acked} acknowledged)`;
}

async function loadParticipants(wallets, refresh = false) {
  const todo = [...new Set(wallets)].filter((w) => w && (refresh || !state.participants.has(w)));
  if (state.wallet && !state.participants.has(state.wallet) && !todo.includes(state.wallet)) todo.push(state.wallet);
  await Promise.all(todo.map(async (w) => {
    try {
      state.participants.set(w, await api(`/participants/${w}`));
    } catch (err) {
      report(`participant ${shortAddr(w)}`, err);
    }
  }));
  map.setParticipants(state.participants);
}

async function loadReadings() {
  const iv = state.interval;
  try {
    const rows = await api(`/dashboard/readings?interval=${iv}`);
    if (iv !== state.interval) return;
    renderReadings(rows);
  } catch (err) {
    report("readings", err);
  }
}

// ------------------------------------------------------------------ rendering
function renderIntervalLabel() {
  const iv = state.interval;
  const row = state.intervalRow;
  const starts = iv * state.intervalSeconds;
  $("#iv-label").innerHTML = "";
  $("#iv-label").append(
    h("b", {}, `interval ${iv}`), " ",
    h("span", { class: "muted" }, clock(starts)), " ",
    h("span", { class: `status ${row ? row.status : ""}`, id: "iv-status" }, row ? row.status : "…"), " ",
    modeChip(iv),
  );
  const form = $("#order-form");
  if (!form.intervalId.value || form.dataset.auto === "1") {
    form.intervalId.value = row && row.status === "open" ? iv : nextOpenInterval();
    form.dataset.auto = "1";
  }
}

/** The interval's grid mode: from GET /intervals/{id} (gridMode) or its clearing event. */
function modeChip(iv) {
  const mode = state.modes.get(iv);
  const status = state.intervalRow && state.intervalRow.id === iv ? state.intervalRow.status : null;
  let text = MODES[mode] ?? `mode ${mode}`;
  let title = `cleared ${text}: ParticipantRegistry.gridMode() at its first clearing`;
  if (mode === undefined && (status === "open" || status === "closed" || status === null)) {
    text = "mode: set at clearing";
    title = "the grid mode in force on chain when the interval clears";
  } else if (mode === undefined) {
    text = "mode: not known";
    title = "cleared by a market version that did not store the grid mode";
  }
  return h("span", { class: `mode ${mode === 1 ? "islanded" : ""}`, id: "iv-mode", title }, text);
}

function nextOpenInterval() {
  return state.openInterval ?? state.interval;
}

/** The first interval whose gate is still open, by the market's (chain) clock. */
async function loadOpenInterval() {
  try {
    const cur = await api("/intervals/current");
    const next = await api(`/intervals/${cur.id + 1}`);
    state.openInterval = next.status === "open" ? cur.id + 1 : cur.id + 2;
    const form = $("#order-form");
    if (form.dataset.auto !== "0" && state.intervalRow?.status !== "open") form.intervalId.value = state.openInterval;
  } catch (err) {
    report("current interval", err);
  }
}

function renderInterval() {
  renderIntervalLabel();
  const row = state.intervalRow;
  const book = drawBook($("#book"), state.orders, row, state.trades);
  $("#book-meta").replaceChildren(
    h("span", { class: "swatch supply" }), `supply: ${book.supply.length} sell `,
    h("span", { class: "swatch demand" }), `demand: ${book.demand.length} buy`,
    book.bilateral ? ` · ${book.bilateral} bilateral (outside the curves)` : "",
  );
  const stats = $("#interval-stats");
  stats.replaceChildren();
  // offered and bid are the ends of the curves drawn above (one computation: bookOf)
  const bilateral = (wh) => (wh ? ` + ${kwh(wh)} kWh bilateral` : "");
  const items = [
    ["status", row.status],
    ["clearing price", row.clearingPrice === null ? "—" : `${tokens(row.clearingPrice, 6)} token/kWh`],
    ["offered", `${kwh(book.offeredWh)} kWh${bilateral(book.bilateralSellWh)}`],
    ["bid", `${kwh(book.bidWh)} kWh${bilateral(book.bilateralBuyWh)}`],
    ["traded", `${kwh(row.tradedWh)} kWh (${row.approvedCount})`],
    ["vetoed", `${kwh(row.vetoedWh)} kWh (${row.vetoedCount})`],
    ["gate closes", timeOf(row.gateClosureAt)],
  ];
  if (row.batch && row.batch.txHash) items.push(["batch tx", shortAddr(row.batch.txHash)]);
  for (const [k, v] of items) stats.append(h("dt", {}, k), h("dd", { dataset: { stat: k } }, v));
  renderTrades();
  map.setTrades(state.trades);
  renderFlex();
  renderImbalance(document, row.imbalance, row.status);
}

function renderTrades() {
  const body = $("#trades-table tbody");
  body.replaceChildren();
  const trades = state.trades;
  $("#trades-meta").textContent = trades.length
    ? `· ${trades.filter((t) => t.approved).length} approved, ${trades.filter((t) => !t.approved).length} vetoed`
    : "";
  if (!trades.length) {
    body.append(h("tr", { class: "empty" }, h("td", { colspan: 5 }, "no trades for this interval (yet)")));
    return;
  }
  for (const t of trades) {
    const verdict = t.approved
      ? h("span", { class: "verdict approved" }, "approved")
      : h("span", { class: "verdict vetoed", title: `the trade would have broken ${t.element}` },
        `vetoed: ${t.reason}`, t.element ? h("span", { class: "element" }, ` at ${t.element}`) : null);
    const settled = t.deliveredWh !== null ? ` · delivered ${kwh(t.deliveredWh)} kWh, paid ${tokens(t.paid)}` : "";
    const rescue = (state.intervalRow?.activations || []).filter((a) => a.tradeId === t.id);
    const link = rescue.length
      ? h("a", { href: `#act-${rescue[0].id}`, class: "rescue-link", dataset: { activations: rescue.map((a) => a.id).join(" ") } },
        `rescued by ${rescue.length} activation(s)`)
      : null;
    body.append(h("tr", { class: t.approved ? "approved" : "vetoed", dataset: { trade: t.id } },
      h("td", { class: "mono parties" }, shortAddr(t.seller), " →", h("br"), shortAddr(t.buyer)),
      h("td", {}, `${t.sellerBus} → ${t.buyerBus}`),
      h("td", { class: "num" }, kwh(t.energyWh)),
      h("td", { class: "num" }, tokens(t.pricePerKWh, 6)),
      h("td", {}, verdict, h("div", { class: "sub" }, `${t.kind} · ${t.status}${settled}`), link),
    ));
  }
}

function renderSettlement() {
  const rows = new Map();
  const get = (w) => {
    if (!rows.has(w)) rows.set(w, { sold: 0, soldDel: 0, bought: 0, boughtDel: 0, net: 0n, settled: false });
    return rows.get(w);
  };
  for (const t of state.trades) {
    if (!t.approved) continue;
    const s = get(t.seller);
    const b = get(t.buyer);
    s.sold += t.energyWh;
    b.bought += t.energyWh;
    if (t.deliveredWh !== null) {
      s.soldDel += t.deliveredWh;
      b.boughtDel += t.deliveredWh;
      const paid = BigInt(t.paid || "0");
      s.net += paid;
      b.net -= paid;
      s.settled = b.settled = true;
    }
  }
  const body = $("#settlement-table tbody");
  body.replaceChildren();
  if (!rows.size) {
    body.append(h("tr", { class: "empty" }, h("td", { colspan: 6 }, "no approved trades to settle")));
    return;
  }
  for (const [w, r] of rows) {
    const p = state.participants.get(w);
    const net = r.settled ? (r.net >= 0n ? "+" : "−") + tokens((r.net < 0n ? -r.net : r.net).toString()) : "pending";
    body.append(h("tr", { class: w === state.wallet ? "me" : "" },
      h("td", { class: "mono" }, shortAddr(w)),
      h("td", {}, p && p.busId !== null ? p.busId : "—"),
      h("td", { class: "num" }, r.sold ? `${kwh(r.sold)} / ${r.settled ? kwh(r.soldDel) : "…"}` : "—"),
      h("td", { class: "num" }, r.bought ? `${kwh(r.bought)} / ${r.settled ? kwh(r.boughtDel) : "…"}` : "—"),
      h("td", { class: "num" }, net),
      h("td", { class: "num" }, p && p.availableBalance !== null ? tokens(p.availableBalance, 2) : "—"),
    ));
  }
}

function renderReadings(rows) {
  const ul = $("#readings");
  ul.replaceChildren();
  $("#readings-meta").textContent = `· ${rows.length} on chain for interval ${state.interval}`;
  if (!rows.length) {
    ul.append(h("li", { class: "empty" }, "no meter readings on chain for this interval yet"));
    return;
  }
  for (const r of rows) {
    ul.append(h("li", {},
      h("span", { class: "mono" }, shortAddr(r.wallet || r.meter)),
      ` import ${kwh(r.importWh)} kWh · export ${kwh(r.exportWh)} kWh `,
      h("span", { class: "muted" }, `block ${r.block}`)));
  }
}

function logLine(kind, text) {
  const ol = $("#event-log");
  const li = h("li", { class: `ev ev-${kind}` }, h("span", { class: "when" }, timeOf(Date.now() / 1000)), h("span", { class: "kind" }, kind), text);
  ol.prepend(li);
  while (ol.children.length > 60) ol.lastChild.remove();
}

function describe(kind, d) {
  switch (kind) {
    case "order": return `${shortAddr(d.trader)} ${d.side === 0 ? "sells" : "buys"} ${kwh(d.energyWh)} kWh @ ${tokens(d.pricePerKWh, 6)} for ${d.intervalId}`;
    case "clearing": return `interval ${d.intervalId} cleared: ${kwh(d.traded_wh)} kWh traded, ${kwh(d.vetoed_wh)} kWh vetoed`;
    case "verdict": return `${shortAddr(d.seller)} → ${shortAddr(d.buyer)} ${kwh(d.energyWh)} kWh: ${d.reason}` +
      (d.vetoValue != null ? ` (${d.element} ${d.vetoValue.toFixed(4)} > ${d.vetoLimit})` : "");
    case "recorded": return `interval ${d.intervalId} batch recorded` + (d.block ? ` in block ${d.block}` : "");
    case "settlement": return `interval ${d.intervalId} settled (${d.trades} trades)`;
    case "reading": return `meter ${shortAddr(d.meter)} interval ${d.intervalId}`;
    case "interval": return `interval ${d.intervalId} ${d.status}`;
    case "activation": return `${d.direction === 0 ? "▲ up" : "▼ down"} ${d.activatedW} W at bus ${d.busId} (setpoint ${d.setpointW} W)`;
    case "control": return `device ${shortAddr(d.device)} interval ${d.intervalId}: ${d.state}${d.reason ? " (" + d.reason + ")" : ""}`;
    case "flex": return `flex offer ${shortAddr(d.hash)} ${d.status}`;
    default: return JSON.stringify(d).slice(0, 120);
  }
}

// ------------------------------------------------------------------ selection and live updates
let pending = new Set();
let timer = null;
function schedule(...what) {
  for (const w of what) pending.add(w);
  if (timer) return;
  timer = setTimeout(async () => {
    const todo = pending;
    pending = new Set();
    timer = null;
    const jobs = [];
    if (todo.has("interval")) jobs.push(loadInterval());
    if (todo.has("grid")) jobs.push(loadGridStatus());
    if (todo.has("readings")) jobs.push(loadReadings());
    if (todo.has("flex") && !todo.has("interval")) jobs.push(loadFlex());
    if (todo.has("health")) jobs.push(loadHealth(), loadOpenInterval());
    if (todo.has("balances")) {
      jobs.push(loadParticipants([...state.participants.keys()], true).then(renderSettlement), loadFunds());
    }
    await Promise.all(jobs);
    if (state.wallet) renderWallet();
  }, 120);
}

function select(iv, { user = false } = {}) {
  if (user) {
    state.follow = false;
    $("#follow").checked = false;
  }
  if (iv === state.interval) return;
  state.interval = iv;
  history.replaceState(null, "", `#interval=${iv}`);
  renderIntervalLabel();
  schedule("interval", "grid", "readings");
}

/** Follow mode jumps to where something happens, not to gates closing on empty books. */
function worthFollowing(kind, data) {
  if (kind === "interval" || kind === "cancel" || kind === "participant") return false;
  if (kind === "clearing") return (data.approved_count || 0) + (data.vetoed_count || 0) > 0;
  return true;
}

function onEvent(kind, data) {
  logLine(kind, describe(kind, data));
  if (kind === "clearing" && data.gridMode !== undefined) {
    state.modes.set(data.intervalId, data.gridMode);
    if (data.intervalId === state.interval) renderIntervalLabel();
  }
  const iv = data.intervalId;
  if (state.follow && iv !== undefined && iv !== state.interval && worthFollowing(kind, data)) select(iv);
  if (iv !== undefined && iv !== state.interval) return;
  if (kind === "order" || kind === "cancel" || kind === "interval") schedule("interval");
  if (kind === "clearing" || kind === "verdict") schedule("interval", "grid", "health");
  if (kind === "recorded") schedule("interval", "grid", "health", "balances"); // escrow locked
  if (kind === "settlement") schedule("interval", "readings", "balances");
  if (kind === "reading") schedule("readings");
  if (kind === "participant") schedule("balances");
  if (kind === "activation") schedule("interval"); // the interval view carries the activations
  if (kind === "flex" || kind === "control") schedule("flex");
}

function openStream() {
  const es = new EventSource("/events");
  const chip = $("#stream");
  es.onopen = () => {
    chip.dataset.state = "open";
    chip.textContent = "events: live";
  };
  es.onerror = () => {
    chip.dataset.state = "retrying";
    chip.textContent = "events: reconnecting…";
  };
  for (const kind of EVENT_KINDS) {
    es.addEventListener(kind, (ev) => {
      try {
        onEvent(kind, JSON.parse(ev.data));
      } catch (err) {
        report(`event ${kind}`, err);
      }
    });
  }
  return es;
}

async function initialInterval() {
  const m = /interval=(\d+)/.exec(location.hash);
  if (m) {
    state.follow = false;
    $("#follow").checked = false;
    return Number(m[1]);
  }
  try {
    const trades = await api("/trades");
    if (trades.length) return Math.max(...trades.map((t) => t.intervalId));
  } catch (err) {
    report("trades", err);
  }
  return nextOpenInterval();
}

// ------------------------------------------------------------------ wallet
async function loadContracts() {
  try {
    state.contracts = await api("/contracts");
  } catch (err) {
    report("contracts", err);
  }
}

/** Signing (orders, connection requests) and deposits only with a wallet on the market's chain. */
const canSign = () => Boolean(state.wallet && state.walletChainOk);

function renderWallet() {
  const account = state.wallet;
  const p = account ? state.participants.get(account) : null;
  const registered = Boolean(p && p.registered);
  if (account && !p) {
    $("#wallet-status").textContent = `${account}: reading the registry…`;
  } else if (account) {
    $("#wallet-status").replaceChildren(
      h("span", { class: "mono", id: "wallet-account" }, account),
      registered
        ? ` · bus ${p.busId} · available ${formatUnits(p.availableBalance, TOKEN_DECIMALS)} token` +
          (p.reservedByOrders && String(p.reservedByOrders) !== "0" ? ` (${tokens(p.reservedByOrders, 2)} reserved by open buys)` : "")
        : " · not a registered participant: ask for a grid connection below",
    );
  }
  $("#connect-section").hidden = !p || registered;
  $("#deposit-section").hidden = !p || !registered;
  for (const id of ["#order-submit", "#connect-submit", "#deposit-submit"]) $(id).disabled = !canSign();
  renderFunds();
}

/** The wallet's chain: fine, or why signing is off, with a button to ask the wallet again. */
function renderChain(message) {
  const line = $("#wallet-chain");
  const add = state.contracts && state.contracts.addChain;
  line.hidden = !state.wallet;
  line.dataset.ok = String(state.walletChainOk);
  if (state.walletChainOk) {
    line.replaceChildren(`wallet on chain ${parseInt(add.chainId, 16)} (${add.chainName})`);
    return;
  }
  const retry = h("button", { type: "button", id: "chain-switch" }, add ? `Switch to ${add.chainName}` : "Retry");
  retry.addEventListener("click", () => bringOntoChain());
  line.replaceChildren(h("span", { class: "warn", id: "chain-message" }, message), " ", retry);
}

/** Ask the wallet onto the market's chain (switch; add when unknown), then show the outcome. */
async function bringOntoChain() {
  if (!state.contracts) await loadContracts();
  const add = state.contracts && state.contracts.addChain;
  if (!add) {
    state.walletChainOk = false;
    renderChain("the market's chain is unknown (GET /contracts failed): signing stays off");
  } else {
    const got = await ensureChain(add);
    state.walletChainOk = got.ok;
    renderChain(got.ok ? null : got.message);
  }
  renderWallet();
  return state.walletChainOk;
}

async function loadFunds() {
  if (!state.wallet) return;
  try {
    state.funds = await api(`/participants/${state.wallet}/funds`);
  } catch (err) {
    state.funds = null;
    report("funds", err);
  }
  renderFunds();
}

function renderFunds() {
  const f = state.funds;
  const dl = $("#funds");
  if (!f || !state.wallet || f.wallet.toLowerCase() !== state.wallet.toLowerCase()) {
    dl.replaceChildren();
    return;
  }
  const { decimals, symbol } = f.token;
  dl.replaceChildren();
  for (const [key, label] of [["walletBalance", "in the wallet"], ["available", "available"], ["locked", "locked in trades"]]) {
    dl.append(h("dt", {}, label), h("dd", { dataset: { fund: key } }, `${formatUnits(f[key], decimals)} ${symbol}`));
  }
}

function fillBusChoice(topo) {
  const select = $("#connect-form").busId;
  select.replaceChildren(...topo.buses.filter((b) => b.load).map((b) => h("option", { value: b.id }, `bus ${b.id} · ${b.name}`)));
}

function showResult(el, answer, done) {
  if (answer.ok) {
    el.className = "accepted";
    el.replaceChildren(...done);
  } else {
    el.className = "refused";
    el.replaceChildren(h("b", { class: "code" }, answer.code), `: ${answer.message}`);
  }
}

function setupWallet() {
  const btn = $("#wallet-connect");
  const status = $("#wallet-status");
  const form = $("#order-form");
  const result = $("#order-result");
  if (!provider()) {
    btn.disabled = true;
    btn.title = "no EIP-1193 wallet (window.ethereum) found";
    status.textContent = "No EIP-1193 wallet found in this browser (window.ethereum).";
  }
  btn.addEventListener("click", async () => {
    try {
      const { account } = await connect();
      state.wallet = account;
      state.funds = null;
      btn.textContent = shortAddr(account);
      btn.classList.add("connected");
      await Promise.all([bringOntoChain(), loadParticipants([account], true), loadFunds()]);
      renderWallet();
    } catch (err) {
      status.textContent = `wallet: ${err.message || err}`;
    }
  });
  const eth = provider();
  if (eth && typeof eth.on === "function") {
    eth.on("accountsChanged", (accounts) => {
      if (!state.wallet) return;
      if (accounts && accounts.length) btn.click();
      else {
        state.wallet = null;
        state.funds = null;
        btn.textContent = "Connect wallet";
        btn.classList.remove("connected");
        status.textContent = "Wallet disconnected.";
        renderChain(null);
        renderWallet();
      }
    });
    eth.on("chainChanged", (chainId) => {
      const add = state.contracts && state.contracts.addChain;
      if (!state.wallet || !add) return;
      state.walletChainOk = parseInt(chainId, 16) === parseInt(add.chainId, 16);
      renderChain(`the wallet moved to chain ${parseInt(chainId, 16)}; the market is on ${parseInt(add.chainId, 16)}: signing is off`);
      renderWallet();
    });
  }

  const connectForm = $("#connect-form");
  connectForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = $("#connect-result");
    if (!canSign() || !(await bringOntoChain())) return;
    out.className = "pending";
    out.textContent = "waiting for the wallet's signature…";
    const answer = await requestConnection(state.wallet, {
      busId: connectForm.busId.value,
      meter: connectForm.meter.value,
      maxExportKw: connectForm.maxExportKw.value,
      maxImportKw: connectForm.maxImportKw.value,
      expiry: (nextOpenInterval() + 1) * state.intervalSeconds + 3600,
    });
    const p = answer.participant;
    showResult(out, answer, answer.ok && [
      h("b", {}, `connected at bus ${p.busId}`), " · registry transaction ",
      h("span", { class: "mono", id: "connect-tx" }, p.request ? p.request.txHash : "—"),
    ]);
    if (answer.ok) {
      state.participants.set(state.wallet, p);
      map.setParticipants(state.participants);
      await loadFunds();
      renderWallet();
    }
  });

  const depositForm = $("#deposit-form");
  depositForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = $("#deposit-result");
    if (!canSign() || !(await bringOntoChain())) return;
    out.className = "pending";
    out.textContent = "checking the amount…";
    const answer = await deposit(state.wallet, depositForm.amount.value, (action, hash) => {
      out.textContent = hash ? `${action}: waiting for ${shortAddr(hash)} to be mined…` : `${action}: confirm in the wallet…`;
    });
    showResult(out, answer, answer.ok && [
      h("b", { id: "deposit-done" }, `deposited ${formatUnits(answer.plan.amountUnits, answer.plan.token.decimals)} ${answer.plan.token.symbol}`),
      ` in ${answer.hashes.length} transaction(s)`,
    ]);
    await Promise.all([loadFunds(), loadParticipants([state.wallet], true)]);
    renderWallet();
  });

  form.intervalId.addEventListener("input", () => (form.dataset.auto = "0"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!canSign() || !(await bringOntoChain())) return;
    const iv = Number(form.intervalId.value);
    const values = {
      side: form.side.value,
      energyKwh: form.energyKwh.value,
      priceToken: form.priceToken.value,
      intervalId: iv,
      counterparty: form.counterparty.value.trim(),
      expiry: (iv + 1) * state.intervalSeconds + 86400,
    };
    result.className = "pending";
    result.textContent = "waiting for the wallet's signature…";
    const answer = await signAndSubmit(state.wallet, values);
    if (answer.ok) {
      result.className = "accepted";
      result.replaceChildren(h("b", {}, `accepted (${answer.order.status})`), " ", h("span", { class: "mono", id: "order-hash" }, answer.order.hash));
    } else {
      result.className = "refused";
      result.replaceChildren(h("b", { id: "refusal-code" }, answer.code), `: ${answer.message}`);
    }
  });
}

// ------------------------------------------------------------------ start
async function main() {
  $("#follow").addEventListener("change", (ev) => {
    state.follow = ev.target.checked;
  });
  $("#iv-prev").addEventListener("click", () => select(state.interval - 1, { user: true }));
  $("#iv-next").addEventListener("click", () => select(state.interval + 1, { user: true }));
  setupWallet();
  await Promise.all([loadHealth(), loadOpenInterval(), loadContracts()]);
  await loadTopology();
  state.interval = await initialInterval();
  renderIntervalLabel();
  await Promise.all([loadInterval(), loadGridStatus(), loadReadings()]);
  openStream();
  document.body.dataset.ready = "1";
  setInterval(() => {
    if (!document.hidden) schedule("health", "readings");
  }, 10000);
}

main().catch((err) => report("start", err));
