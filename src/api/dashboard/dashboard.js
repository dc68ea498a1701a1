// tidemark's live dashboard: reads GET /v1/sources and GET /v1/dead-letters
// with a bearer token (scope `read`) every few seconds and renders them.
// Read-only: it sends nothing but GETs. Text from the API is only ever set
// as textContent, never parsed as HTML (a dead letter's reason may quote a
// receiver's HTML body).
"use strict";

const TOKEN_KEY = "tidemark.token";
const REFRESH_MS = 3000;

// A token may arrive in the URL fragment (#token=...), which browsers never
// send to the server; it moves to this tab's session storage at once.
if (location.hash.startsWith("#token=")) {
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(location.hash.slice(7)));
  history.replaceState(null, "", location.pathname);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

class AuthError extends Error {}

async function get(path) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401 || r.status === 403) {
    const body = await r.json().catch(() => ({}));
    throw new AuthError((body.error && body.error.message) || ("HTTP " + r.status));
  }
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 129600) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function card(label, value, alert) {
  return el("div", { class: "card" + (alert ? " alert" : "") }, el("div", { class: "value" }, value), el("div", { class: "label" }, label));
}

function renderQueues(q) {
  const box = document.getElementById("queues");
  box.replaceChildren(
    card("jobs waiting (lag)", q.jobs.lag ?? "?"),
    card("jobs in flight", q.jobs.pending),
    card("requests waiting", q.requests.lag ?? "?"),
    card("requests in flight", q.requests.pending),
    card("dead letters", q.dead_letters, q.dead_letters > 0),
  );
}

function progress(run) {
  const total = run.pages_total || 0;
  const done = (run.pages_done || 0) + (run.pages_failed || 0);
  const text = run.feed_done
    ? `page ${done} / ${total}, ${run.docs_processed} documents`
    : "reading the feed…";
  const pct = total ? Math.round((100 * done) / total) : 0;
  // Set through the CSSOM: the page's CSP refuses style attributes.
  const bar = el("div", {});
  bar.style.width = pct + "%";
  return el("div", { class: "in-flight" },
    el("span", { class: "status running" }, "running"), " ", text,
    el("div", { class: "progress", title: pct + "%" }, bar));
}

function renderSources(sources) {
  const rows = sources.map((s) => {
    const running = s.runs.find((r) => r.status === "running");
    const last = s.runs.find((r) => r.status !== "running");
    const figures = last
      ? `${last.docs_processed} processed: ${last.upserted} upserted, ${last.deleted} deleted; ${last.api_calls} API calls`
      : "";
    const failed = Object.keys(s.failed_documents || {}).length;
    return el("tr", { "data-source": s.source },
      el("td", {}, el("strong", {}, s.source)),
      el("td", { class: "num" }, s.documents),
      el("td", {}, running ? progress(running) : el("span", { class: "muted" }, "idle")),
      el("td", {}, last ? el("span", { class: "status " + last.status }, last.status) : el("span", { class: "muted" }, "never")),
      el("td", {}, last ? ago(last.ended_at) : ""),
      el("td", {}, figures, last && last.last_error ? el("div", { class: "muted reason" }, last.last_error) : null),
      el("td", { class: "num" }, failed || ""),
    );
  });
  document.querySelector("#sources tbody").replaceChildren(...rows);
}

function renderDeadLetters(letters, count) {
  document.getElementById("dlq-count").textContent = count ? `(${count}; newest ${letters.length})` : "(none)";
  const rows = letters.map((d) => {
    const where = [d.source, d.run && d.run.slice(0, 8), d.page !== null && d.page !== undefined ? "page " + d.page : null, d.document]
      .filter(Boolean).join(" ");
    return el("tr", {}, el("td", {}, el("code", {}, d.id)), el("td", {}, d.origin), el("td", {}, where), el("td", { class: "reason" }, d.reason));
  });
  document.querySelector("#dead-letters tbody").replaceChildren(...rows);
}

function setState(text, error) {
  const s = document.getElementById("state");
  s.textContent = text;
  s.className = "state" + (error ? " error" : "");
}

async function refresh() {
  try {
    const [status, dlq] = await Promise.all([get("/v1/sources?runs=3"), get("/v1/dead-letters?limit=10")]);
    document.getElementById("login").hidden = true;
    document.getElementById("content").hidden = false;
    renderQueues(status.queues);
    renderSources(status.sources);
    renderDeadLetters(dlq.dead_letters, status.queues.dead_letters);
    setState("live, updated " + new Date().toLocaleTimeString());
  } catch (e) {
    if (e instanceof AuthError) {
      document.getElementById("content").hidden = true;
      document.getElementById("login").hidden = false;
      document.getElementById("login-why").textContent =
        "This dashboard reads the API with a token of scope read. " + e.message;
      setState("token needed", true);
    } else {
      setState("cannot reach the API: " + e.message, true);
    }
  }
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  refresh();
});
refresh();
setInterval(refresh, REFRESH_MS);
