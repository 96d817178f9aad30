// The web view's live updates: the page listens to the service's event stream
// (Server-Sent Events, /ui/events) and updates the nodes it shows in place. Plain
// JavaScript, no library: the page is rendered on the server and stays usable without it.
(function () {
  "use strict";
  var live = document.querySelector("[data-live]");
  if (!live || !window.EventSource) {
    return;
  }
  var status = document.getElementById("live-status");
  var stale = document.getElementById("stale");
  // After a reconnect the stream may send an event again: it is shown once.
  var seen = new Set();
  var HOP = /^(boot-|tftp-|http-|callback-|agent|handoff|handed-off|autosign$|deployed$|wiped$|inspected$)/;

  function say(text) {
    if (!status) {
      return;
    }
    status.textContent = text;
    status.hidden = !text;
  }

  function count(state, delta) {
    var cell = document.querySelector('[data-count="' + state + '"]');
    if (cell) {
      cell.textContent = String(Number(cell.textContent) + delta);
    }
  }

  function field(card, name, text) {
    var el = card.querySelector('[data-field="' + name + '"]');
    if (el) {
      el.textContent = text;
    }
  }

  function updateCards(e) {
    var cards = document.querySelectorAll('[data-node="' + CSS.escape(e.node) + '"]');
    if (cards.length === 0 && stale && live.classList.contains("racks")) {
      stale.hidden = false;
    }
    cards.forEach(function (card) {
      var old = card.dataset.state;
      if (old !== e.state) {
        card.classList.remove("state-" + old);
        card.classList.add("state-" + e.state);
        card.dataset.state = e.state;
        count(old, -1);
        count(e.state, 1);
        if (stale && !live.classList.contains("racks")) {
          // A node's page: the actions it offers were those of the old state.
          stale.hidden = false;
        }
      }
      field(card, "state", e.state);
      field(card, "power_state", "power " + e.power_state);
      field(card, "role", e.role || "no role");
      var maintenance = card.querySelector('[data-field="maintenance"]');
      if (maintenance) {
        maintenance.hidden = !e.maintenance;
      }
    });
  }

  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function appendRow(table, e) {
    var body = table.tBodies[0];
    var last = body.rows.length ? body.rows[body.rows.length - 1] : null;
    var time = new Date(e.time);
    var row = document.createElement("tr");
    var hop = HOP.test(e.kind);
    row.dataset.event = String(e.id);
    row.dataset.time = e.time;
    if (hop) {
      row.className = "hop";
    }
    var when = document.createElement("time");
    when.dateTime = e.time;
    when.textContent = time.toISOString().slice(11, 23);
    cell(row, "").appendChild(when);
    var after = "";
    if (last && last.dataset.time) {
      after = "+" + ((time - new Date(last.dataset.time)) / 1000).toFixed(1) + " s";
    }
    cell(row, after);
    var what = cell(row, e.kind);
    if (hop) {
      var tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "hop";
      what.appendChild(document.createTextNode(" "));
      what.appendChild(tag);
    }
    cell(row, e.actor);
    cell(row, e.to_state && e.to_state !== e.from_state ? e.from_state + " \u2192 " + e.to_state : "");
    cell(row, e.message);
    body.appendChild(row);
  }

  var source = new EventSource(live.dataset.live);
  source.onopen = function () {
    say("");
  };
  source.onerror = function () {
    say(source.readyState === EventSource.CLOSED
      ? "Live updates stopped: reload the page (you may need to sign in again)."
      : "Live updates interrupted; reconnecting.");
  };
  source.onmessage = function (message) {
    var e = JSON.parse(message.data);
    if (seen.has(e.id)) {
      return;
    }
    seen.add(e.id);
    if (seen.size > 10000) {
      seen.delete(seen.values().next().value);
    }
    updateCards(e);
    if (live.tagName === "TABLE" && !live.querySelector('[data-event="' + e.id + '"]')) {
      appendRow(live, e);
    }
  };
})();
