// The status page: reads /status (the same document as `mitm-rules status --json`) every few seconds
// and shows it. Plain DOM, no library; every value goes in as text, never as markup.
"use strict";

const EVERY_MS = 3000;
const STATES = ["active", "on trial", "cooling", "retired", "disabled", "expired"];

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = el("tr");
  for (const cell of cells) tr.append(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function time(iso, now) {
  if (!iso) return "";
  const at = new Date(iso);
  const seconds = (at - now) / 1000;
  const span = Math.abs(seconds);
  const words = span < 90 ? `${Math.round(span)} s` : span < 5400 ? `${Math.round(span / 60)} min`
    : span < 172800 ? `${Math.round(span / 3600)} h` : `${Math.round(span / 86400)} days`;
  return `${at.toLocaleTimeString()} (${seconds > 0 ? "in " + words : words + " ago"})`;
}

function counts(pool) {
  const parts = STATES.filter((s) => pool.counts[s]).map((s) => `${pool.counts[s]} ${s}`);
  return parts.join(", ") || "no tokens";
}

function poolSection(pool, now) {
  const section = el("section");
  section.className = "pool";
  section.dataset.pool = pool.name;
  section.append(el("h2", `Pool ${pool.name}`));
  section.append(el("p", `${pool.file} (${pool.strategy}); health in ${pool.health_kept_in}`, "quiet"));
  const b = pool.breaker;
  const breaker = b.open
    ? el("p", `Breaker open until ${time(b.until, now)}: refusals go to the client as they are`, "breaker-open")
    : el("p", b.opens_after ? `Breaker closed (opens when ${b.opens_after.tokens} different tokens are refused within ${b.opens_after.within_seconds} s)` : "Breaker closed");
  breaker.classList.add("breaker");
  section.append(el("p", counts(pool), "counts"), breaker);
  const table = el("table");
  table.className = "tokens";
  const routed = pool.tokens.some((t) => t.exit);
  const heads = ["token", ...(routed ? ["exit"] : []), "state", "until", "ok", "refused", "last refusal", "why"];
  table.append(row(heads.map((h) => el("th", h))));
  for (const t of pool.tokens) {
    const state = el("td");
    state.append(el("span", t.state, `state state-${t.state.replace(" ", "-")}`));
    let until = t.until ? time(t.until, now) : "";
    if (t.state === "expired") until = "since " + time(t.expires, now);
    else if (t.retired) until = "since " + time(t.retired.at, now);
    const last = t.last_refusal ? `${t.last_refusal.status || "refused"} at ${time(t.last_refusal.at, now)}` : "";
    const tr = row([t.token, ...(routed ? [t.exit] : []), state, until, el("td", t.successes, "num"),
      el("td", t.refusals, "num"), last, t.retired ? t.retired.reason : ""]);
    tr.className = "token";
    tr.dataset.state = t.state;
    table.append(tr);
  }
  section.append(table);
  if (pool.tokens_not_shown) section.append(el("p", `… and ${pool.tokens_not_shown} more (mitm-rules status lists them all)`, "quiet"));
  return section;
}

function show(doc) {
  const now = new Date(doc.now);
  const pools = document.getElementById("pools");
  pools.replaceChildren(...doc.pools.map((p) => poolSection(p, now)));
  if (!doc.pools.length) pools.append(el("p", "No token pool: the rules file has no tokens: section.", "quiet"));
  const summary = doc.pools.map((p) => `${p.name}: ${counts(p)}`).join("; ") || "no token pool";
  const c = doc.counters;
  let totals = "";
  if (c) {
    const sum = (o) => Object.values(o).reduce((a, b) => a + b, 0);
    const refused = Object.values(c.refusals).reduce((a, o) => a + sum(o), 0);
    const recovered = Object.values(c.recoveries).reduce((a, o) => a + o.recovered, 0);
    totals = ` — since ${time(c.since, now)}: ${sum(c.requests)} requests rewritten, ${refused} refused, ${recovered} recovered`;
  }
  document.getElementById("summary").textContent = summary + totals;
  document.getElementById("updated").textContent = `${doc.rules || ""} · updated ${now.toLocaleTimeString()}`;
  const exits = doc.exits || [];
  document.getElementById("exits-section").hidden = !exits.length;
  document.querySelector("#exits tbody").replaceChildren(...exits.map((x) => {
    const state = el("td");
    state.append(el("span", x.state === "resting" ? `resting until ${time(x.until, now)}` : (x.state || "unknown"),
      `state state-${x.state === "resting" ? "cooling" : "active"}`));
    const bound = Object.entries(x.tokens).map(([pool, n]) => `${n} of ${pool}`).join(", ") || "none";
    const failure = x.last_failure ? `${time(x.last_failure.at, now)}: ${x.last_failure.why}` : "";
    const tr = row([x.name, x.url, state, bound, el("td", x.successes ?? "", "num"), el("td", x.refusals ?? "", "num"),
      el("td", x.failures ?? "", "num"), failure]);
    tr.className = "exit";
    tr.dataset.state = x.state || "";
    return tr;
  }));
  const values = document.querySelector("#values tbody");
  values.replaceChildren(...doc.values.map((v) => row([v.name, v.source, v.ttl_seconds ? `${v.ttl_seconds} s` : "",
    time(v.fetched_at, now), time(v.expires_at, now), time(v.failed_at, now)])));
  if (!doc.values.length) values.append(row([el("td", "none in the rules file", "quiet")]));
  const recoveries = document.querySelector("#recoveries tbody");
  recoveries.replaceChildren(...(c ? c.last_recoveries : []).map((r) => row([time(r.at, now), `${r.method} ${r.path}`,
    r.attempts, el("td", r.recovered ? "recovered" : "failed", r.recovered ? "" : "failed")])));
  if (!recoveries.children.length) recoveries.append(row([el("td", "none since the proxy started", "quiet")]));
}

async function refresh() {
  try {
    // beside this page, without the user:password@ a link may carry (fetch refuses such a URL; the
    // browser sends the password it was given for the page by itself)
    const url = location.origin + location.pathname.replace(/[^/]*$/, "") + "status";
    const answer = await fetch(url, { cache: "no-store" });
    if (!answer.ok) throw new Error(`status ${answer.status}`);
    show(await answer.json());
  } catch (e) {
    document.getElementById("updated").textContent = `cannot read the status now (${e.message}); trying again`;
  }
}

refresh();
setInterval(refresh, EVERY_MS);
