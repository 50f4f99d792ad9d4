// Package custody releases a model version's data key only to a runtime that joined with a
// one-time token, holds a certificate from Strongroom's CA, proves with fresh attestation that
// its ephemeral key lives where it claims, is allowed by policy, has the approvals its model's
// classification needs and is within its egress budget — sealed to that key with HPKE (RFC
// 9180), under a short lease that renewals re-check and revocation ends, all on the record.
//
// # Custody Protocol, version 1
//
// HTTPS (TLS 1.3 only) on the custody listener, JSON bodies (UTF-8; []byte fields are standard
// base64 with padding; times RFC 3339), at most 64 KiB per request body, unknown fields
// refused. Paths are under /custody/v1/. Every call but join authenticates the runtime with
// its client certificate (mTLS, issued by the deployment's runtime CA; a revoked runtime or
// an expired certificate is refused).
//
// Join token. `srj_<id>.<secret>.<pin>`: id 16 lowercase hex digits (names the token in the
// store), secret 32 random bytes as unpadded base64url (43 characters; the store keeps its
// SHA-256 only), pin 64 lowercase hex digits = SHA-256 of the runtime CA certificate's DER.
// Single use, expires (default 1 h), names the attributes the runtime gets: env (prod,
// staging, dev), region, jurisdiction (ISO country), host, owner (a registered principal,
// the requester of the runtime's approval requests, who may not approve them).
//
//	POST join          {"token": T, "csr": DER PKCS#10}         (no client certificate)
//	                   → {"runtime": Runtime, "cert": PEM, "ca": PEM}
//	POST cert          {"csr": DER}                             → same shape: a fresh certificate
//	POST nonce         {}                                       → {"nonce": 32 bytes}
//	POST leases        LeaseRequestWire                         → 200 LeaseResponse (granted),
//	                                                              202 LeaseResponse (approval pending)
//	POST leases/{id}/renew                                      → {"lease": Lease}
//	POST leases/{id}/release                                    → {"lease": Lease} (ended now)
//	GET  leases/{id}/watch                                      → text/plain lines, below
//	GET  leases/{id}/files/{path}                               → the sealed file (.srs)
//
// The client checks the server's certificate chain against the pinned CA at join and
// against the CA it saved afterwards (the identity directory: key, certificate, CA, server).
//
// Lease request (LeaseRequestWire): {"model", "version", "public_key" (X25519, 32 bytes,
// fresh per launch), "nonce" (from POST nonce: single use, bound to this runtime, short
// lived), "evidence": {"type": "dev"|"sev-snp"|"tdx", "blob": report}, "containment":
// "cgroup"|"subreaper"|"none", "approval": the request id the runtime waits on}. The
// evidence's report data must be
//
//	binding = SHA-512("strongroom/attest/v1" || 0x00 || byte(len(public_key)) || public_key || nonce)
//
// so the report vouches for this key and this request. The server verifies the evidence
// (measurement allowlist per type), then Cedar lease policy on the runtime's attributes and
// the version's model record (classification, countries), containment for restricted models,
// k-of-n approvals, the daily egress budget — each refusal an error body below, each
// decision a log entry before anything is released.
//
// Lease response: {"lease": Lease, "sealed_key": HPKE, "files": [File]} or, with 202,
// {"approval": ApprovalRequest} (the runtime polls with the same request id until it is
// approved, denied or expired). The version's data key (32 bytes) is sealed with HPKE base
// mode (RFC 9180): DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, to public_key, with
//
//	info = "strongroom/custody/v1" || 0x00 || lease.id || 0x00 || model "@" version ||
//	       0x00 || runtime id || 0x00 || key id
//
// so a sealed key opens only for the lease it was issued under. sealed_key = enc || ct.
//
// Lease (store.Lease): {"id", "runtime", "model", "version", "key_id", "attestation"
// (type:measurement), "bytes" (sealed bytes released: the egress charge), "granted_at",
// "expires_at", "revoked_at", "reason", "seen_at"}. File (store.File): {"path", "size",
// "sha256" (of the plaintext), "blob"}. Runtime (store.Runtime) and ApprovalRequest
// (store.ApprovalRequest, with "approvals": [{"approver", "decision", "at"}]) likewise in
// snake_case (their json tags are the wire names).
//
// Renewal: before a third of the lease TTL is left the runtime renews; renewal re-runs policy
// (the model record and allowlists as they stand now) and fails for revoked, expired,
// disabled or foreign leases. Release: a runtime whose engine has stopped hands its lease
// back. Watch: the server writes "ok\n" every 5 s (Heartbeat) and, on revocation,
// "revoked <reason>\n" and closes; a runtime that hears nothing for three heartbeats
// reconnects; a stream that drops and is not re-established (at any replica) within the
// watch grace ends the lease on the record. A server that shuts down closes its streams
// without ending their leases.
//
// Errors: the status and {"error": {"code", "message"}} with a stable code: 400
// bad_request, 401 join_token, 403 runtime_revoked | denied | attestation | replay |
// approval_denied | approval | disabled, 404 not_found, 410 revoked | expired, 429
// egress_budget, 202 pending_approval, 503 unavailable (store, keys or log down: fail
// closed; the message is generic, the cause goes to the operator's log).
package custody
