// cloakroom status page: refreshes the server-rendered page from /status.json every
// 2 s. Builds DOM nodes with textContent only (no HTML from data). Without this
// script the page is complete as served; reload it to refresh.
"use strict";
(function () {
  var SVG = "http://www.w3.org/2000/svg";
  function $(id) { return document.getElementById(id); }
  function num(v, d) { return v === null || v === undefined ? "\u2013" : Number(v).toFixed(d); }
  function ago(now, then) {
    var s = Math.max(0, Math.floor((now - then) / 1000));
    if (s < 120) return s + " s ago";
    if (s < 7200) return Math.floor(s / 60) + " min ago";
    return Math.floor(s / 3600) + " h ago";
  }
  function uptime(s) {
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }
  function utc(ms) { return new Date(ms).toISOString().slice(0, 19).replace("T", " ") + "Z"; }
  function setText(id, text) { var e = $(id); if (e) e.textContent = text; }
  function td(text, cls) {
    var c = document.createElement("td");
    if (cls) c.className = cls;
    c.textContent = text;
    return c;
  }
  function spark(values) {
    var max = 1e-9, i, pts = [];
    for (i = 0; i < values.length; i++) max = Math.max(max, values[i]);
    var n = Math.max(values.length, 2) - 1;
    for (i = 0; i < values.length; i++) {
      pts.push((240 * i / n).toFixed(1) + "," + (38 - 36 * values[i] / max).toFixed(1));
    }
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 240 40");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    var line = document.createElementNS(SVG, "polyline");
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "currentColor");
    line.setAttribute("stroke-width", "1.5");
    line.setAttribute("points", pts.join(" "));
    svg.appendChild(line);
    return svg;
  }
  function card(id, value, values) {
    setText("v-" + id, value);
    var box = $("s-" + id);
    if (box) box.replaceChildren(spark(values));
  }
  function pick(series, f) { return series.map(function (p) { var v = f(p); return v === null || v === undefined ? 0 : v; }); }
  function badge(up, draining) {
    var s = document.createElement("span");
    s.className = "badge " + (!up ? "down" : draining ? "drain" : "up");
    s.textContent = !up ? "DOWN" : draining ? "UP \u00b7 draining" : "UP";
    var c = document.createElement("td");
    c.appendChild(s);
    return c;
  }
  function servers(data) {
    var body = $("servers");
    if (!body) return;
    var rows = [];
    data.upstreams.forEach(function (u) {
      u.servers.forEach(function (s) {
        var tr = document.createElement("tr");
        if (!s.up) tr.className = "down";
        var check = s.check ? (s.check.ok ? "pass" : "fail: " + s.check.detail) + " (" + ago(data.at_ms, s.check.at_ms) + ")" : "\u2013";
        var changed = s.changed_ms === null ? "since start"
          : ago(data.at_ms, s.changed_ms) + (s.down_reason ? ": " + s.down_reason : "");
        tr.append(td(u.name), td(s.name), badge(s.up, s.draining), td(String(s.in_flight), "n"),
          td(num(s.rps, 1), "n"),
          td(s.error_rate === null ? "\u2013" : (s.error_rate * 100).toFixed(1) + "%", "n"),
          td(num(s.p50_ms, 1), "n"), td(num(s.p99_ms, 1), "n"), td(check, "wrap"), td(changed, "wrap"));
        rows.push(tr);
      });
    });
    body.replaceChildren.apply(body, rows);
  }
  function routes(data) {
    var body = $("routes");
    if (!body) return;
    var rows = data.routes.map(function (r) {
      var tr = document.createElement("tr");
      var refused = r.refused.length ? r.refused.map(function (x) { return x[1] + " " + x[0]; }).join(", ") : "\u2013";
      tr.append(td(r.name), td(r.upstream), td(num(r.rps, 1), "n"), td(String(r.classes[1]), "n"),
        td(String(r.classes[2]), "n"), td(String(r.classes[3]), "n"),
        td(String(r.classes[4]), r.classes[4] > 0 ? "n bad" : "n"), td(num(r.p99_ms, 1), "n"), td(refused));
      return tr;
    });
    body.replaceChildren.apply(body, rows);
  }
  function sessions(data) {
    var s = data.sessions;
    setText("ses-live", s.live === null ? "\u2013" : String(s.live));
    setText("ses-created", String(s.created_per_min));
    setText("ses-ended", s.ended_per_min.length ? s.ended_per_min.map(function (x) { return x[1] + " " + x[0]; }).join(", ") : "none");
    setText("ses-store", s.store);
    var health = s.store_ok === null ? "no server-side store"
      : s.store_ok ? "ok, answered in " + num(s.store_probe_ms, 1) + " ms" : "failing: " + (s.store_error || "?");
    setText("ses-health", health);
    var h = $("ses-health");
    if (h) h.className = s.store_ok === false ? "bad" : "";
    setText("ses-load", num(s.store_load_p99_ms, 2) + " ms / " + s.store_errors_per_min);
  }
  function proxy(data) {
    var p = data.proxy;
    setText("facts", "v" + p.version + " \u00b7 up " + uptime(p.uptime_s) + " \u00b7 config generation " +
      p.generation + " \u00b7 " + p.connections + " connections \u00b7 " + p.tunnels + " tunnels");
    setText("stamp", "sampled " + utc(data.at_ms));
    var r = p.reload;
    setText("reload", !r ? "none since start" : r.ok ? utc(r.at_ms) + ": ok, generation " + r.generation + " live"
      : utc(r.at_ms) + ": refused, the running config stays: " + r.error);
    setText("warnings", p.warnings.length ? p.warnings.join("\n") : "none");
  }
  function render(data) {
    var series = data.series, last = series.length ? series[series.length - 1] : null;
    card("rps", last ? num(last.requests, 0) : "\u2013", pick(series, function (p) { return p.requests; }));
    card("err", last ? num(last.errors, 0) : "\u2013", pick(series, function (p) { return p.errors; }));
    card("p99", last ? num(last.p99_ms, 1) : "\u2013", pick(series, function (p) { return p.p99_ms; }));
    card("ses", data.sessions.live === null ? "\u2013" : String(data.sessions.live), pick(series, function (p) { return p.sessions; }));
    servers(data);
    routes(data);
    sessions(data);
    proxy(data);
    document.body.setAttribute("data-refreshed", String(data.at_ms));
  }
  function refresh() {
    fetch("/status.json", { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); throw new Error("token"); }
        if (!r.ok) throw new Error("status " + r.status);
        return r.json();
      })
      .then(function (data) { render(data); document.body.classList.remove("stale"); })
      .catch(function () { document.body.classList.add("stale"); });
  }
  setInterval(refresh, 2000);
})();
