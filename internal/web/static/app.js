// Live updates: the server streams the state the pages show (leases, approvals,
// incidents, sanctions, log size); when it changes, the page is fetched again — unless the
// user is typing in a form. No data goes through innerHTML: the page comes from the server.
"use strict";
(function () {
  var page = document.body.dataset.page;
  var follows = {
    overview: ["leases", "incidents", "approvals"], inventory: ["leases"], leases: ["leases"],
    approvals: ["approvals", "leases"], incidents: ["incidents", "sanctions"], incident: ["incidents"],
  }[page];
  if (!follows || !window.EventSource) return;
  var typing = false;
  document.addEventListener("input", function () { typing = true; });
  var last = null;
  var es = new EventSource("/console/events");
  es.addEventListener("state", function (ev) {
    var st = JSON.parse(ev.data);
    var key = follows.map(function (k) { return String(st[k]); }).join("|");
    if (last !== null && key !== last && !typing) {
      es.close();
      window.location.reload();
      return;
    }
    last = key;
  });
  es.addEventListener("signedout", function () { es.close(); window.location.assign("/console/login"); });
})();
