package custody

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/strongroom/strongroom/internal/attest"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/store"
)

// Wire types of the custody API (JSON; []byte fields are base64).
type (
	JoinRequest struct {
		Token string `json:"token"`
		CSR   []byte `json:"csr"` // DER PKCS#10
	}
	JoinResponse struct {
		Runtime store.Runtime `json:"runtime"`
		Cert    string        `json:"cert"` // PEM
		CA      string        `json:"ca"`   // PEM
	}
	CertRequest struct {
		CSR []byte `json:"csr"`
	}
	NonceResponse struct {
		Nonce []byte `json:"nonce"`
	}
	LeaseRequestWire struct {
		Model     string          `json:"model"`
		Version   string          `json:"version"`
		PublicKey []byte          `json:"public_key"`
		Nonce     []byte          `json:"nonce"`
		Evidence  attest.Evidence `json:"evidence"`
		// Containment is how the runtime holds the engine's process tree: "cgroup",
		// "subreaper" or "none" (absent: none).
		Containment string `json:"containment,omitempty"`
		// Approval names the approval request the runtime waits on; its denial or expiry
		// ends the wait instead of filing a new request.
		Approval string `json:"approval,omitempty"`
	}
	LeaseResponse struct {
		Lease     store.Lease            `json:"lease"`
		SealedKey []byte                 `json:"sealed_key,omitempty"`
		Files     []store.File           `json:"files,omitempty"`
		Approval  *store.ApprovalRequest `json:"approval,omitempty"` // set with 202: waiting for approvals
	}
	ErrorResponse struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
)

const maxBody = 64 << 10

// codes maps sentinels to HTTP statuses and stable codes (one place, see Status).
var codes = []struct {
	err    error
	status int
	code   string
}{
	{ErrPendingApproval, http.StatusAccepted, "pending_approval"},
	{ErrBadRequest, http.StatusBadRequest, "bad_request"},
	{ErrJoinToken, http.StatusUnauthorized, "join_token"},
	{ErrRuntimeRevoked, http.StatusForbidden, "runtime_revoked"},
	{ErrDenied, http.StatusForbidden, "denied"},
	{ErrAttestation, http.StatusForbidden, "attestation"},
	{ErrReplay, http.StatusForbidden, "replay"},
	{ErrRejected, http.StatusForbidden, "approval_denied"},
	{ErrApproval, http.StatusForbidden, "approval"},
	{ErrDisabled, http.StatusForbidden, "disabled"},
	{ErrUnknown, http.StatusNotFound, "not_found"},
	{ErrRevoked, http.StatusGone, "revoked"},
	{ErrExpired, http.StatusGone, "expired"},
	{ErrEgress, http.StatusTooManyRequests, "egress_budget"},
}

// Status maps an error to its HTTP status and code; anything else is 503 "unavailable"
// (store, keys or audit down: fail closed).
func Status(err error) (int, string) {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.status, c.code
		}
	}
	return http.StatusServiceUnavailable, "unavailable"
}

func errFromCode(code string) error {
	for _, c := range codes {
		if c.code == code {
			return c.err
		}
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (s *Service) fail(w http.ResponseWriter, err error) {
	st, code := Status(err)
	var e ErrorResponse
	e.Error.Code, e.Error.Message = code, err.Error()
	if st == http.StatusServiceUnavailable {
		s.cfg.Log.Error("custody: request failed", "err", err)
		e.Error.Message = "custody service unavailable"
	}
	writeJSON(w, st, e)
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: request body: %v", ErrBadRequest, err)
	}
	return nil
}

// decodeCSR decodes the body into req and parses the DER certificate request it carries
// in *der.
func decodeCSR(r *http.Request, req any, der *[]byte) (*x509.CertificateRequest, error) {
	if err := decode(r, req); err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(*der)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate request: %v", ErrBadRequest, err)
	}
	return csr, nil
}

// Handler serves the custody API. Every call but join needs a client certificate from the
// CA (the TLS layer verifies it; ServerTLS sets that up).
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /custody/v1/join", s.handleJoin)
	mux.HandleFunc("POST /custody/v1/cert", s.runtime(s.handleCert))
	mux.HandleFunc("POST /custody/v1/nonce", s.runtime(func(w http.ResponseWriter, r *http.Request, rt store.Runtime) {
		n, err := s.Nonce(r.Context(), rt.ID)
		if err != nil {
			s.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, NonceResponse{Nonce: n})
	}))
	mux.HandleFunc("POST /custody/v1/leases", s.runtime(s.handleGrant))
	mux.HandleFunc("POST /custody/v1/leases/{id}/renew", s.runtime(s.handleRenew))
	mux.HandleFunc("POST /custody/v1/leases/{id}/release", s.runtime(func(w http.ResponseWriter, r *http.Request, rt store.Runtime) {
		l, err := s.Release(r.Context(), rt, r.PathValue("id"))
		if err != nil {
			s.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, LeaseResponse{Lease: l})
	}))
	mux.HandleFunc("GET /custody/v1/leases/{id}/watch", s.runtime(s.handleWatch))
	mux.HandleFunc("GET /custody/v1/leases/{id}/files/{path...}", s.runtime(s.handleFile))
	return mux
}

func (s *Service) runtime(h func(http.ResponseWriter, *http.Request, store.Runtime)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			s.fail(w, fmt.Errorf("%w: a runtime client certificate is required", ErrRuntimeRevoked))
			return
		}
		rt, err := s.Authenticate(r.Context(), r.TLS.VerifiedChains[0][0])
		if err != nil {
			s.audit(r.Context(), audit.Event{Kind: audit.KindRuntimeAuth, Decision: audit.Deny, Reason: err.Error(), Subject: map[string]string{"runtime": r.TLS.VerifiedChains[0][0].Subject.CommonName}})
			s.fail(w, err)
			return
		}
		h(w, r, rt)
	}
}

func (s *Service) handleJoin(w http.ResponseWriter, r *http.Request) {
	var req JoinRequest
	csr, err := decodeCSR(r, &req, &req.CSR)
	if err != nil {
		s.fail(w, err)
		return
	}
	rt, cert, err := s.Join(r.Context(), req.Token, csr)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, JoinResponse{Runtime: rt, Cert: string(CertPEM(cert.Raw)), CA: string(CertPEM(s.cfg.CA.Cert.Raw))})
}

func (s *Service) handleCert(w http.ResponseWriter, r *http.Request, rt store.Runtime) {
	var req CertRequest
	csr, err := decodeCSR(r, &req, &req.CSR)
	if err != nil {
		s.fail(w, err)
		return
	}
	cert, err := s.RenewCert(r.Context(), rt, csr)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, JoinResponse{Runtime: rt, Cert: string(CertPEM(cert.Raw)), CA: string(CertPEM(s.cfg.CA.Cert.Raw))})
}

func (s *Service) handleGrant(w http.ResponseWriter, r *http.Request, rt store.Runtime) {
	var req LeaseRequestWire
	if err := decode(r, &req); err != nil {
		s.fail(w, err)
		return
	}
	g, err := s.Grant(r.Context(), rt, r.TLS.VerifiedChains[0][0].PublicKey, LeaseRequest(req))
	var pe *PendingError
	if errors.As(err, &pe) {
		writeJSON(w, http.StatusAccepted, LeaseResponse{Approval: &pe.Request})
		return
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, LeaseResponse{Lease: g.Lease, SealedKey: g.SealedKey, Files: g.Files})
}

func (s *Service) handleRenew(w http.ResponseWriter, r *http.Request, rt store.Runtime) {
	l, err := s.Renew(r.Context(), rt, r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, LeaseResponse{Lease: l})
}

// Heartbeat is how often the watch stream says "ok"; a runtime that hears nothing for
// three heartbeats reconnects.
const Heartbeat = 5 * time.Second

// handleWatch streams one line per heartbeat ("ok") until the lease is revoked, then
// "revoked <reason>" and closes.
func (s *Service) handleWatch(w http.ResponseWriter, r *http.Request, rt store.Runtime) {
	id := r.PathValue("id")
	l, err := s.cfg.Store.GetLease(r.Context(), id)
	if err != nil || l.Runtime != rt.ID {
		s.fail(w, fmt.Errorf("%w: lease %s", ErrUnknown, id))
		return
	}
	ch, stop, err := s.Watch(r.Context(), id)
	if err != nil {
		s.fail(w, err)
		return
	}
	seq, err := s.cfg.Store.WatchLease(r.Context(), id, s.now())
	if err != nil {
		stop()
		s.fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	t := time.NewTicker(Heartbeat)
	defer t.Stop()
	line := "ok\n"
	for {
		if _, err := io.WriteString(w, line); err != nil || rc.Flush() != nil {
			break
		}
		select {
		case <-s.closing:
			// The server is stopping, not the runtime going away: no lease ends for it.
			stop()
			return
		case <-r.Context().Done():
		case reason := <-ch:
			io.WriteString(w, "revoked "+oneLine(reason)+"\n")
			rc.Flush()
			stop()
			return
		case <-t.C:
			continue
		}
		break
	}
	// The runtime is gone, or only its connection: the lease ends unless it reconnects.
	stop()
	s.watchDropped(id, seq, s.now())
}

func oneLine(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '\n' || c == '\r' {
			b[i] = ' '
		}
	}
	return string(b)
}

// handleFile serves one sealed file of the lease's version to the runtime holding it.
func (s *Service) handleFile(w http.ResponseWriter, r *http.Request, rt store.Runtime) {
	ctx := r.Context()
	l, err := s.cfg.Store.GetLease(ctx, r.PathValue("id"))
	now := s.now()
	if err != nil || l.Runtime != rt.ID {
		s.fail(w, fmt.Errorf("%w: lease", ErrUnknown))
		return
	}
	if !l.RevokedAt.IsZero() {
		s.fail(w, fmt.Errorf("%w: %s", ErrRevoked, l.Reason))
		return
	}
	if !now.Before(l.ExpiresAt) {
		s.fail(w, ErrExpired)
		return
	}
	v, err := s.cfg.Store.GetVersion(ctx, l.Model, l.Version)
	if err != nil {
		s.fail(w, err)
		return
	}
	path := r.PathValue("path")
	for _, f := range v.Files {
		if f.Path == path {
			s.serveBlob(ctx, w, f)
			return
		}
	}
	s.fail(w, fmt.Errorf("%w: file %q", ErrUnknown, path))
}

func (s *Service) serveBlob(ctx context.Context, w http.ResponseWriter, f store.File) {
	if s.cfg.Blobs == nil {
		s.fail(w, errors.New("no blob store configured"))
		return
	}
	b, err := s.cfg.Blobs.Open(ctx, f.Blob)
	if err != nil {
		s.fail(w, err)
		return
	}
	defer b.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", fmt.Sprint(b.Size()))
	io.Copy(w, io.NewSectionReader(b, 0, b.Size()))
}
