// fairgate's status page: polls GET /admin/v1/state every 2 s and draws it. No framework, no
// build step, nothing fetched from elsewhere. The admin token comes from the login form, or
// once from the URL fragment (#token=...), which is then removed from the address bar; it is
// kept in sessionStorage (this tab only) and sent as `Authorization: Bearer`.
"use strict";

(() => {
  const TOKEN = "fairgate.adminToken";
  const REFRESH_MS = 2000;
  const $ = (id) => document.getElementById(id);
  const number = new Intl.NumberFormat("en-US");
  const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
  const percent = (x) => {
    if (x === null || x === undefined) return "–";
    return `${(100 * x).toFixed(x > 0 && x < 0.1 ? 1 : 0)}%`;
  };

  let timer = null;
  let paused = false;
  let inFlight = false;

  // ------------------------------------------------------------------------ the token

  function tokenFromFragment() {
    const found = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (found) {
      sessionStorage.setItem(TOKEN, decodeURIComponent(found[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  function showLogin(message) {
    stop();
    $("board").hidden = true;
    $("error").hidden = true;
    $("login").hidden = false;
    if (message) $("login-message").textContent = message;
    setStatus("idle", "signed out");
    $("token").focus();
  }

  // -------------------------------------------------------------------------- polling

  function schedule() {
    stop();
    if (!paused && document.visibilityState !== "hidden") timer = setTimeout(refresh, REFRESH_MS);
  }

  function stop() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  async function refresh() {
    stop();
    const token = sessionStorage.getItem(TOKEN);
    if (!token) return showLogin();
    if (inFlight) return;
    inFlight = true;
    try {
      const response = await fetch("v1/state", {
        headers: { Authorization: `Bearer ${token}` },
        cache: "no-store",
      });
      const body = await response.json().catch(() => null);
      if (response.status === 401 || response.status === 403) {
        sessionStorage.removeItem(TOKEN);
        return showLogin(errorMessage(body, "The admin token was refused."));
      }
      if (!response.ok) throw new Error(errorMessage(body, `HTTP ${response.status}`));
      render(body);
      $("error").hidden = true;
      setStatus("live", "live");
    } catch (error) {
      $("error").textContent = `Could not read the live state: ${error.message}`;
      $("error").hidden = false;
      setStatus("failing", "retrying");
    } finally {
      inFlight = false;
    }
    schedule();
  }

  function errorMessage(body, fallback) {
    return (body && body.error && body.error.message) || fallback;
  }

  function setStatus(state, text) {
    const status = $("status");
    status.dataset.state = paused ? "paused" : state;
    status.textContent = paused ? "paused" : text;
  }

  // ---------------------------------------------------------------------------- drawing

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "title") node.title = value;
      else node.setAttribute(name, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // A horizontal bar: ``value`` of ``max`` filled, an optional marker at ``mark`` (0..1).
  function bar(fraction, mark, label, tone) {
    const fill = el("span", { class: `fill ${tone || ""}` });
    fill.style.width = `${Math.max(0, Math.min(1, fraction || 0)) * 100}%`;
    const track = el("span", { class: "track" }, fill);
    if (mark !== null && mark !== undefined) {
      const marker = el("span", { class: "mark" });
      marker.style.left = `${Math.max(0, Math.min(1, mark)) * 100}%`;
      track.append(marker);
    }
    return el("div", { class: "bar" }, track, el("span", { class: "bar-label" }, label));
  }

  function gauge(used, budget) {
    const fraction = budget > 0 ? used / budget : 0;
    const tone = fraction >= 0.95 ? "hot" : fraction >= 0.75 ? "warm" : "";
    return bar(fraction, null, `${compact.format(used)} / ${compact.format(budget)}`, tone);
  }

  function seconds(until, at) {
    const s = Math.max(0, (Date.parse(until) - Date.parse(at)) / 1000);
    return s >= 90 ? `${Math.round(s / 60)} min` : `${s.toFixed(s < 10 ? 1 : 0)} s`;
  }

  function card(label, value, detail) {
    return el("div", { class: "card" },
      el("div", { class: "card-label" }, label),
      el("div", { class: "card-value" }, value),
      el("div", { class: "card-detail" }, detail || ""));
  }

  function render(state) {
    $("login").hidden = true;
    $("board").hidden = false;
    const at = state.at;
    const updated = new Date(at).toLocaleTimeString();
    $("meta").replaceChildren(
      el("span", {}, "replica ", el("code", {}, state.replica)),
      el("span", {}, `directory v${state.version}`),
      el("span", {}, `read ${updated}`));
    $("window").textContent = state.window_s > 0 ? `${Math.round(state.window_s)} s` : "minute (sampling)";

    const tenants = state.tenants;
    const active = tenants.filter((t) => t.queued > 0 || t.in_flight.requests > 0);
    const queued = tenants.reduce((sum, t) => sum + t.queued, 0);
    const running = state.backends.reduce((sum, b) => sum + b.in_flight.requests, 0);
    const tokens = state.backends.reduce((sum, b) => sum + b.in_flight.tokens, 0);
    const open = state.backends.filter((b) => b.healthy && !b.drained && !b.engine.busy_until);
    $("summary").replaceChildren(
      card("Active tenants", `${active.length} / ${tenants.length}`, "with work queued or in flight"),
      card("Queued", number.format(queued), "requests waiting in admission"),
      card("In flight", number.format(running), `${compact.format(tokens)} estimated tokens`),
      card("Backends taking work", `${open.length} / ${state.backends.length}`,
        `${state.backends.filter((b) => b.drained).length} drained, ` +
        `${state.backends.filter((b) => !b.healthy).length} down`));

    $("tenants").tBodies[0].replaceChildren(...tenants.map((t) => tenantRow(t)));
    $("backends").tBodies[0].replaceChildren(...state.backends.map((b) => backendRow(b, at)));
    $("pools").tBodies[0].replaceChildren(...state.pools.map(poolRow));
    if (!tenants.length) $("tenants").tBodies[0].append(emptyRow(8, "No tenants."));
  }

  function emptyRow(columns, text) {
    return el("tr", {}, el("td", { class: "empty", colspan: columns }, text));
  }

  function tenantRow(t) {
    const idle = t.queued === 0 && t.in_flight.requests === 0;
    const share = t.recent_share;
    const fair = t.weight_share;
    let tone = "";
    if (share !== null && fair !== null && t.queued > 0 && share < 0.8 * fair) tone = "warm";
    const label = `${percent(share)} of service · fair ${percent(fair)}`;
    return el("tr", { "data-tenant": t.id, class: idle ? "idle" : "" },
      el("td", {}, el("strong", {}, t.id),
        t.priority !== 0 ? el("span", { class: "tag" }, `priority ${t.priority}`) : null,
        t.queued > 0 ? el("span", { class: "tag queued" }, "backlogged") : null),
      el("td", { class: "num" }, number.format(t.weight)),
      el("td", { class: "num" }, number.format(t.queued)),
      el("td", { class: "num" }, number.format(t.in_flight.requests)),
      el("td", { class: "num" }, compact.format(t.in_flight.tokens)),
      el("td", { class: "num", title: "service received / weight" },
        compact.format(t.virtual_counter)),
      el("td", { class: "share" }, bar(share, fair, label, tone)),
      el("td", { class: "chips" }, Object.entries(t.pools).map(([pool, p]) =>
        el("span", { class: "chip", title: `${compact.format(p.in_flight.tokens)} tokens` },
          `${pool} ${p.in_flight.requests}`))));
  }

  function backendState(b, at) {
    const pills = [];
    if (!b.healthy) pills.push(el("span", { class: "pill down" }, `down ${seconds(b.down_until, at)}`));
    if (b.ejected_until) pills.push(el("span", { class: "pill down" }, `ejected ${seconds(b.ejected_until, at)}`));
    if (b.drained) pills.push(el("span", { class: "pill drained" }, "drained"));
    if (b.engine.busy_until) pills.push(el("span", { class: "pill busy" }, "engine busy"));
    if (!pills.length) pills.push(el("span", { class: "pill up" }, "healthy"));
    return pills;
  }

  function backendRow(b, at) {
    const e = b.engine;
    const engineCounts = e.running === null && e.waiting === null
      ? el("span", { class: "muted" }, "not reported")
      : `${e.running ?? "–"} / ${e.waiting ?? "–"}`;
    const kv = e.kv_cache_usage === null
      ? el("span", { class: "muted" }, "not reported")
      : bar(e.kv_cache_usage, null,
        `${percent(e.kv_cache_usage)}${e.kv_capacity_tokens ? ` of ${compact.format(e.kv_capacity_tokens)}` : ""}`,
        e.kv_cache_usage >= 0.95 ? "hot" : e.kv_cache_usage >= 0.8 ? "warm" : "");
    return el("tr", { "data-backend": b.name, class: b.drained || !b.healthy ? "out" : "" },
      el("td", {}, el("strong", {}, b.name), el("span", { class: "tag" }, b.engine_kind)),
      el("td", {}, b.pool),
      el("td", { class: "pills" }, backendState(b, at)),
      el("td", { class: "gauge" }, gauge(b.in_flight.requests, b.budget.requests)),
      el("td", { class: "gauge" }, gauge(b.in_flight.tokens, b.budget.tokens)),
      el("td", { class: "num" }, engineCounts),
      el("td", { class: "gauge" }, kv));
  }

  function poolRow(p) {
    return el("tr", { "data-pool": p.name },
      el("td", {}, el("strong", {}, p.name)),
      el("td", { class: "num" }, number.format(p.queued)),
      el("td", { class: "num" }, number.format(p.in_flight.requests)),
      el("td", { class: "num" }, compact.format(p.in_flight.tokens)),
      el("td", { class: "chips" }, p.backends.map((b) => el("span", { class: "chip" }, b))));
  }

  // ------------------------------------------------------------------------- start

  document.addEventListener("DOMContentLoaded", () => {
    tokenFromFragment();
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN, $("token").value.trim());
      $("token").value = "";
      refresh();
    });
    $("forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN);
      showLogin("Token forgotten. Enter an admin token to watch the live state again.");
    });
    $("pause").addEventListener("click", () => {
      paused = !paused;
      $("pause").textContent = paused ? "Resume" : "Pause";
      if (paused) {
        stop();
        setStatus("paused", "paused");
      } else {
        refresh();
      }
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && !paused) refresh();
      else stop();
    });
    refresh();
  });
})();
