"use strict";
// The dashboard page: one WebSocket (/live) brings a sample of the cluster every second and
// carries this viewer's requests; the views switch on the URL's #fragment, without a reload.
// Every value from the cluster is put in the page as text (textContent), never as HTML.

const views = ["cluster", "topics", "groups", "messages"];
const pending = new Map();
let socket = null;
let nextRequestId = 1;
let reconnectDelayMs = 250;
let lastSample = null;
const charts = {};

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(shown(child)));
  }
  return node;
}

function shown(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(1);
  return String(value);
}

function numberCell(value) {
  return el("td", { class: "number" }, value);
}

function fillTable(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows);
}

// -- views --------------------------------------------------------------------------------------

function showView() {
  const name = views.includes(location.hash.slice(1)) ? location.hash.slice(1) : "cluster";
  for (const view of views) {
    document.getElementById(`view-${view}`).hidden = view !== name;
  }
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.view === name);
  }
  document.body.dataset.view = name;
  if (lastSample) drawCharts(lastSample);
}

// -- the live connection ------------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${location.host}/live`);
  socket.onopen = () => {
    reconnectDelayMs = 250;
  };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "hello") hello(message);
    else if (message.type === "sample") render(message);
    else if (message.type === "reply") answered(message);
  };
  socket.onclose = (event) => {
    setConnection(false);
    for (const [, callbacks] of pending) callbacks.reject(new Error("connection lost"));
    pending.clear();
    if (event.code === 4401) {
      location.assign("/login");
      return;
    }
    setTimeout(connect, reconnectDelayMs);
    reconnectDelayMs = Math.min(reconnectDelayMs * 2, 5000);
  };
}

function setConnection(live) {
  const badge = document.getElementById("connection");
  badge.textContent = live ? "live" : "reconnecting…";
  badge.classList.toggle("live", live);
}

function hello(message) {
  setConnection(true);
  document.getElementById("viewer").textContent = `signed in as ${message.viewer}` +
    (message.admin ? " (admin)" : "");
  for (const part of document.querySelectorAll(".admin-only")) part.hidden = !message.admin;
}

function ask(request) {
  const id = nextRequestId++;
  return new Promise((resolve, reject) => {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      reject(new Error("not connected"));
      return;
    }
    pending.set(id, { resolve, reject });
    socket.send(JSON.stringify({ id, ...request }));
  });
}

function answered(message) {
  const callbacks = pending.get(message.id);
  if (!callbacks) return;
  pending.delete(message.id);
  if (message.ok) callbacks.resolve(message.result);
  else callbacks.reject(new Error(message.error));
}

// -- rendering a sample -------------------------------------------------------------------------

function render(sample) {
  lastSample = sample;
  const problem = document.getElementById("problem");
  problem.hidden = !sample.problem;
  problem.textContent = sample.problem || "";
  document.getElementById("sample-version").textContent = sample.version;
  document.getElementById("sample-time").textContent =
    sample.time_ms ? new Date(sample.time_ms).toLocaleTimeString() : "–";
  renderCluster(sample);
  renderTopics(sample);
  renderGroups(sample);
  drawCharts(sample);
}

function renderCluster(sample) {
  fillTable("groups-table", (sample.groups || []).map((group) =>
    el("tr", { "data-group": group.group },
      el("td", {}, group.group),
      el("td", { "data-leader-of": group.group }, group.leader || "no leader"),
      numberCell(group.term),
      numberCell(group.commit_index),
      numberCell(group.entries_per_second))));
  fillTable("nodes-table", (sample.nodes || []).map((node) => {
    const down = node.role === "unreachable";
    return el("tr", {
      "data-node": node.id,
      "data-role": node.role,
      class: node.role === "leader" ? "leader" : down ? "down" : null,
    },
      el("td", {}, node.id),
      el("td", {}, node.group),
      el("td", { class: "state" }, node.state),
      el("td", { class: "role", title: node.problem || "" }, down ? `unreachable: ${node.problem}` : node.role),
      numberCell(node.term),
      el("td", {}, node.leader),
      numberCell(node.last_index),
      numberCell(node.commit_index),
      numberCell(node.applied_index),
      numberCell(node.commit_lag),
      numberCell(node.apply_lag),
      el("td", {}, node.address));
  }));
  const select = document.getElementById("transfer-group");
  const groups = (sample.groups || []).map((group) => group.group);
  if (select.options.length !== groups.length ||
      groups.some((group, index) => select.options[index].value !== group)) {
    select.replaceChildren(...groups.map((group) => el("option", { value: group }, group)));
  }
}

function renderTopics(sample) {
  const topics = sample.topics || [];
  fillTable("topics-table", topics.map((topic) =>
    el("tr", { "data-topic": topic.name },
      el("td", {}, topic.name),
      numberCell(topic.queues.length),
      numberCell(topic.messages),
      numberCell(topic.held),
      numberCell(topic.rate),
      el("td", {}, topic.fifo ? "yes" : "no"))));
  fillTable("queues-table", topics.flatMap((topic) => topic.queues.map((queue) =>
    el("tr", {},
      el("td", {}, topic.name),
      el("td", {}, queue.broker_group),
      numberCell(queue.queue_id),
      numberCell(queue.min_offset),
      numberCell(queue.max_offset)))));
}

function renderGroups(sample) {
  const groups = sample.consumer_groups || [];
  fillTable("consumer-groups-table", groups.map((group) =>
    el("tr", { "data-consumer-group": group.group },
      el("td", {}, group.group),
      el("td", {}, group.consumers.length ? group.consumers.join(", ") : "none"),
      numberCell(group.lag),
      numberCell(group.retrying),
      numberCell(group.dead_letters))));
  fillTable("lag-table", groups.flatMap((group) => group.queues.map((queue) =>
    el("tr", {},
      el("td", {}, group.group),
      el("td", {}, queue.topic),
      el("td", {}, queue.broker_group),
      numberCell(queue.queue_id),
      numberCell(queue.committed_offset),
      numberCell(queue.max_offset),
      numberCell(queue.lag)))));
}

// -- charts (uPlot) -----------------------------------------------------------------------------

const palette = ["#2f6fd6", "#d6452f", "#2f9e57", "#a15ad6", "#d69a2f", "#2fb5c9", "#6b6b6b", "#c92f8a"];

function drawCharts(sample) {
  const history = sample.history;
  if (!history || typeof uPlot === "undefined") return;
  const view = document.body.dataset.view;
  if (view === "cluster") drawChart("chart-cluster", history.times, history.groups, "entries/s");
  if (view === "topics") drawChart("chart-topics", history.times, history.topics, "messages/s");
}

function drawChart(id, times, series, unit) {
  const names = Object.keys(series).slice(0, palette.length);
  const data = [times, ...names.map((name) => series[name])];
  const key = names.join("\u0000");
  const holder = document.getElementById(id);
  let chart = charts[id];
  if (!chart || chart.key !== key) {
    if (chart) chart.plot.destroy();
    const options = {
      width: Math.max(480, Math.min(1100, holder.parentElement.clientWidth - 20)),
      height: 220,
      scales: { x: { time: true } },
      axes: [{}, { label: unit }],
      series: [{}, ...names.map((name, index) => ({
        label: name, stroke: palette[index], width: 2, spanGaps: false,
      }))],
    };
    chart = charts[id] = { key, plot: new uPlot(options, data, holder) };
  } else {
    chart.plot.setData(data);
  }
}

// -- forms: admin actions and message queries --------------------------------------------------

function localTimeMs(value) {
  return value ? String(new Date(value).getTime()) : "";
}

function formRequest(form) {
  const fields = Object.fromEntries(new FormData(form).entries());
  for (const name of ["to_time", "from_time"]) {
    if (name in fields) {
      fields[`${name}_ms`] = localTimeMs(fields[name]);
      delete fields[name];
    }
  }
  return fields;
}

function onAction(formId, action, describe) {
  const form = document.getElementById(formId);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const output = form.querySelector("output");
    output.classList.remove("error");
    output.textContent = "…";
    try {
      const result = await ask({ action, ...formRequest(form) });
      output.textContent = describe(result);
    } catch (error) {
      output.classList.add("error");
      output.textContent = error.message;
    }
  });
}

function timeText(ms) {
  return ms ? `${new Date(ms).toLocaleString()} (${ms})` : null;
}

function showMessages(result) {
  const status = document.getElementById("messages-status");
  const holder = document.getElementById("messages-results");
  const messages = result.messages || [];
  status.classList.remove("error");
  if (result.not_found) status.textContent = `not found: ${result.not_found}`;
  else {
    status.textContent = `${messages.length} found` +
      (result.truncated ? " (more may match: raise the limit or narrow the query)" : "");
  }
  holder.replaceChildren(...messages.map((message) => {
    const where = message.offset < 0 ? "none: delayed or retried (delivered as a copy)" : message.offset;
    const fields = [
      ["broker group", message.broker_group],
      ["topic", message.topic],
      ["queue", message.queue_id],
      ["offset", where],
      ["keys", (message.keys || []).join(", ") || null],
      ["tags", message.tags],
      ["stored", timeText(message.store_time_ms)],
      ["born", timeText(message.born_time_ms)],
      ["attempt", message.attempt],
    ].map(([name, value]) => el("tr", { "data-field": name }, el("th", {}, name), el("td", {}, value)));
    const properties = Object.entries(message.properties || {}).sort();
    const rows = properties.length ? properties.map(([name, value]) =>
      el("tr", {}, el("td", {}, name), el("td", {}, value))) : [el("tr", {}, el("td", {}, "none"))];
    return el("article", { class: "message", "data-message-id": message.message_id },
      el("h3", { class: "message-id" }, message.message_id),
      el("table", {}, el("tbody", {}, ...fields)),
      el("h4", {}, `body (${message.body_bytes} bytes)`), el("pre", { class: "body" }, message.body),
      el("h4", {}, "properties"), el("table", { class: "properties" }, el("tbody", {}, ...rows)));
  }));
}

function setUpForms() {
  onAction("transfer-form", "transfer_leader", (result) =>
    `${result.group}: ${result.leader} leads now`);
  onAction("reset-form", "reset_offset", (result) =>
    result.map((queue) => `${queue.broker_group} queue ${queue.queue_id}: ${queue.offset}`).join("; "));
  onAction("redrive-form", "redrive", (result) => `${result.length} dead letters sent back`);
  for (const form of document.querySelectorAll("form.query")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const status = document.getElementById("messages-status");
      status.textContent = "…";
      try {
        showMessages(await ask({ action: "messages", ...formRequest(form) }));
      } catch (error) {
        status.classList.add("error");
        status.textContent = error.message;
        document.getElementById("messages-results").replaceChildren();
      }
    });
  }
}

window.addEventListener("hashchange", showView);
document.addEventListener("DOMContentLoaded", () => {
  showView();
  setUpForms();
  connect();
});
