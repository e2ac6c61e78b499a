// The console's only script: live updates over Server-Sent Events, the new-alert banner,
// its tone and the tab title's count, the live ages and stale markers, and the decisions
// (buttons and keyboard shortcuts). Rows, panels and banners are rendered by the server
// (escaped by Jinja2) and fetched as fragments; nothing a device sent is ever turned into
// markup here. No inline script anywhere: the Content-Security-Policy forbids it.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";
  const mayAlerts = body.dataset.alerts === "1";
  const staleS = Number(body.dataset.staleS || 120);
  // The server's clock, as the page was rendered: ages agree with the server's, whatever
  // this computer's clock says.
  const skew = body.dataset.now ? Number(body.dataset.now) - Date.now() / 1000 : 0;
  const serverNow = () => Date.now() / 1000 + skew;

  async function fragment(url) {
    const r = await fetch(url, { credentials: "same-origin" });
    if (!r.ok) return null;
    const tpl = document.createElement("template");
    tpl.innerHTML = (await r.text()).trim();  // server-rendered, autoescaped HTML
    return tpl.content.firstElementChild;
  }

  // Each cell labelled with its column's heading: on a phone, tables are shown as cards.
  function labelRow(row) {
    const table = row.closest("table");
    const head = table && table.tHead && table.tHead.rows[0];
    if (!head) return;
    Array.from(row.cells).forEach((td, i) => {
      const th = head.cells[i];
      if (th && !td.dataset.label) td.dataset.label = th.textContent.trim();
    });
  }
  function labelRows(tbody) {
    for (const row of tbody.rows) labelRow(row);
  }
  for (const table of document.querySelectorAll("main table")) {
    for (const tbody of table.tBodies) labelRows(tbody);
  }

  // -- ages ("42 s ago") and stale markers, every second ----------------------------------

  function ago(s) {
    s = Math.max(0, Math.floor(s));
    if (s < 120) return s + " s ago";
    if (s < 7200) return Math.floor(s / 60) + " min ago";
    if (s < 172800) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " days ago";
  }

  // Ages on the screen are written every second, the others when they come into view:
  // a long live queue is not laid out again every second. Only what changed is written.
  const onScreen = new Set();
  const seen = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
    const now = serverNow();
    for (const e of entries) {
      if (e.isIntersecting) { onScreen.add(e.target); age(e.target, now); }
      else onScreen.delete(e.target);
    }
  }) : null;

  function age(t, now) {
    const text = ago(now - Number(t.dataset.ts));
    if (t.textContent !== text) t.textContent = text;
  }

  function watch(root) {
    for (const t of root.querySelectorAll("time.age[data-ts]")) {
      if (seen) seen.observe(t);
      else onScreen.add(t);
    }
  }

  function forget(root) {
    for (const t of root.querySelectorAll("time.age[data-ts]")) {
      onScreen.delete(t);
      if (seen) seen.unobserve(t);
    }
  }

  // Put a freshly fetched element in the place of another (or in a parent): its ages are
  // written at once and watched, the old one's are forgotten.
  function swap(old, fresh) {
    if (old) { forget(old); old.replaceWith(fresh); }
    watch(fresh);
    tick(fresh);
  }

  function tick(root) {
    const now = serverNow();
    if (root) {
      for (const t of root.querySelectorAll("time.age[data-ts]")) age(t, now);
    }
    for (const t of onScreen) {
      if (t.isConnected) age(t, now);
      else { onScreen.delete(t); if (seen) seen.unobserve(t); }
    }
    for (const el of (root || document).querySelectorAll("[data-captured][data-decided='0']")) {
      const stale = now - Number(el.dataset.captured) > staleS;
      if (el.classList.contains("stale") === stale) continue;
      el.classList.toggle("stale", stale);
      const flag = el.querySelector(".stale-flag");
      if (flag) flag.hidden = !stale;
    }
  }
  watch(document);
  tick(document);
  setInterval(() => tick(), 1000);

  // -- the tab title counts undecided alerts ----------------------------------------------

  const baseTitle = document.title.replace(/^\(\d+\) /, "");
  function setCount(n) {
    document.title = (n > 0 ? "(" + n + ") " : "") + baseTitle;
    body.dataset.undecided = String(n);
  }

  // -- the tone: generated here (Web Audio), no file; muted per user, remembered ----------

  const soundButton = document.getElementById("sound");
  const muteKey = "lfr-console:mute:" + (body.dataset.user || "");
  let muted = false;
  try { muted = localStorage.getItem(muteKey) === "1"; } catch (e) { muted = false; }
  let audio = null;
  let lastTone = 0;
  body.dataset.tones = "0";
  body.dataset.tonesEnded = "0";

  function audioContext() {
    if (!audio) {
      const AC = window.AudioContext || window.webkitAudioContext;
      if (!AC) return null;
      audio = new AC();
      audio.onstatechange = showSound;
    }
    return audio;
  }

  function showSound() {
    body.dataset.audio = audio ? audio.state : "none";
    body.dataset.muted = muted ? "1" : "0";
    if (!soundButton) return;
    soundButton.setAttribute("aria-pressed", muted ? "false" : "true");
    if (muted) soundButton.textContent = "Sound off";
    else if (!audio || audio.state !== "running") soundButton.textContent = "Sound blocked: click to allow";
    else soundButton.textContent = "Sound on";
  }

  // Browsers start audio only after a gesture on the page: the first click or key does it.
  function unlock() {
    if (muted || !mayAlerts) return;
    const c = audioContext();
    if (c && c.state !== "running") c.resume().then(showSound, showSound);
  }
  document.addEventListener("pointerdown", unlock, true);
  document.addEventListener("keydown", unlock, true);

  // Where the browser allows audio without a gesture (a kiosk started with
  // --autoplay-policy=no-user-gesture-required), the context runs at once.
  if (mayAlerts && !muted) audioContext();

  function tone() {
    const c = audio;
    if (muted || !c || c.state !== "running") { showSound(); return; }
    if (Date.now() - lastTone < 1500) return;
    lastTone = Date.now();
    const t = c.currentTime;
    const osc = c.createOscillator();
    const gain = c.createGain();
    osc.type = "sine";
    osc.frequency.setValueAtTime(880, t);
    osc.frequency.setValueAtTime(660, t + 0.2);
    gain.gain.setValueAtTime(0.0001, t);
    gain.gain.exponentialRampToValueAtTime(0.4, t + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.45);
    osc.connect(gain);
    gain.connect(c.destination);
    osc.onended = () => {
      body.dataset.tonesEnded = String(Number(body.dataset.tonesEnded) + 1);
    };
    osc.start(t);
    osc.stop(t + 0.5);
    body.dataset.tones = String(Number(body.dataset.tones) + 1);
  }

  if (soundButton) {
    soundButton.addEventListener("click", () => {
      if (!muted && audio && audio.state !== "running") { unlock(); return; }
      muted = !muted;
      try { localStorage.setItem(muteKey, muted ? "1" : "0"); } catch (e) { /* private mode */ }
      if (!muted) unlock();
      showSound();
    });
  }
  showSound();

  // -- the banner: on every page, while alerts wait for a decision -------------------------

  let bannerTimer = null;
  let raised = false;      // a new alert arrived: the banner says so until hidden or emptied
  let hiddenByUser = false;

  function refreshBanner(isNew) {
    if (!mayAlerts) return;
    if (isNew) { raised = true; hiddenByUser = false; }
    if (bannerTimer) return;  // a fetch is due: it will show this event too
    bannerTimer = setTimeout(async () => {
      bannerTimer = null;
      const el = await fragment("/fragments/alert-banner" + (raised ? "?new=1" : ""));
      if (!el) return;
      const n = Number(el.dataset.count || 0);
      if (n === 0) raised = false;
      if (hiddenByUser) el.hidden = true;
      const old = document.getElementById("alert-banner");
      if (!old) document.getElementById("banners").append(el);
      swap(old, el);
      setCount(n);
    }, 200);
  }

  // -- alert rows, the focused alert panel ------------------------------------------------

  async function alertRow(id, isNew) {
    const table = document.getElementById("alerts");
    if (!table) return;
    const row = await fragment("/fragments/alert/" + encodeURIComponent(id));
    if (!row) return;
    const dev = table.dataset.device, dep = table.dataset.deployment;
    if ((dev && row.dataset.device !== dev) || (dep && row.dataset.deployment !== dep)) return;
    const old = document.getElementById(row.id);
    if (old) swap(old, row);
    else if (isNew) { table.tBodies[0].prepend(row); swap(null, row); }
    const none = document.getElementById("no-alerts");
    if (none) none.remove();
    labelRow(row);
  }

  // The focus (the alert page, or the top of the queue) shows one alert large. On the
  // queue a new alert takes it unless the one there is undecided and not yet stale: the
  // alert an officer is judging does not change under their hand (the banner and the
  // tone say a newer one is waiting). After a change, the keys wait a second.
  async function panel(id, isNew) {
    const focus = document.getElementById("focus");
    if (!focus) return;
    const current = focus.querySelector(".panel");
    if (current && current.dataset.alertId !== id) {
      const judging = current.dataset.decided === "0" && !current.classList.contains("stale");
      if (!isNew || judging) return;
    }
    if (!current && !isNew) return;
    if (page === "alerts") {
      const table = document.getElementById("alerts");
      const dev = table ? table.dataset.device : "", dep = table ? table.dataset.deployment : "";
      if (isNew && (dev || dep)) {  // a filtered queue focuses only its own alerts
        const row = await fragment("/fragments/alert/" + encodeURIComponent(id));
        if (!row || (dev && row.dataset.device !== dev) || (dep && row.dataset.deployment !== dep)) return;
      }
    }
    const el = await fragment("/fragments/alert-panel/" + encodeURIComponent(id));
    if (!el) return;
    const now = focus.querySelector(".panel");
    if (now && now.dataset.alertId === el.dataset.alertId) {
      // The same alert, changed (a decision, the van's record): update its words in place;
      // its images stay (fetching them again would be another audited view).
      now.className = el.className;
      now.dataset.decided = el.dataset.decided;
      for (const sel of [".state-line", ".facts", ".decision-state"]) {
        const old = now.querySelector(sel), fresh = el.querySelector(sel);
        if (old && fresh) swap(old, fresh);
      }
    } else {
      el.dataset.keys = "off";  // no keypress meant for the alert before lands on this one
      setTimeout(() => { el.dataset.keys = "on"; }, 1000);
      if (now) swap(now, el);
      else { forget(focus); focus.replaceChildren(el); swap(null, el); }
    }
  }

  async function decide(container, decision) {
    if (container.dataset.sending === "1") return;
    container.dataset.sending = "1";
    const id = container.dataset.alertId;
    const result = container.querySelector(".result");
    if (result) result.textContent = "sending…";
    try {
      const r = await fetch("/api/alerts/" + encodeURIComponent(id) + "/adjudicate", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ decision: decision }),
      });
      let detail = "";
      try { detail = (await r.json()).detail || ""; } catch (e) { detail = ""; }
      if (r.ok) {
        await Promise.all([alertRow(id, false), panel(id, false)]);
        refreshBanner(false);
      } else if (result) {
        result.textContent = "not sent: " + (detail || r.status);
      }
    } finally {
      container.dataset.sending = "0";
    }
  }

  document.addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-decision]");
    if (button) {
      const container = button.closest("[data-alert-id]");
      if (container) decide(container, button.dataset.decision);
      return;
    }
    if (ev.target.closest(".banner-hide")) {
      hiddenByUser = true;
      raised = false;
      const banner = document.getElementById("alert-banner");
      if (banner) banner.hidden = true;
      return;
    }
    if (ev.target.id === "print") window.print();
  });

  // Keyboard: C confirmed, R rejected, N not stopped, for the alert in focus while it is
  // undecided (a decided one is changed with the buttons only: no stray key re-decides).
  const KEYS = { c: "confirmed", r: "rejected", n: "not_stopped" };
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat) return;
    if (ev.target.closest && ev.target.closest("input, select, textarea, [contenteditable]")) return;
    const decision = KEYS[(ev.key || "").toLowerCase()];
    if (!decision) return;
    const focused = document.querySelector("#focus .panel[data-decided='0'][data-keys='on']");
    if (!focused) return;
    const button = focused.querySelector('button[data-decision="' + decision + '"]');
    if (!button) return;
    ev.preventDefault();
    button.focus();
    button.click();
  });

  // Whenever the stream (re)connects, fetch the current rows: anything that changed
  // between the page's render and the stream's start (or while it was down) is shown.
  async function resync() {
    refreshBanner(false);
    const focused = document.querySelector("#focus .panel");
    if (focused) await panel(focused.dataset.alertId, false);
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
    forget(table.tBodies[0]);
    table.tBodies[0].replaceChildren(tpl.content);
    watch(table.tBodies[0]);
    if (table.tBodies[0].rows.length) {
      const none = document.getElementById("no-alerts");
      if (none) none.remove();
    }
    labelRows(table.tBodies[0]);
    tick();
  }

  async function deviceRow(id) {
    const table = document.getElementById("fleet");
    if (!table) return;
    const row = await fragment("/fragments/device/" + encodeURIComponent(id));
    if (!row) return;
    const old = document.getElementById(row.id);
    if (old) old.replaceWith(row);
    else table.tBodies[0].append(row);
    labelRow(row);
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
  const liveText = live ? live.querySelector(".live-text") : null;
  function setLive(on) {
    if (!live) return;
    live.classList.toggle("on", on);
    if (liveText) liveText.textContent = on ? "live" : "offline, reconnecting";
  }
  const source = new EventSource("/events");
  source.onopen = async () => {
    await resync();
    setLive(true);
    body.dataset.live = "1";
  };
  source.onerror = () => setLive(false);
  source.onmessage = (msg) => {
    let ev;
    try { ev = JSON.parse(msg.data); } catch (e) { return; }
    if (ev.type === "alert") {
      refreshBanner(true);
      if (mayAlerts) tone();
      if (page === "alerts") alertRow(ev.alert_id, true);
      panel(ev.alert_id, page === "alerts");
    } else if (ev.type === "alert_update") {
      refreshBanner(false);
      if (page === "alerts") alertRow(ev.alert_id, false);
      panel(ev.alert_id, false);
    } else if (page === "fleet" && ev.type === "device") {
      deviceRow(ev.device_id);
    }
    if (ev.type === "alarm") alarms();  // raised or cleared: every page shows it
    if (ev.type === "resync") resync();  // this page fell behind the stream
  };
})();
