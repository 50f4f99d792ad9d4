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
  // Once the user leaves the page (a link, the address bar), a reload would cancel that
  // navigation and bring back this page: the events are not followed while one is under
  // way. A page still here 10 s later was not left (a link that was a download).
  var leaving = false;
  window.addEventListener("beforeunload", function () {
    leaving = true;
    setTimeout(function () { leaving = false; }, 10000);
  });
  function key(st) { return follows.map(function (k) { return String(st[k]); }).join("|"); }
  var last = null;
  try { last = key(JSON.parse(document.body.dataset.state)); } catch (e) { /* no state: the first event sets it */ }
  var es;
  function connect() {
    es = new EventSource("/console/events");
    es.addEventListener("state", onState);
    es.addEventListener("signedout", function () { es.close(); window.location.assign("/console/login"); });
    // An answer that is not a stream (too many streams, the server restarting) closes the
    // source for good: try again later rather than stop following.
    es.onerror = function () { if (es.readyState === EventSource.CLOSED) setTimeout(connect, 3000); };
  }
  function onState(ev) {
    var k = key(JSON.parse(ev.data));
    if (leaving) return;
    if (last !== null && k !== last && !typing) {
      es.close();
      window.location.reload();
      return;
    }
    last = k;
  }
  connect();
})();
