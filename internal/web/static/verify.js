// Checks each evidence entry of an incident in the browser: the log's signed checkpoint
// (a C2SP signed note, Ed25519) against the log key shown on the page, and the entry's
// RFC 6962 inclusion proof in that checkpoint's tree; a request record also by its proof in
// the batch root that its (proven) batch entry carries. Results are written with
// textContent only.
"use strict";
(function () {
  var enc = new TextEncoder();
  function b64(s) { var b = atob(s), out = new Uint8Array(b.length); for (var i = 0; i < b.length; i++) out[i] = b.charCodeAt(i); return out; }
  function cat() { var n = 0, i; for (i = 0; i < arguments.length; i++) n += arguments[i].length; var out = new Uint8Array(n), o = 0; for (i = 0; i < arguments.length; i++) { out.set(arguments[i], o); o += arguments[i].length; } return out; }
  function eq(a, b) { if (a.length !== b.length) return false; for (var i = 0; i < a.length; i++) if (a[i] !== b[i]) return false; return true; }
  async function sha256(b) { return new Uint8Array(await crypto.subtle.digest("SHA-256", b)); }
  function leafHash(b) { return sha256(cat(new Uint8Array([0]), b)); }
  function nodeHash(l, r) { return sha256(cat(new Uint8Array([1]), l, r)); }

  // RFC 9162 §2.1.3.2.
  async function rootFromProof(index, size, leaf, proof) {
    if (index >= size) throw new Error("index beyond the tree");
    var fn = index, sn = size - 1, r = leaf;
    for (var i = 0; i < proof.length; i++) {
      var p = proof[i];
      if (sn === 0) throw new Error("proof too long");
      if (fn % 2 === 1 || fn === sn) {
        r = await nodeHash(p, r);
        if (fn % 2 === 0) { while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); } }
      } else {
        r = await nodeHash(r, p);
      }
      fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
    }
    if (sn !== 0) throw new Error("proof too short");
    return r;
  }

  // vkey: "name+hash+base64(0x01 || 32-byte Ed25519 key)" (golang.org/x/mod/sumdb/note).
  async function parseVKey(vkey) {
    // The name has no "+"; the base64 key may.
    var i = vkey.indexOf("+"), j = vkey.indexOf("+", i + 1);
    if (i <= 0 || j !== i + 9) throw new Error("bad log key");
    var name = vkey.slice(0, i), hash = parseInt(vkey.slice(i + 1, j), 16), raw = b64(vkey.slice(j + 1));
    if (raw.length !== 33 || raw[0] !== 1) throw new Error("log key is not Ed25519");
    var h = await sha256(cat(enc.encode(name + "\n"), raw));
    var want = ((h[0] << 24) | (h[1] << 16) | (h[2] << 8) | h[3]) >>> 0;
    if (want !== hash) throw new Error("log key hash does not match its key");
    var key = await crypto.subtle.importKey("raw", raw.slice(1), { name: "Ed25519" }, false, ["verify"]);
    return { name: name, hash: hash, key: key };
  }

  // A signed note: text, a blank line, then "— name base64(keyhash || signature)" lines.
  async function openCheckpoint(note, vk) {
    var cut = note.indexOf("\n\n");
    if (cut < 0) throw new Error("checkpoint is not a signed note");
    var text = note.slice(0, cut + 1), sigs = note.slice(cut + 2).split("\n");
    var ok = false;
    for (var i = 0; i < sigs.length && !ok; i++) {
      var m = /^\u2014 (\S+) (\S+)$/.exec(sigs[i]);
      if (!m || m[1] !== vk.name) continue;
      var sig = b64(m[2]);
      if (sig.length !== 68) continue;
      var kh = ((sig[0] << 24) | (sig[1] << 16) | (sig[2] << 8) | sig[3]) >>> 0;
      if (kh !== vk.hash) continue;
      ok = await crypto.subtle.verify({ name: "Ed25519" }, vk.key, sig.slice(4), enc.encode(text));
      if (!ok) throw new Error("checkpoint signature does not verify");
    }
    if (!ok) throw new Error("checkpoint is not signed by the log key");
    var lines = text.split("\n");
    if (lines[0] !== vk.name) throw new Error("checkpoint origin is not the log's");
    return { size: parseInt(lines[1], 10), root: b64(lines[2]) };
  }

  async function verifyOne(row, vk) {
    var cell = row.querySelector("td.proof");
    try {
      var res = await fetch("/console/proof?index=" + encodeURIComponent(row.dataset.index), { credentials: "same-origin" });
      if (!res.ok) throw new Error("no proof (" + res.status + ")");
      var p = await res.json();
      var cp = await openCheckpoint(p.checkpoint, vk);
      if (cp.size !== p.tree_size) throw new Error("proof is for another tree size");
      var entry = b64(p.entry);
      var root = await rootFromProof(p.index, cp.size, await leafHash(entry), p.proof.map(b64));
      if (!eq(root, cp.root)) throw new Error("entry is not in the signed tree");
      var what = "entry " + p.index;
      if (p.record) {
        var batch = JSON.parse(new TextDecoder().decode(entry));
        if (batch.kind !== "audit.batch") throw new Error("record's entry is not a batch");
        var broot = Uint8Array.from(batch.fields.root.match(/../g).map(function (h) { return parseInt(h, 16); }));
        var rr = await rootFromProof(p.position || 0, p.records, await leafHash(b64(p.record)), (p.record_proof || []).map(b64));
        if (!eq(rr, broot)) throw new Error("record is not in its batch");
        what = "record " + (p.position || 0) + " of batch entry " + p.index;
      }
      cell.textContent = "verified: " + what + " in the checkpoint of size " + cp.size;
      cell.className = "proof verified";
    } catch (e) {
      cell.textContent = "NOT VERIFIED: " + e.message;
      cell.className = "proof failed";
    }
  }

  async function run() {
    var rows = document.querySelectorAll("tr.evidence");
    var vk;
    try {
      if (!window.crypto || !crypto.subtle) throw new Error("this page is not a secure context (use HTTPS or loopback)");
      vk = await parseVKey(document.getElementById("vkey").dataset.vkey);
    } catch (e) {
      rows.forEach(function (r) { var c = r.querySelector("td.proof"); c.textContent = "NOT VERIFIED: " + e.message; c.className = "proof failed"; });
      return;
    }
    for (var i = 0; i < rows.length; i++) await verifyOne(rows[i], vk);
  }
  // data-verified tells whoever waits (a person, a test) that every row has its answer.
  run().finally(function () { document.body.dataset.verified = "done"; });
})();
