// The network drawing: buses coloured by voltage, lines and transformers by loading, trades as arcs.
import { svg, voltageColor, loadingColor, pu, pct, kwh, shortAddr } from "./util.js";
import { activationText } from "./flex.js";

const W = 900;
const H = 620;
const PAD = 36;
const MAX_STRETCH = 2.2;

export class GridMap {
  /** @param {SVGSVGElement} root @param {(html: string|null, ev?: MouseEvent) => void} tip */
  constructor(root, tip) {
    this.root = root;
    this.tip = tip;
    this.topology = null;
    this.pos = new Map();
    this.busEls = new Map();
    this.lineEls = new Map();
    this.trafoEls = new Map();
    this.values = { bus: new Map(), line: new Map(), trafo: new Map() };
    this.participants = new Map(); // bus -> [wallet]
    root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  }

  /** Lay out and draw the network once (status and trades are updated in place later). */
  setTopology(topo) {
    this.topology = topo;
    const buses = topo.buses;
    const xs = buses.map((b) => b.x);
    const ys = buses.map((b) => b.y);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const sx = (W - 2 * PAD) / Math.max(x1 - x0, 1e-9);
    const sy = (H - 2 * PAD) / Math.max(y1 - y0, 1e-9);
    // Schematic drawing: the axes may stretch by up to MAX_STRETCH to use the panel's width.
    const s = Math.min(sx, sy);
    const kx = Math.min(sx, s * MAX_STRETCH);
    const ky = Math.min(sy, s * MAX_STRETCH);
    const ox = PAD + (W - 2 * PAD - kx * (x1 - x0)) / 2;
    const oy = PAD + (H - 2 * PAD - ky * (y1 - y0)) / 2;
    const seen = new Map();
    for (const b of buses) {
      let px = ox + (b.x - x0) * kx;
      let py = oy + (b.y - y0) * ky;
      // Buses sharing a point (busbar and its feeder start) are spread so each stays visible.
      const key = `${Math.round(px)},${Math.round(py)}`;
      const n = seen.get(key) || 0;
      seen.set(key, n + 1);
      px += n * 14;
      this.pos.set(b.id, [px, py]);
    }
    this.root.replaceChildren();
    const gLines = svg("g", { class: "lines" });
    const gTrafos = svg("g", { class: "trafos" });
    this.gTrades = svg("g", { class: "trades" });
    const gBuses = svg("g", { class: "buses" });
    this.gMarks = svg("g", { class: "marks" });
    for (const l of topo.lines) {
      const [a, b] = [this.pos.get(l.fromBus), this.pos.get(l.toBus)];
      if (!a || !b) continue;
      const el = svg("line", {
        x1: a[0], y1: a[1], x2: b[0], y2: b[1],
        class: "line" + (l.inService ? "" : " out"), "data-line": l.id,
      });
      this.hover(el, () => this.lineTip(l));
      gLines.append(el);
      this.lineEls.set(l.id, el);
    }
    for (const t of topo.trafos) {
      const [a, b] = [this.pos.get(t.hvBus), this.pos.get(t.lvBus)];
      if (!a || !b) continue;
      const g = svg("g", { class: "trafo", "data-trafo": t.id });
      const stem = svg("line", { x1: a[0], y1: a[1], x2: b[0], y2: b[1], class: "trafo-stem" });
      const [mx, my] = [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2];
      const len = Math.hypot(b[0] - a[0], b[1] - a[1]) || 1;
      const [ux, uy] = [(b[0] - a[0]) / len, (b[1] - a[1]) / len];
      const c1 = svg("circle", { cx: mx - ux * 4, cy: my - uy * 4, r: 7, class: "trafo-coil" });
      const c2 = svg("circle", { cx: mx + ux * 4, cy: my + uy * 4, r: 7, class: "trafo-coil" });
      g.append(stem, c1, c2);
      this.hover(g, () => this.trafoTip(t));
      gTrafos.append(g);
      this.trafoEls.set(t.id, g);
    }
    for (const b of buses) {
      const [px, py] = this.pos.get(b.id);
      const r = b.slack ? 8 : b.load ? 6 : 4;
      const el = svg("circle", {
        cx: px, cy: py, r, class: "bus" + (b.slack ? " slack" : "") + (b.load ? " load" : ""),
        "data-bus": b.id,
      });
      this.hover(el, () => this.busTip(b));
      gBuses.append(el);
      this.busEls.set(b.id, el);
    }
    this.gLabels = svg("g", { class: "labels" });
    this.gActs = svg("g", { class: "activations" });
    this.root.append(gLines, gTrafos, this.gTrades, gBuses, this.gMarks, this.gActs, this.gLabels);
  }

  hover(el, html) {
    el.addEventListener("mousemove", (ev) => this.tip(html(), ev));
    el.addEventListener("mouseleave", () => this.tip(null));
  }

  /** Hover and keyboard focus both show the tooltip (at the element for focus). */
  hoverOrFocus(el, html) {
    this.hover(el, html);
    el.addEventListener("focus", () => {
      const r = el.getBoundingClientRect();
      this.tip(html(), { clientX: r.right, clientY: r.bottom });
    });
    el.addEventListener("blur", () => this.tip(null));
  }

  busTip(b) {
    const vm = this.values.bus.get(b.id);
    const who = this.participants.get(b.id) || [];
    return `<b>${b.name}</b> (bus ${b.id})<br>${b.vnKv} kV · ${pu(vm)}` +
      (b.slack ? "<br>slack (external grid)" : "") +
      (b.load ? "<br>load bus" + (b.pv ? " with PV" : "") : "") +
      (who.length ? `<br>participants: ${who.map(shortAddr).join(", ")}` : "");
  }

  lineTip(l) {
    const v = this.values.line.get(l.id);
    return `<b>${l.name}</b> (line ${l.id})<br>bus ${l.fromBus} → bus ${l.toBus}<br>` +
      `loading ${pct(v)}<br>${l.lengthKm.toFixed(3)} km · max ${l.maxIKa} kA`;
  }

  trafoTip(t) {
    const v = this.values.trafo.get(t.id);
    return `<b>${t.name}</b> (trafo ${t.id})<br>bus ${t.hvBus} → bus ${t.lvBus}<br>` +
      `loading ${pct(v)}<br>${(t.snMva * 1000).toFixed(0)} kVA`;
  }

  /** Colour by a GET /grid/status answer (base state + approved trades of the interval). */
  setStatus(st) {
    this.values = { bus: new Map(), line: new Map(), trafo: new Map() };
    (st.buses || []).forEach((b, i) => this.values.bus.set(b, st.vm_pu[i]));
    (st.lines || []).forEach((l, i) => this.values.line.set(l, st.line_loading_percent[i]));
    (st.trafos || []).forEach((t, i) => this.values.trafo.set(t, st.trafo_loading_percent[i]));
    for (const [id, el] of this.busEls) {
      const vm = this.values.bus.get(id);
      el.style.fill = vm === undefined ? "" : voltageColor(vm);
      el.classList.toggle("violation", vm !== undefined && (vm < 0.9 || vm > 1.1));
    }
    for (const [id, el] of this.lineEls) {
      const v = this.values.line.get(id);
      el.style.stroke = v === undefined ? "" : loadingColor(v);
      el.style.strokeWidth = v === undefined ? "" : String(2 + Math.min(v, 120) / 20);
    }
    for (const [id, g] of this.trafoEls) {
      const v = this.values.trafo.get(id);
      for (const c of g.querySelectorAll(".trafo-coil")) c.style.stroke = v === undefined ? "" : loadingColor(v);
      g.querySelector(".trafo-stem").style.stroke = v === undefined ? "" : loadingColor(v);
    }
  }

  /** Which participants sit where (from GET /participants/{address}). */
  setParticipants(byWallet) {
    this.participants = new Map();
    for (const [wallet, p] of byWallet) {
      if (p.busId === null || p.busId === undefined) continue;
      if (!this.participants.has(p.busId)) this.participants.set(p.busId, []);
      this.participants.get(p.busId).push(wallet);
    }
    for (const [id, el] of this.busEls) el.classList.toggle("participant", this.participants.has(id));
  }

  /** The interval's activations at their device buses: ▲ up / ▼ down (a shape, not a colour
   * alone), focusable, their setpoint and activated W on hover and focus; `actions` maps an
   * activation id to its control action. */
  setActivations(activations, actions) {
    if (!this.topology) return;
    this.activations = activations;
    this.gActs.replaceChildren();
    const byBus = new Map();
    for (const a of activations) {
      if (!byBus.has(a.busId)) byBus.set(a.busId, []);
      byBus.get(a.busId).push(a);
    }
    for (const [bus, list] of byBus) {
      const p = this.pos.get(bus);
      if (!p) continue;
      list.forEach((a, i) => {
        const up = a.direction === 0;
        const [x, y] = [p[0] + 12 + i * 14, p[1] - 12];
        const d = up ? `M${x},${y - 7} L${x + 7},${y + 5} L${x - 7},${y + 5} z` : `M${x},${y + 7} L${x + 7},${y - 5} L${x - 7},${y - 5} z`;
        const text = () => activationText(a, actions.get(a.id));
        const mark = svg("path", {
          d, tabindex: 0, role: "img", class: `act-mark ${up ? "up" : "down"}`,
          "data-activation": a.id, "data-bus": bus, "aria-label": activationText(a, actions.get(a.id)),
        });
        this.hoverOrFocus(mark, text);
        this.gActs.append(mark);
      });
      const ring = svg("circle", { cx: p[0], cy: p[1], r: 11, class: "act-ring", "data-act-bus": bus });
      this.gActs.prepend(ring);
    }
    this.linkTrades();
  }

  /** A rescued trade's arc names its activations (data-activations, tooltip). */
  linkTrades() {
    const acts = this.activations || [];
    for (const path of this.gTrades.querySelectorAll("path.trade")) {
      const ids = acts.filter((a) => a.tradeId === path.dataset.trade).map((a) => a.id);
      if (ids.length) path.setAttribute("data-activations", ids.join(" "));
      else path.removeAttribute("data-activations");
      path.classList.toggle("rescued", ids.length > 0);
    }
  }

  /** Trades of the interval as arcs seller -> buyer; a veto marks its binding element. */
  setTrades(trades) {
    if (!this.topology) return;
    this.gTrades.replaceChildren();
    this.gMarks.replaceChildren();
    for (const t of trades) {
      const a = this.pos.get(t.sellerBus);
      const b = this.pos.get(t.buyerBus);
      if (!a || !b) continue;
      const [mx, my] = [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2];
      const [dx, dy] = [b[0] - a[0], b[1] - a[1]];
      const bend = 0.25;
      const [cx, cy] = [mx - dy * bend, my + dx * bend];
      const path = svg("path", {
        d: `M${a[0]},${a[1]} Q${cx},${cy} ${b[0]},${b[1]}`,
        class: "trade " + (t.approved ? "approved" : "vetoed"),
        "marker-end": t.approved ? "url(#arrow-ok)" : "url(#arrow-veto)",
        "data-trade": t.id,
      });
      this.hover(path, () =>
        `<b>${t.approved ? "approved" : "vetoed: " + t.reason}</b>${t.element ? " at " + t.element : ""}` +
        `<br>${kwh(t.energyWh)} kWh · bus ${t.sellerBus} → bus ${t.buyerBus}` +
        `<br>${shortAddr(t.seller)} → ${shortAddr(t.buyer)}` +
        (path.dataset.activations ? `<br>rescued by ${path.dataset.activations.split(" ").length} activation(s)` : ""));
      this.gTrades.append(path);
      if (!t.approved && t.element) this.markElement(t.element, t.reason);
    }
    this.linkTrades();
    this.ensureMarkers();
  }

  markElement(element, reason) {
    // ISLAND_BALANCE names a grid-forming unit: "battery village-battery (bus 1)" marks its bus
    const m = /^(bus|line|trafo) (\d+)$/.exec(element) ?? /^.* \((bus) (\d+)\)$/.exec(element);
    if (!m) return;
    const id = Number(m[2]);
    let p = null;
    if (m[1] === "bus") p = this.pos.get(id);
    else {
      const list = m[1] === "line" ? this.topology.lines : this.topology.trafos;
      const e = list.find((x) => x.id === id);
      if (e) {
        const a = this.pos.get(e.fromBus ?? e.hvBus);
        const b = this.pos.get(e.toBus ?? e.lvBus);
        if (a && b) p = [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2];
      }
    }
    if (!p) return;
    const ring = svg("circle", { cx: p[0], cy: p[1], r: 15, class: "veto-ring", "data-element": element });
    const label = svg("text", { x: p[0] + 18, y: p[1] + 4, class: "veto-label" }, `✕ ${reason} (${element})`);
    this.gMarks.append(ring, label);
  }

  ensureMarkers() {
    if (this.root.querySelector("defs")) return;
    const defs = svg("defs");
    for (const [id, cls] of [["arrow-ok", "approved"], ["arrow-veto", "vetoed"]]) {
      const mk = svg("marker", {
        id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
      });
      mk.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: `arrow ${cls}` }));
      defs.append(mk);
    }
    this.root.prepend(defs);
  }
}
