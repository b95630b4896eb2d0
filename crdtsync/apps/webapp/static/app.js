// crdtsync reference app: the page's side of the /live websocket (see docs/webapp.md).
// Sends actions (forms, buttons, the Work offline switch) and applies pushes: the
// connection indicator and progress bar, live re-rendering of #main, and alerts.
"use strict";

(function () {
  let socket = null;
  let nextId = 1;
  const waiting = new Map();
  let refreshing = false;
  let refreshAgain = false;

  function connect() {
    socket = new WebSocket(`ws://${location.host}/live`);
    socket.addEventListener("message", (event) => receive(JSON.parse(event.data)));
    socket.addEventListener("open", () => {
      document.body.dataset.connected = "1";
    });
    socket.addEventListener("close", () => {
      document.body.dataset.connected = "0";
      for (const [, resolve] of waiting) {
        resolve({ ok: false, message: "The app is not running.", errors: {} });
      }
      waiting.clear();
      setTimeout(connect, 1000);
    });
  }

  function send(action, fields) {
    return new Promise((resolve) => {
      if (!socket || socket.readyState !== WebSocket.OPEN) {
        resolve({ ok: false, message: "The app is not reachable; try again.", errors: {} });
        return;
      }
      const id = nextId++;
      waiting.set(id, resolve);
      socket.send(JSON.stringify({ id, action, ...fields }));
    });
  }

  function receive(message) {
    if (message.type === "result") {
      const resolve = waiting.get(message.id);
      waiting.delete(message.id);
      if (resolve) resolve(message);
    } else if (message.type === "status") {
      showStatus(message);
    } else if (message.type === "changed") {
      refresh();
    } else if (message.type === "alert") {
      showAlert(message.items);
    }
  }

  // -- pushes --------------------------------------------------------------------------

  function showStatus(status) {
    const indicator = document.getElementById("connection");
    indicator.dataset.state = status.state;
    indicator.querySelector(".label").textContent = status.label;
    indicator.title = status.state === "offline" ? status.problem : "";
    const failure = document.getElementById("sync-failure");
    failure.querySelector(".detail").textContent = status.failure;
    failure.hidden = !status.failure;
    document.getElementById("work-offline").checked = status.working_offline;
    const bar = document.getElementById("sync-progress");
    if (status.progress) {
      const [done, total] = status.progress;
      bar.querySelector("progress").max = Math.max(total, 1);
      bar.querySelector("progress").value = done;
      bar.querySelector(".label").textContent = `Syncing ${done} of ${total}`;
      bar.hidden = false;
    } else {
      bar.hidden = true;
    }
    const waiting = Math.max(status.pending - status.attention, 0);
    setBadge(document.getElementById("pending-count"), waiting, `${waiting} pending`);
    const needs = status.attention === 1 ? "needs" : "need";
    const attention = document.getElementById("attention-count");
    setBadge(attention, status.attention, `${status.attention} ${needs} attention`);
    attention.hidden = !status.attention;
  }

  // A navigation badge: its number, and what it counts (tooltip and screen readers).
  function setBadge(badge, count, label) {
    badge.dataset.count = count;
    badge.firstChild.textContent = badge.id === "attention-count" ? `${count} ` : `${count}`;
    badge.title = label;
    badge.setAttribute("aria-label", label);
  }

  // Re-render the live parts of the page from the server (one fetch at a time).
  async function refresh() {
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    refreshing = true;
    try {
      const response = await fetch(location.href, { cache: "no-store" });
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      swap(fresh, "nav");
      if (document.body.dataset.live === "1" && fresh.body.dataset.live === "1") {
        swap(fresh, "main");
      }
    } catch (error) {
      // the app stopped: the socket's close handler reconnects
    } finally {
      refreshing = false;
      if (refreshAgain) {
        refreshAgain = false;
        refresh();
      }
    }
  }

  function swap(fresh, id) {
    const next = fresh.getElementById(id);
    const current = document.getElementById(id);
    if (next && current && next.innerHTML !== current.innerHTML) {
      current.innerHTML = next.innerHTML;
    }
  }

  function showAlert(items) {
    if (!items.length) return;
    const alert = document.getElementById("alert");
    const list = alert.querySelector(".alert-items");
    list.innerHTML = "";
    for (const item of items) {
      const li = document.createElement("li");
      li.dataset.record = item.record_id;
      li.dataset.status = item.status;
      const link = document.createElement("a");
      link.href = item.url;
      link.innerHTML = item.html; // escaped by the server (views.attention_item)
      li.appendChild(link);
      list.appendChild(li);
    }
    alert.hidden = false;
  }

  function toast(text, bad) {
    const box = document.getElementById("toast");
    box.textContent = text;
    box.classList.toggle("bad", Boolean(bad));
    box.hidden = !text;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => (box.hidden = true), 4000);
  }

  // -- actions -------------------------------------------------------------------------

  function showErrors(form, result) {
    for (const slot of form.querySelectorAll(".field-error")) {
      slot.textContent = "";
      slot.hidden = true;
    }
    for (const row of form.querySelectorAll("[data-field]")) row.classList.remove("invalid");
    const general = [];
    for (const [field, messages] of Object.entries(result.errors || {})) {
      const row = field && form.querySelector(`[data-field="${CSS.escape(field)}"]`);
      const slot = row && row.querySelector(".field-error");
      if (slot) {
        row.classList.add("invalid");
        slot.textContent = messages.join(" ");
        slot.hidden = false;
      } else {
        general.push(...messages.map((m) => (field ? `${field}: ${m}` : m)));
      }
    }
    const top = form.querySelector(".form-error");
    if (top) {
      const text = result.ok ? "" : [result.message, ...general].filter(Boolean).join(" ");
      top.textContent = text;
      top.hidden = !text;
    }
  }

  function formFields(form) {
    const values = {};
    const choices = {};
    for (const input of form.querySelectorAll("input, select, textarea")) {
      if (!input.name || input.readOnly || input.disabled) continue;
      if (input.type === "radio") {
        if (input.checked) choices[input.name.replace(/^choice:/, "")] = input.value;
      } else {
        values[input.name] = input.value;
      }
    }
    const fields = { values };
    if (form.dataset.object) fields.object = form.dataset.object;
    if (form.dataset.record) fields.record_id = form.dataset.record;
    if (form.dataset.action === "resolve") fields.choices = choices;
    return fields;
  }

  async function submit(form) {
    const button = form.querySelector("[type=submit]");
    if (button) button.disabled = true;
    const result = await send(form.dataset.action, formFields(form));
    if (button) button.disabled = false;
    showErrors(form, result);
    if (result.ok && result.redirect) location.assign(result.redirect);
  }

  async function press(button) {
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    const fields = {};
    if (button.dataset.record) fields.record_id = button.dataset.record;
    button.disabled = true;
    const result = await send(button.dataset.action, fields);
    button.disabled = false;
    if (result.ok && result.redirect) {
      location.assign(result.redirect);
    } else {
      toast(result.message, !result.ok);
    }
  }

  document.addEventListener("submit", (event) => {
    const form = event.target.closest("form[data-action]");
    if (!form) return;
    event.preventDefault();
    submit(form);
  });

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button && button.type === "button") {
      event.preventDefault();
      press(button);
      return;
    }
    if (event.target.closest(".alert-close")) {
      document.getElementById("alert").hidden = true;
    }
  });

  document.addEventListener("change", (event) => {
    const choice = event.target.name && event.target.name.startsWith("choice:");
    if (choice) {
      // A conflict's "Other" input is there only while "Other" is chosen.
      const custom = event.target.closest("tr[data-field]").querySelector(".custom");
      custom.hidden = event.target.value !== "custom";
      if (!custom.hidden) custom.querySelector("input, select, textarea").focus();
      return;
    }
    if (event.target.id === "work-offline") {
      send(event.target.checked ? "go_offline" : "go_online", {}).then((result) =>
        toast(result.message, !result.ok),
      );
    }
  });

  connect();
})();
