// Perdure's dashboard: one page per URL under /ui/, each reading the API with the signed-in user's token,
// so it shows exactly what the API lets that user see. Elements are built with el() (never innerHTML), so
// no job name, log line or node fact can inject markup.

const main = document.getElementById("main");
const TOKEN_KEY = "perdure.token";
const PERIODS = { "1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 };
const JOB_STATES = ["init", "queued", "in-progress", "completed", "suspend", "failed-permanent", "deleted"];
const session = { auth: { enabled: false }, token: sessionStorage.getItem(TOKEN_KEY), user: "", admin: true };
let current = null; // the page on screen: { update?: () => Promise<void>, dispose?: () => void }
let updating = false;

// ---- building blocks ----------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const badge = (state) => el("span", { class: `badge st-${state}`, "data-state": state }, state);
const link = (href, text) => el("a", { href }, text);

function table(headers, rows, attrs = {}) {
  return el(
    "table",
    attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", class: h.num ? "num" : null }, h.label ?? h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "Nothing to show."))),
  );
}

function toast(message) {
  const box = document.getElementById("toast");
  const msg = el("div", { class: "msg" }, message);
  box.append(msg);
  setTimeout(() => msg.remove(), 5000);
}

function seconds(value) {
  const s = Number(value) || 0;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function bytes(n) {
  const v = Number(n) || 0;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let x = v;
  while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
  return `${x.toFixed(i ? 1 : 0)} ${units[i]}`;
}

const when = (stamp) => (!stamp || stamp.startsWith("0001-") ? "" : new Date(stamp).toLocaleString());

// ---- the API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, fields) {
    super(message);
    this.status = status;
    this.fields = fields || {};
  }
}

function headers(extra = {}) {
  return session.token ? { ...extra, Authorization: `Bearer ${session.token}` } : extra;
}

async function api(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const reply = await fetch(path, init);
  const text = await reply.text();
  let doc = null;
  try { doc = text ? JSON.parse(text) : null; } catch { doc = null; }
  if (reply.status === 401 && session.auth.enabled) {
    signOut("Your session has ended: sign in again.");
    throw new ApiError(401, "not signed in");
  }
  if (!reply.ok) {
    const message = doc?.message || (Array.isArray(doc?.error) ? doc.error.join("; ") : doc?.error) || `${reply.status} ${reply.statusText}`;
    throw new ApiError(reply.status, message, doc?.fields);
  }
  // AWE's envelope carries the answer in `data`; the management API answers bare.
  return doc && typeof doc === "object" && "status" in doc && "data" in doc ? doc : { data: doc };
}

const get = async (path) => (await api("GET", path)).data;

async function guarded(container, work) {
  try {
    await work();
  } catch (err) {
    container.replaceChildren(
      el("p", { class: "error", role: "alert" }, err.status === 403 ? `Only admins can see this: ${err.message}` : `Could not load: ${err.message}`),
    );
  }
}

// ---- sign-in --------------------------------------------------------------------------------------

function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
  } catch {
    return {};
  }
}

function adopt(token) {
  session.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  whoAmI();
}

function whoAmI() {
  if (!session.auth.enabled) {
    session.user = "";
    session.admin = true;
  } else if (session.token) {
    const c = claims(session.token);
    const groups = c["cognito:groups"] || c.groups || [];
    session.user = c.username || c["cognito:username"] || c.email || c.sub || "user";
    session.admin = groups.some((g) => (session.auth.adminGroups || []).includes(g));
  }
  const who = document.getElementById("who");
  who.replaceChildren();
  if (session.auth.enabled && session.token) {
    who.append(el("span", {}, `${session.user}${session.admin ? " (admin)" : ""}`), el("button", { type: "button", onclick: () => signOut() }, "Sign out"));
  }
  for (const a of document.querySelectorAll("[data-admin]")) a.parentElement.hidden = !session.admin;
}

function signOut(message) {
  session.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  whoAmI();
  showSignIn(message);
}

function b64url(bytesArray) {
  return btoa(String.fromCharCode(...bytesArray)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

async function startLogin() {
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(48)));
  const challenge = b64url(new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier))));
  const stateValue = b64url(crypto.getRandomValues(new Uint8Array(16)));
  sessionStorage.setItem("perdure.pkce", JSON.stringify({ verifier, state: stateValue, back: location.pathname + location.search }));
  const url = new URL(session.auth.authorizationEndpoint);
  url.search = new URLSearchParams({
    response_type: "code",
    client_id: session.auth.clientId,
    redirect_uri: `${location.origin}/ui/callback`,
    scope: "openid",
    code_challenge: challenge,
    code_challenge_method: "S256",
    state: stateValue,
  }).toString();
  location.assign(url.toString());
}

async function finishLogin() {
  const params = new URLSearchParams(location.search);
  const saved = JSON.parse(sessionStorage.getItem("perdure.pkce") || "{}");
  sessionStorage.removeItem("perdure.pkce");
  if (params.get("error")) throw new Error(`the identity provider said: ${params.get("error_description") || params.get("error")}`);
  if (!saved.state || saved.state !== params.get("state")) throw new Error("the sign-in answer does not match this browser's request");
  const reply = await fetch(session.auth.tokenEndpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code: params.get("code") || "",
      redirect_uri: `${location.origin}/ui/callback`,
      client_id: session.auth.clientId,
      code_verifier: saved.verifier,
    }),
  });
  const tokens = await reply.json();
  if (!reply.ok || !(tokens.id_token || tokens.access_token)) throw new Error(tokens.error_description || tokens.error || "no token in the answer");
  adopt(tokens.id_token || tokens.access_token);
  history.replaceState(null, "", saved.back && saved.back !== "/ui/callback" ? saved.back : "/ui/");
}

function showSignIn(message) {
  document.title = "Sign in · Perdure";
  const paste = el("textarea", { id: "token", "aria-label": "Bearer token", placeholder: "eyJ…" });
  const error = el("p", { class: "error", role: "alert" }, message || "");
  const button = session.auth.authorizationEndpoint
    ? el("button", { type: "button", id: "oidc-signin", onclick: () => startLogin().catch((e) => (error.textContent = e.message)) }, `Sign in with ${new URL(session.auth.issuer).host}`)
    : el("p", { class: "muted" }, "The identity provider's sign-in page could not be found; paste a token instead.");
  main.replaceChildren(
    el("section", { class: "signin" },
      el("h1", {}, "Sign in"),
      el("p", {}, "This Perdure server requires a token from its identity provider."),
      button,
      el("h2", {}, "Or paste a token"),
      paste,
      el("p", {}, el("button", {
        type: "button",
        class: "secondary",
        onclick: async () => {
          const token = paste.value.trim();
          if (!token) return;
          const reply = await fetch("/job?limit=1", { headers: { Authorization: `Bearer ${token}` } });
          if (!reply.ok) {
            const doc = await reply.json().catch(() => ({}));
            error.textContent = `That token was refused: ${(doc.error || []).join("; ") || reply.status}`;
            return;
          }
          adopt(token);
          await route();
          listen();
        },
      }, "Use this token")),
      error,
    ),
  );
}

// ---- live updates -----------------------------------------------------------------------------------

let stream = null;

async function listen() {
  if (stream) stream.abort();
  stream = new AbortController();
  const signal = stream.signal;
  while (!signal.aborted) {
    try {
      const reply = await fetch("/api/v1/events", { headers: headers(), signal });
      if (!reply.ok) throw new Error(String(reply.status));
      const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const message = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          if (message.split("\n").includes("event: change")) refresh();
        }
      }
    } catch (err) {
      if (signal.aborted) return;
    }
    await new Promise((r) => setTimeout(r, 3000));
  }
}

async function refresh() {
  if (!current?.update || updating) return;
  updating = true;
  try {
    await current.update();
  } catch (err) {
    console.warn("update failed", err);
  } finally {
    updating = false;
  }
}

// ---- pages -------------------------------------------------------------------------------------------

async function overview() {
  document.title = "Overview · Perdure";
  const period = el("select", { id: "period", "aria-label": "Period" }, Object.keys(PERIODS).map((p) => el("option", { value: p, selected: p === "24h" }, `last ${p}`)));
  const counts = el("div", { class: "cards", id: "counts" });
  const spot = el("div", { class: "cards", id: "spot" });
  const nodes = el("div", { class: "cards", id: "node-counts" });
  main.replaceChildren(
    el("h1", {}, "Overview"),
    el("h2", {}, "Jobs and work"), counts,
    el("h2", {}, "Nodes"), nodes,
    el("div", { class: "toolbar" }, el("h2", {}, "Spot protection"), period), spot,
  );
  const card = (label, value, id) => el("div", { class: "card", "data-metric": id }, el("div", { class: "value" }, value), el("div", { class: "label" }, label));
  async function update() {
    await guarded(counts, async () => {
      const q = await get("/queue?json");
      const byState = q.jobs.by_state || {};
      counts.replaceChildren(
        ...JOB_STATES.filter((s) => s !== "deleted").map((s) => card(`jobs ${s}`, byState[s] || 0, `jobs-${s}`)),
        card("workunits queued", q.workunits.queued, "workunits-queued"),
        card("workunits running", q.workunits.checkout, "workunits-running"),
      );
    });
    await guarded(nodes, async () => {
      const list = await get("/api/v1/node");
      const spotNodes = list.filter((n) => n.instance?.payType === "Spot").length;
      nodes.replaceChildren(card("live nodes", list.length, "nodes"), card("spot", spotNodes, "nodes-spot"), card("on-demand or local", list.length - spotNodes, "nodes-other"));
    });
    await guarded(spot, async () => {
      const end = new Date();
      const start = new Date(end - PERIODS[period.value] * 1000);
      const range = `start=${start.toISOString()}&end=${end.toISOString()}`;
      const summary = await get(`/api/v1/metrics/summary?${range}`);
      const total = (name) => (summary.items?.[name] || []).reduce((sum, item) => sum + (item.point?.value || 0), 0);
      const interval = PERIODS[period.value] > 86400 ? "24h" : PERIODS[period.value] > 3600 ? "30m" : "1m";
      const ckpt = await get(`/api/v1/metricValue/system-total/metricDef-checkpointDuration?interval=${interval}&statistic=count&${range}`);
      const taken = (ckpt.points || []).reduce((sum, p) => sum + (p.value || 0), 0);
      spot.replaceChildren(
        card("checkpoints taken", taken, "checkpoints"),
        card("interruptions survived", total("spotProtection"), "spotProtection"),
        card("run time saved", seconds(total("timeSaved")), "timeSaved"),
        card("jobs submitted", total("jobSubmitted"), "jobSubmitted"),
      );
    });
  }
  period.addEventListener("change", update);
  await update();
  return { update };
}

async function jobs() {
  document.title = "Jobs · Perdure";
  const params = new URLSearchParams(location.search);
  const filters = {
    state: el("select", { id: "f-state", name: "state" }, el("option", { value: "" }, "any"), JOB_STATES.map((s) => el("option", { value: s, selected: params.get("state") === s }, s))),
    name: el("input", { id: "f-name", name: "name", value: params.get("name") || "", placeholder: "exact name" }),
    project: el("input", { id: "f-project", name: "project", value: params.get("project") || "" }),
    order: el("select", { id: "f-order", name: "order" }, [["info.submittime", "submitted"], ["info.name", "name"], ["info.priority", "priority"], ["state", "state"], ["updatetime", "updated"]].map(([v, t]) => el("option", { value: v, selected: params.get("order") === v }, t))),
    direction: el("select", { id: "f-direction", name: "direction" }, el("option", { value: "desc" }, "newest first"), el("option", { value: "asc", selected: params.get("direction") === "asc" }, "oldest first")),
  };
  let offset = Number(params.get("offset")) || 0;
  const limit = 25;
  const body = el("div", { id: "jobs-table" });
  const pager = el("div", { class: "pager" });
  const selected = new Set();
  const bulk = (op) => async () => {
    for (const id of selected) {
      try { await api("PUT", `/job/${encodeURIComponent(id)}?${op}`); } catch (e) { toast(`${id.slice(0, 8)}: ${e.message}`); }
    }
    toast(`${op}: ${selected.size} job(s)`);
    selected.clear();
    await update();
  };
  const apply = () => {
    const q = new URLSearchParams();
    for (const [k, input] of Object.entries(filters)) if (input.value) q.set(k, input.value);
    if (offset) q.set("offset", String(offset));
    history.replaceState(null, "", `/ui/jobs${q.toString() ? `?${q}` : ""}`);
    return update();
  };
  for (const input of Object.values(filters)) input.addEventListener("change", () => { offset = 0; apply(); });
  main.replaceChildren(
    el("h1", {}, "Jobs"),
    el("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); offset = 0; apply(); } },
      el("label", {}, "State", filters.state),
      el("label", {}, "Name", filters.name),
      el("label", {}, "Project", filters.project),
      el("label", {}, "Sort by", filters.order),
      el("label", {}, "Order", filters.direction),
      el("button", { type: "submit" }, "Search"),
      el("button", { type: "button", class: "secondary", id: "bulk-suspend", onclick: bulk("suspend") }, "Suspend selected"),
      el("button", { type: "button", class: "secondary", id: "bulk-resume", onclick: bulk("resume") }, "Resume selected"),
    ),
    body,
    pager,
  );
  async function update() {
    await guarded(body, async () => {
      const q = new URLSearchParams({ limit: String(limit), offset: String(offset), order: filters.order.value, direction: filters.direction.value });
      const query = [];
      if (filters.state.value) q.set("state", filters.state.value), query.push("state");
      if (filters.name.value) q.set("info.name", filters.name.value), query.push("name");
      if (filters.project.value) q.set("info.project", filters.project.value), query.push("project");
      const doc = await api("GET", `/job?${query.length ? "query&" : ""}${q}`);
      const rows = (doc.data || []).map((job) => {
        const total = job.tasks.length;
        const done = job.tasks.filter((t) => t.state === "completed").length;
        const box = el("input", { type: "checkbox", "aria-label": `select job ${job.info.name || job.id}`, checked: selected.has(job.id), onchange: (e) => (e.target.checked ? selected.add(job.id) : selected.delete(job.id)) });
        return el("tr", { "data-job": job.id },
          el("td", {}, box),
          el("td", {}, link(`/ui/jobs/${job.id}`, job.info.name || job.id.slice(0, 8))),
          el("td", {}, badge(job.state)),
          el("td", {}, `${done}/${total}`),
          el("td", {}, job.info.project),
          el("td", {}, job.owner || job.info.user),
          el("td", {}, when(job.info.submittime)),
          el("td", { class: "mono" }, job.id.slice(0, 8)),
        );
      });
      body.replaceChildren(table([{ label: "" }, "Name", "State", "Tasks done", "Project", "User", "Submitted", "Id"], rows, { id: "jobs" }));
      const totalCount = doc.total_count || 0;
      pager.replaceChildren(
        el("button", { type: "button", class: "secondary", disabled: offset === 0, onclick: () => { offset = Math.max(0, offset - limit); apply(); } }, "Previous"),
        el("span", {}, totalCount ? `${offset + 1}–${Math.min(offset + limit, totalCount)} of ${totalCount}` : "no jobs"),
        el("button", { type: "button", class: "secondary", disabled: offset + limit >= totalCount, onclick: () => { offset += limit; apply(); } }, "Next"),
      );
    });
  }
  await update();
  return { update };
}

const TASK_COLOURS = {
  completed: "#2e7d32", "in-progress": "#1f62b0", queued: "#6b7480", pending: "#9aa3ad", init: "#9aa3ad",
  suspend: "#b7791f", "failed-permanent": "#b3261e",
};

async function jobPage(id) {
  document.title = "Job · Perdure";
  const head = el("div");
  const graph = el("div", { id: "dag", role: "img", "aria-label": "The job's tasks as a graph" });
  const tasksBox = el("div", { id: "tasks" });
  const workBox = el("div", { id: "workunits" });
  const logBox = el("div", { id: "log" });
  const eventsBox = el("div", { id: "events" });
  const outputsBox = el("div", { id: "outputs" });
  main.replaceChildren(head, el("div", { class: "split" },
    el("section", {}, el("h2", {}, "Tasks"), graph, tasksBox),
    el("section", {}, el("h2", {}, "Events"), eventsBox, el("h2", {}, "Outputs"), outputsBox)),
  el("h2", {}, "Workunits"), workBox, logBox);
  let cy = null;
  let shownLog = null;

  const act = (label, query, { confirmText, method = "PUT", danger } = {}) =>
    el("button", {
      type: "button",
      class: danger ? "danger" : "secondary",
      "data-op": label.toLowerCase(),
      onclick: async () => {
        if (!confirm(confirmText || `${label} this job?`)) return;
        try {
          await api(method, `/job/${encodeURIComponent(id)}${query ? `?${query}` : ""}`);
          toast(`${label}: done`);
          if (method === "DELETE") return navigate("/ui/jobs");
          await update();
        } catch (e) {
          toast(`${label} failed: ${e.message}`);
        }
      },
    }, label);

  async function showLog(wuid, kind) {
    shownLog = { wuid, kind };
    await guarded(logBox, async () => {
      const reply = await fetch(`/work/${encodeURIComponent(wuid)}?report=${kind}`, { headers: headers() });
      const doc = await reply.json().catch(() => ({}));
      const text = reply.ok ? (typeof doc.data === "string" ? doc.data : JSON.stringify(doc.data, null, 2)) : (doc.error || []).join("; ");
      logBox.replaceChildren(el("h2", {}, `${kind} of ${wuid.split("_").slice(1).join("_")}`), el("pre", { class: "log", id: `log-${kind}`, tabindex: "0" }, text || "(empty)"));
    });
  }

  async function update() {
    const job = await get(`/job/${encodeURIComponent(id)}`);
    const report = await get(`/job/${encodeURIComponent(id)}?report`);
    const perf = await get(`/job/${encodeURIComponent(id)}?perf`).catch(() => ({}));
    document.title = `${job.info.name || id} · Perdure`;
    const clientgroup = el("input", { id: "clientgroup", "aria-label": "New client group", placeholder: "client group", size: 12 });
    const recompute = el("select", { id: "recompute-task", "aria-label": "Task to recompute" }, job.tasks.map((t) => el("option", { value: t.task_name || t.taskid.split("_").pop() }, t.task_name || t.taskid)));
    head.replaceChildren(
      el("h1", {}, job.info.name || id, " ", badge(job.state)),
      el("dl", { class: "grid2" },
        el("dt", {}, "Id"), el("dd", { class: "mono" }, id),
        el("dt", {}, "Project"), el("dd", {}, job.info.project || "—"),
        el("dt", {}, "User"), el("dd", {}, job.owner ? `${job.owner} (label: ${job.info.user})` : job.info.user || "—"),
        el("dt", {}, "Submitted"), el("dd", {}, when(job.info.submittime)),
        el("dt", {}, "Client groups"), el("dd", {}, job.info.clientgroups || "any"),
        job.error ? [el("dt", {}, "Error"), el("dd", { class: "error", id: "job-error" }, describeError(job.error))] : null,
      ),
      el("div", { class: "toolbar", id: "operations" },
        act("Suspend", "suspend"), act("Resume", "resume"), act("Resubmit", "resubmit", { confirmText: "Run the whole job again from the start?" }),
        el("span", {}, recompute, " ", el("button", { type: "button", class: "secondary", "data-op": "recompute", onclick: async () => {
          if (!confirm(`Recompute task ${recompute.value} and everything after it?`)) return;
          try { await api("PUT", `/job/${encodeURIComponent(id)}?recompute=${encodeURIComponent(recompute.value)}`); toast("recompute: done"); await update(); } catch (e) { toast(`recompute failed: ${e.message}`); }
        } }, "Recompute")),
        el("span", {}, clientgroup, " ", el("button", { type: "button", class: "secondary", "data-op": "clientgroup", onclick: async () => {
          if (!clientgroup.value || !confirm(`Move the job to client group ${clientgroup.value}?`)) return;
          try { await api("PUT", `/job/${encodeURIComponent(id)}?clientgroup=${encodeURIComponent(clientgroup.value)}`); toast("client group changed"); await update(); } catch (e) { toast(`failed: ${e.message}`); }
        } }, "Change group")),
        act("Delete", "", { method: "DELETE", danger: true, confirmText: "Delete this job?" }),
      ),
    );
    drawGraph(job);
    const byTask = Object.fromEntries(report.tasks.map((t) => [t.taskid, t]));
    tasksBox.replaceChildren(table(["Task", "State", "Progress", "Depends on"], job.tasks.map((t) => {
      const total = t.totalwork || 1;
      const done = total - (t.remainwork ?? total);
      return el("tr", { "data-task": t.task_name || t.taskid },
        el("td", {}, t.task_name || t.taskid),
        el("td", {}, badge(t.state)),
        el("td", {}, el("div", { class: "progress", role: "progressbar", "aria-label": `${t.task_name} progress`, "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": done }, el("div", { style: `width:${(100 * done) / total}%` })), ` ${done}/${total}`),
        el("td", {}, (t.dependsOn || []).map((d) => d.split("_").pop()).join(", ")),
      );
    }), { id: "task-table" }));
    const stats = perf.work_stats || {};
    const rows = [];
    for (const t of report.tasks) {
      for (const wu of byTask[t.taskid]?.workunits || []) {
        const s = stats[wu.wuid] || {};
        rows.push(el("tr", { "data-wu": wu.wuid },
          el("td", { class: "mono" }, `${t.taskid.split("_").slice(1).join("_")} #${wu.rank}`),
          el("td", {}, badge(wu.state)),
          el("td", { class: "mono" }, s.client_id || ""),
          el("td", { class: "num" }, wu.failed),
          el("td", { class: "num" }, s.runtime !== undefined ? seconds(s.runtime) : ""),
          el("td", { class: "num" }, s.exit_code ?? ""),
          el("td", { class: "num" }, s.max_memory_total_rss ? bytes(s.max_memory_total_rss) : ""),
          el("td", {}, ["stdout", "stderr", "worknotes"].map((kind) => el("button", { type: "button", class: "secondary", "data-log": kind, onclick: () => showLog(wu.wuid, kind) }, kind))),
        ));
      }
    }
    workBox.replaceChildren(table(["Workunit", "State", "Client", "Failures", { label: "Runtime", num: true }, { label: "Exit", num: true }, { label: "Peak memory", num: true }, "Logs"], rows, { id: "workunit-table" }));
    const spot = report.spot || {};
    eventsBox.replaceChildren(
      el("p", { id: "spot-summary" }, `Checkpoints ${spot.checkpoints || 0} · interruptions survived ${spot.spotProtection || 0} · run time saved ${seconds(spot.timeSaved)}`),
      table(["Time", "Event"], (report.events || []).slice(-200).reverse().map((e) => el("tr", {}, el("td", {}, when(e.time)), el("td", {}, el("span", { class: "mono" }, e.code), " ", e.message))), { id: "event-table" }),
    );
    try {
      const outputs = await get(`/job/${encodeURIComponent(id)}/outputs`);
      outputsBox.replaceChildren(table(["Task", "File", { label: "Size", num: true }], outputs.map((o) => el("tr", {},
        el("td", {}, o.task),
        el("td", {}, el("a", { href: o.url, "data-download": o.filename, onclick: (e) => { e.preventDefault(); download(o.url, o.filename); } }, o.filename)),
        el("td", { class: "num" }, bytes(o.size)),
      )), { id: "output-table" }));
    } catch (e) {
      outputsBox.replaceChildren(el("p", { class: "muted" }, e.message));
    }
    if (shownLog) await showLog(shownLog.wuid, shownLog.kind);
  }

  function drawGraph(job) {
    const nodes = job.tasks.map((t) => ({ data: { id: t.taskid, label: `${t.task_name || t.taskid.split("_").pop()}\n${t.state}`, colour: TASK_COLOURS[t.state] || "#6b7480", state: t.state } }));
    const ids = new Set(job.tasks.map((t) => t.taskid));
    const edges = [];
    for (const t of job.tasks) {
      const from = new Set([...(t.dependsOn || []), ...(t.inputs || []).filter((i) => i.origin).map((i) => `${job.id}_${i.origin}`)]);
      for (const d of from) if (ids.has(d)) edges.push({ data: { id: `${d}->${t.taskid}`, source: d, target: t.taskid } });
    }
    graph.dataset.states = JSON.stringify(Object.fromEntries(job.tasks.map((t) => [t.task_name || t.taskid.split("_").pop(), t.state])));
    if (cy && cy.nodes().length === nodes.length) {
      for (const n of nodes) cy.getElementById(n.data.id).data(n.data);
      return;
    }
    cy?.destroy();
    cy = cytoscape({
      container: graph,
      elements: [...nodes, ...edges],
      layout: { name: "dagre", rankDir: "LR", nodeSep: 30, rankSep: 70 },
      style: [
        { selector: "node", style: { shape: "round-rectangle", width: 130, height: 46, "background-color": "data(colour)", label: "data(label)", color: "#fff", "text-wrap": "wrap", "text-valign": "center", "font-size": 12 } },
        { selector: "edge", style: { width: 2, "line-color": "#8a93a1", "target-arrow-color": "#8a93a1", "target-arrow-shape": "triangle", "curve-style": "bezier" } },
      ],
      userZoomingEnabled: true,
      autoungrabify: true,
    });
  }

  await update();
  return { update, dispose: () => cy?.destroy() };
}

function describeError(error) {
  if (typeof error === "string") return error;
  const parts = [error.servernotes, error.apperror && `the program said: ${error.apperror.trim()}`, error.workfailed && `workunit ${error.workfailed}`];
  return parts.filter(Boolean).join(" · ") || JSON.stringify(error);
}

async function download(url, filename) {
  const reply = await fetch(url, { headers: headers() });
  if (!reply.ok) return toast(`download failed: ${reply.status}`);
  const blob = await reply.blob();
  const a = el("a", { href: URL.createObjectURL(blob), download: filename });
  document.body.append(a);
  a.click();
  a.remove();
}

async function nodesPage() {
  document.title = "Nodes · Perdure";
  const nodesBox = el("div", { id: "nodes" });
  const clientsBox = el("div", { id: "clients" });
  main.replaceChildren(el("h1", {}, "Nodes and clients"), el("h2", {}, "Nodes"), nodesBox, el("h2", {}, "Clients"), clientsBox);
  async function update() {
    await guarded(nodesBox, async () => {
      const list = await get("/api/v1/node");
      nodesBox.replaceChildren(table(["Node", "Host", "Cloud", "Instance", "Zone", "Market", "Cores", "Memory", "Checkpoint engines", "Last heartbeat"], list.map((n) => el("tr", { "data-node": n.id },
        el("td", {}, link(`/ui/nodes/${encodeURIComponent(n.id)}`, n.id)),
        el("td", {}, n.hostName),
        el("td", {}, n.cloud || "—"),
        el("td", {}, n.instance?.instanceType || "—"),
        el("td", {}, n.instance?.availabilityZone || n.instance?.zone || "—"),
        el("td", {}, n.instance?.payType || "—"),
        el("td", { class: "num" }, n.cores),
        el("td", { class: "num" }, `${n.memoryInMB} MB`),
        el("td", {}, engines(n)),
        el("td", {}, when(n.lastHeartbeat)),
      )), { id: "node-table" }));
    });
    await guarded(clientsBox, async () => {
      const list = await get("/client");
      clientsBox.replaceChildren(table(["Client", "Node", "Group", "Status", "Current work", "Done", "Failed", "Last heartbeat", ""], list.map((c) => el("tr", { "data-client": c.id },
        el("td", { class: "mono" }, c.id),
        el("td", {}, link(`/ui/nodes/${encodeURIComponent(c.node_id)}`, c.node_id)),
        el("td", {}, c.group),
        el("td", {}, badge(c.suspended ? "suspended" : c.busy ? "busy" : c.online ? "idle" : "offline")),
        el("td", { class: "mono" }, (c.current_work?.data || []).map((w) => (typeof w === "string" ? w : w.wuid || w.id)).join(", ")),
        el("td", { class: "num" }, c.total_completed),
        el("td", { class: "num" }, c.total_failed),
        el("td", {}, when(c.last_heartbeat)),
        el("td", {}, el("button", {
          type: "button",
          class: "secondary",
          onclick: async () => {
            try { await api("PUT", `/client/${encodeURIComponent(c.id)}?${c.suspended ? "resume" : "suspend"}`); await update(); } catch (e) { toast(e.message); }
          },
        }, c.suspended ? "Resume" : "Suspend")),
      )), { id: "client-table" }));
    });
  }
  await update();
  return { update };
}

function engines(n) {
  const list = n.checkpointEngines || n.engines;
  if (Array.isArray(list)) return list.map((e) => (typeof e === "string" ? e : `${e.name}${e.available === false ? ` (no: ${e.reason})` : ""}`)).join(", ");
  if (list && typeof list === "object") return Object.entries(list).map(([k, v]) => (v === true || v?.available ? k : `${k} (no${v?.reason ? `: ${v.reason}` : ""})`)).join(", ");
  return [n.checkpointEngine, n.criuProblem ? `criu: ${n.criuProblem}` : null].filter(Boolean).join(" · ");
}

async function nodePage(id) {
  document.title = `Node ${id} · Perdure`;
  const facts = el("div", { id: "facts" });
  const files = el("div", { id: "files" });
  const viewer = el("div", { id: "viewer" });
  main.replaceChildren(el("h1", {}, `Node ${id}`), facts, el("h2", {}, "Log files"), files, viewer);
  async function update() {
    await guarded(facts, async () => {
      const node = (await get("/api/v1/node")).find((n) => n.id === id);
      if (!node) return facts.replaceChildren(el("p", { class: "muted" }, "This node is not alive (no heartbeat within the node TTL)."));
      const rows = Object.entries({ ...node, ...Object.fromEntries(Object.entries(node.instance || {}).map(([k, v]) => [`instance.${k}`, v])) }).filter(([k]) => k !== "instance");
      facts.replaceChildren(el("dl", { class: "grid2", id: "node-facts" }, rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))])));
    });
    await guarded(files, async () => {
      const list = await get(`/api/v1/nodes/${encodeURIComponent(id)}/files`);
      const entries = Array.isArray(list) ? list : list.files || [];
      files.replaceChildren(table(["File", "Size", "Shipped"], entries.map((f) => {
        const path = typeof f === "string" ? f : f.path;
        return el("tr", {},
          el("td", {}, el("button", { type: "button", class: "secondary", "data-file": path, onclick: () => view(path) }, path)),
          el("td", { class: "num" }, f.size !== undefined ? bytes(f.size) : ""),
          el("td", {}, when(f.updated || f.modified || f.time)),
        );
      }), { id: "file-table" }));
    });
  }
  async function view(path) {
    const reply = await fetch(`/nodes/${encodeURIComponent(id)}${path}`, { headers: headers() });
    const text = await reply.text();
    viewer.replaceChildren(el("h2", {}, path), el("pre", { class: "log", id: "file-view", tabindex: "0" }, reply.ok ? text : `${reply.status}: ${text}`));
  }
  await update();
  return { update };
}

async function metricsPage() {
  document.title = "Metrics · Perdure";
  const defs = await get("/api/v1/metric");
  const metricIds = [...new Set(defs.map((d) => d.definition.id))];
  const params = new URLSearchParams(location.search);
  const metric = el("select", { id: "m-metric" }, metricIds.map((m) => el("option", { value: m, selected: params.get("metric") === m }, defs.find((d) => d.definition.id === m).name)));
  const object = el("select", { id: "m-object" });
  const level = el("select", { id: "m-level" }, ["1m", "30m", "24h"].map((l) => el("option", { value: l, selected: params.get("interval") === l }, l)));
  const period = el("select", { id: "m-period" }, Object.keys(PERIODS).map((p) => el("option", { value: p, selected: (params.get("period") || "1h") === p }, `last ${p}`)));
  const canvas = el("canvas", { id: "chart", role: "img", "aria-label": "The chosen metric over time" });
  const summaryBox = el("div", { id: "summary" });
  let chart = null;
  const fillObjects = () => {
    const keep = object.value || params.get("object");
    object.replaceChildren(...defs.filter((d) => d.definition.id === metric.value).map((d) => el("option", { value: d.object.id, selected: d.object.id === keep }, d.object.name)));
  };
  fillObjects();
  metric.addEventListener("change", () => { fillObjects(); update(); });
  for (const s of [object, level, period]) s.addEventListener("change", update);
  main.replaceChildren(
    el("h1", {}, "Metrics"),
    el("div", { class: "toolbar" }, el("label", {}, "Metric", metric), el("label", {}, "Object", object), el("label", {}, "Level", level), el("label", {}, "Range", period)),
    el("div", { class: "chart-box" }, canvas),
    el("h2", {}, "Summary per queue"), summaryBox,
  );
  async function update() {
    history.replaceState(null, "", `/ui/metrics?${new URLSearchParams({ metric: metric.value, object: object.value, interval: level.value, period: period.value })}`);
    const end = new Date();
    const start = new Date(end - PERIODS[period.value] * 1000);
    const range = `start=${start.toISOString()}&end=${end.toISOString()}`;
    const series = await get(`/api/v1/metricValue/${encodeURIComponent(object.value)}/${encodeURIComponent(metric.value)}?interval=${level.value}&${range}`);
    const points = (series.points || []).map((p) => ({ x: new Date(p.time).toLocaleString(), y: p.value }));
    canvas.dataset.points = String(points.length);
    if (chart) chart.destroy();
    chart = new Chart(canvas, {
      type: "bar",
      data: { labels: points.map((p) => p.x), datasets: [{ label: metric.selectedOptions[0]?.textContent || metric.value, data: points.map((p) => p.y), backgroundColor: "#2f6fb5" }] },
      options: { animation: false, maintainAspectRatio: false, scales: { y: { beginAtZero: true } } },
    });
    await guarded(summaryBox, async () => {
      const summary = await get(`/api/v1/metrics/summary?${range}`);
      const names = Object.keys(summary.items || {});
      const queues = [...new Set(names.flatMap((n) => summary.items[n].map((i) => i.metaData.queueName)))];
      summaryBox.replaceChildren(table(["Queue", ...names.map((n) => ({ label: n, num: true }))], queues.map((q) => el("tr", {}, el("td", {}, q), names.map((n) => {
        const v = summary.items[n].find((i) => i.metaData.queueName === q)?.point.value ?? 0;
        return el("td", { class: "num" }, /time|runtime/i.test(n) ? seconds(v) : Number(v.toFixed ? v.toFixed(2) : v));
      }))), { id: "summary-table" }));
    });
  }
  await update();
  return { update, dispose: () => chart?.destroy() };
}

function flatten(doc, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(doc)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length && !["customTags", "pipelineExpire"].includes(k)) flatten(v, key, out);
    else out[key] = v;
  }
  return out;
}

const toText = (v) => (v === null || v === undefined ? "" : Array.isArray(v) ? v.join(",") : typeof v === "object" ? Object.entries(v).map(([a, b]) => `${a}:${b}`).join(",") : String(v));

async function settingsPage() {
  document.title = "Settings · Perdure";
  if (!session.admin) {
    main.replaceChildren(el("h1", {}, "Settings"), el("p", { class: "error" }, "Only admins can change settings."));
    return {};
  }
  const configBox = el("form", { id: "config-form" });
  const logBox = el("form", { id: "log-form" });
  const securityBox = el("div", { id: "security" });
  const groupsBox = el("div", { id: "cgroups" });
  main.replaceChildren(el("h1", {}, "Settings"), el("h2", {}, "Configuration"), configBox, el("h2", {}, "Logging"), logBox, el("h2", {}, "Security"), securityBox, el("h2", {}, "Client groups and worker tokens"), groupsBox);

  await guarded(configBox, async () => {
    const config = flatten(await get("/api/v1/config"));
    const fixed = new Set(["id", "perdure.databaseURL", "perdure.dataDir"]);
    const inputs = {};
    const errors = {};
    const fields = Object.entries(config).filter(([k]) => !k.startsWith("security.cognito") && !k.startsWith("log.")).map(([key, value]) => {
      const id = `cfg-${key.replace(/[^A-Za-z0-9]/g, "-")}`;
      const input = typeof value === "boolean"
        ? el("select", { id, name: key }, el("option", { value: "true", selected: value }, "true"), el("option", { value: "false", selected: !value }, "false"))
        : el("input", { id, name: key, value: toText(value), disabled: fixed.has(key), "aria-describedby": `${id}-error` });
      inputs[key] = { input, original: typeof value === "boolean" ? String(value) : toText(value) };
      errors[key] = el("div", { class: "error", id: `${id}-error`, "data-error-for": key });
      return el("div", { class: "field" }, el("label", { for: id }, key), input, errors[key]);
    });
    const status = el("p", { role: "status", id: "config-status" });
    configBox.replaceChildren(...fields, el("p", {}, el("button", { type: "submit" }, "Save changes")), status);
    configBox.onsubmit = async (e) => {
      e.preventDefault();
      for (const box of Object.values(errors)) box.textContent = "";
      const kvMap = {};
      for (const [key, { input, original }] of Object.entries(inputs)) if (!input.disabled && input.value !== original) kvMap[key] = input.value;
      if (!Object.keys(kvMap).length) return (status.textContent = "Nothing changed.");
      try {
        await api("PUT", "/api/v1/configKV", { kvMap });
        for (const key of Object.keys(kvMap)) inputs[key].original = inputs[key].input.value;
        status.textContent = `Saved ${Object.keys(kvMap).join(", ")}.`;
      } catch (err) {
        status.textContent = `Not saved: ${err.message}`;
        for (const [key, message] of Object.entries(err.fields || {})) if (errors[key]) errors[key].textContent = message;
      }
    };
  });

  await guarded(logBox, async () => {
    const logConfig = await get("/api/v1/log/config");
    const level = el("select", { id: "log-level", name: "level" }, ["debug", "info", "warn", "error"].map((l) => el("option", { value: l, selected: logConfig.level === l }, l)));
    const size = el("input", { id: "log-size", name: "maxSizeMB", type: "number", value: logConfig.maxSizeMB });
    const backups = el("input", { id: "log-backups", name: "maxBackups", type: "number", value: logConfig.maxBackups });
    const status = el("p", { role: "status" });
    logBox.replaceChildren(
      el("div", { class: "field" }, el("label", { for: "log-level" }, "level"), level),
      el("div", { class: "field" }, el("label", { for: "log-size" }, "maxSizeMB"), size),
      el("div", { class: "field" }, el("label", { for: "log-backups" }, "maxBackups"), backups),
      el("p", {}, el("button", { type: "submit" }, "Save logging")), status,
    );
    logBox.onsubmit = async (e) => {
      e.preventDefault();
      try {
        await api("PUT", "/api/v1/log/config", { ...logConfig, level: level.value, maxSizeMB: Number(size.value), maxBackups: Number(backups.value) });
        status.textContent = "Saved.";
      } catch (err) {
        status.textContent = `Not saved: ${err.message}`;
      }
    };
  });

  await guarded(securityBox, async () => {
    const cognito = await get("/api/v1/security/cognito");
    securityBox.replaceChildren(el("dl", { class: "grid2" }, Object.entries(cognito).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, toText(v) || "—")])),
      el("p", { class: "muted" }, "Security is turned on or re-pointed with an admin's token: perdure security enable (docs/security.md)."));
  });

  async function groups() {
    await guarded(groupsBox, async () => {
      const list = await get("/cgroup");
      const name = el("input", { id: "cg-name", "aria-label": "New group name", placeholder: "group name" });
      const shown = el("div", { id: "cg-token", role: "status" });
      const reveal = (doc) => {
        const token = doc?.token || doc?.data?.token;
        shown.replaceChildren(token ? el("p", { class: "notice" }, "New token (shown once, keep it now): ", el("code", {}, token)) : "");
      };
      groupsBox.replaceChildren(
        table(["Group", "Token", ""], list.map((g) => el("tr", {},
          el("td", {}, g.name),
          el("td", {}, g.has_token || g.token ? "set" : "none"),
          el("td", {},
            el("button", { type: "button", class: "secondary", "data-group": g.name }, "New token"),
          ),
        )), { id: "cgroup-table" }),
        el("div", { class: "toolbar" }, name, el("button", { type: "button", onclick: async () => {
          if (!name.value) return;
          try { const reply = await api("POST", `/cgroup/${encodeURIComponent(name.value)}`); await groups(); reveal(reply.data); } catch (err) { toast(err.message); }
        } }, "Create group")),
        shown,
      );
      for (const button of groupsBox.querySelectorAll("tbody button")) {
        const row = button.closest("tr");
        const g = list[[...row.parentElement.children].indexOf(row)];
        button.onclick = async () => {
          if (!confirm(`Issue a new token for ${g.name}? The old one stops working.`)) return;
          try { reveal((await api("PUT", `/cgroup/${encodeURIComponent(g.id || g.name)}/token`)).data); } catch (err) { toast(err.message); }
        };
      }
    });
  }
  await groups();
  return {};
}

// ---- routing ------------------------------------------------------------------------------------------

const ROUTES = [
  [/^\/ui\/?$/, "overview", overview],
  [/^\/ui\/jobs\/?$/, "jobs", jobs],
  [/^\/ui\/jobs\/([^/]+)$/, "jobs", jobPage],
  [/^\/ui\/nodes\/?$/, "nodes", nodesPage],
  [/^\/ui\/nodes\/([^/]+)$/, "nodes", nodePage],
  [/^\/ui\/metrics\/?$/, "metrics", metricsPage],
  [/^\/ui\/settings\/?$/, "settings", settingsPage],
];

async function route() {
  current?.dispose?.();
  current = null;
  if (session.auth.enabled && !session.token) return showSignIn();
  const path = location.pathname;
  for (const [pattern, nav, page] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    for (const a of document.querySelectorAll("nav a")) a.toggleAttribute("aria-current", a.dataset.nav === nav) || a.removeAttribute("aria-current");
    document.querySelector(`nav a[data-nav="${nav}"]`)?.setAttribute("aria-current", "page");
    main.replaceChildren(el("p", {}, "Loading…"));
    main.removeAttribute("data-ready");
    try {
      current = await page(...match.slice(1).map(decodeURIComponent));
      main.dataset.ready = "1"; // the page has its data: what tests and screen readers wait for
    } catch (err) {
      if (err.status !== 401) main.replaceChildren(el("h1", {}, "Something went wrong"), el("p", { class: "error", role: "alert" }, err.status === 404 ? `Not found: ${err.message}` : err.message));
    }
    return;
  }
  document.title = "Not found · Perdure";
  main.replaceChildren(el("h1", {}, "Not found"), el("p", {}, "There is no such page. "), link("/ui/", "Go to the overview"));
}

function navigate(href) {
  history.pushState(null, "", href);
  route();
  main.focus();
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[href^='/ui']");
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey || a.target || a.hasAttribute("download")) return;
  e.preventDefault();
  navigate(a.getAttribute("href"));
});
window.addEventListener("popstate", route);

async function start() {
  session.auth = await fetch("/ui/auth.json").then((r) => r.json()).catch(() => ({ enabled: false }));
  if (location.pathname === "/ui/callback") {
    try {
      await finishLogin();
    } catch (err) {
      whoAmI();
      return showSignIn(`Sign-in failed: ${err.message}`);
    }
  }
  if (!session.auth.enabled) session.token = null;
  whoAmI();
  await route();
  if (!session.auth.enabled || session.token) listen();
}

start();
