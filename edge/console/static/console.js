// The console's only script: live updates over Server-Sent Events and the adjudication
// buttons. Rows are rendered by the server (escaped by Jinja2) and fetched as fragments;
// nothing a device sent is ever turned into markup here.
"use strict";

(function () {
  const page = document.body.dataset.page;
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";

  async function fragment(url) {
    const r = await fetch(url, { credentials: "same-origin" });
    if (!r.ok) return null;
    const tpl = document.createElement("template");
    tpl.innerHTML = (await r.text()).trim();  // server-rendered, autoescaped HTML
    return tpl.content.firstElementChild;
  }

  async function alertRow(id, isNew) {
    const table = document.getElementById("alerts");
    if (!table) return;
    const row = await fragment("/fragments/alert/" + encodeURIComponent(id));
    if (!row) return;
    const dev = table.dataset.device, dep = table.dataset.deployment;
    if ((dev && row.dataset.device !== dev) || (dep && row.dataset.deployment !== dep)) return;
    const old = document.getElementById(row.id);
    if (old) old.replaceWith(row);
    else if (isNew) table.tBodies[0].prepend(row);
    const none = document.getElementById("no-alerts");
    if (none) none.remove();
  }

  async function deviceRow(id) {
    const table = document.getElementById("fleet");
    if (!table) return;
    const row = await fragment("/fragments/device/" + encodeURIComponent(id));
    if (!row) return;
    const old = document.getElementById(row.id);
    if (old) old.replaceWith(row);
    else table.tBodies[0].append(row);
  }

  document.addEventListener("click", async (ev) => {
    const button = ev.target.closest("button[data-decision]");
    if (button) {
      const row = button.closest("tr[data-alert-id]");
      const result = row.querySelector(".result");
      result.textContent = "sending…";
      const r = await fetch("/api/alerts/" + encodeURIComponent(row.dataset.alertId) + "/adjudicate", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ decision: button.dataset.decision }),
      });
      let detail = "";
      try { detail = (await r.json()).detail || ""; } catch (e) { detail = ""; }
      if (r.ok) { await alertRow(row.dataset.alertId, false); }
      else { result.textContent = "not sent: " + (detail || r.status); }
      return;
    }
    if (ev.target.id === "print") window.print();
  });

  // Whenever the stream (re)connects, fetch the current rows: anything that changed
  // between the page's render and the stream's start (or while it was down) is shown.
  async function resync() {
    let url = null, table = null;
    if (page === "alerts") {
      table = document.getElementById("alerts");
      const q = new URLSearchParams({ device: table.dataset.device, deployment: table.dataset.deployment });
      url = "/fragments/alerts?" + q.toString();
    } else if (page === "fleet") {
      table = document.getElementById("fleet");
      url = "/fragments/fleet";
    }
    if (!url || !table) return;
    const r = await fetch(url, { credentials: "same-origin" });
    if (!r.ok) return;
    const tpl = document.createElement("template");
    tpl.innerHTML = await r.text();  // server-rendered, autoescaped HTML
    table.tBodies[0].replaceChildren(tpl.content);
    if (table.tBodies[0].rows.length) {
      const none = document.getElementById("no-alerts");
      if (none) none.remove();
    }
  }

  async function alarms() {
    const box = document.getElementById("alarms");
    if (!box) return;
    const r = await fetch("/fragments/alarms", { credentials: "same-origin" });
    if (!r.ok) return;
    const tpl = document.createElement("template");
    tpl.innerHTML = await r.text();  // server-rendered, autoescaped HTML
    box.replaceChildren(tpl.content);
  }

  if (!csrf) return;  // not logged in: no stream
  const live = document.getElementById("live");
  const source = new EventSource("/events");
  source.onopen = async () => {
    await resync();
    if (live) live.classList.add("on");
    document.body.dataset.live = "1";
  };
  source.onerror = () => { if (live) live.classList.remove("on"); };
  source.onmessage = (msg) => {
    let ev;
    try { ev = JSON.parse(msg.data); } catch (e) { return; }
    if (page === "alerts") {
      if (ev.type === "alert") alertRow(ev.alert_id, true);
      else if (ev.type === "alert_update") alertRow(ev.alert_id, false);
    } else if (page === "fleet" && ev.type === "device") {
      deviceRow(ev.device_id);
    }
    if (ev.type === "alarm") alarms();  // raised or cleared: every page shows it
    if (ev.type === "resync") resync();  // this page fell behind the stream
  };
})();
