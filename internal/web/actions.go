package web

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/store"
)

func required(r *http.Request, names ...string) (map[string]string, error) {
	out := map[string]string{}
	for _, n := range names {
		v := strings.TrimSpace(r.PostFormValue(n))
		if v == "" {
			return nil, errorf(http.StatusBadRequest, "%s is required", n)
		}
		out[n] = v
	}
	return out, nil
}

func (c *Console) revokeLease(w http.ResponseWriter, r *http.Request, q *req) error {
	f, err := required(r, "id", "reason")
	if err != nil {
		return err
	}
	n, err := c.cfg.Ops.RevokeLease(q.ctx, f["id"], f["reason"])
	if err != nil {
		return err
	}
	if n == 0 {
		return errorf(http.StatusConflict, "lease %s is not live", f["id"])
	}
	return c.back(w, r, q, "/console/leases", fmt.Sprintf("Lease %s revoked: its engine is being killed.", f["id"]))
}

func (c *Console) revokeRuntime(w http.ResponseWriter, r *http.Request, q *req) error {
	f, err := required(r, "id", "reason")
	if err != nil {
		return err
	}
	n, err := c.cfg.Ops.RevokeRuntime(q.ctx, f["id"], f["reason"])
	if err != nil {
		return err
	}
	return c.back(w, r, q, "/console/leases", fmt.Sprintf("Runtime %s revoked with %d lease(s).", f["id"], n))
}

func (c *Console) disableModel(w http.ResponseWriter, r *http.Request, q *req) error {
	f, err := required(r, "id", "reason")
	if err != nil {
		return err
	}
	name, version, ok := strings.Cut(f["id"], ":")
	if !ok {
		return errorf(http.StatusBadRequest, "id: NAME:VERSION")
	}
	n, err := c.cfg.Ops.DisableModel(q.ctx, name, version, f["reason"])
	if err != nil {
		return err
	}
	return c.back(w, r, q, "/console/inventory", fmt.Sprintf("%s disabled; %d lease(s) revoked.", f["id"], n))
}

func (c *Console) decideApproval(w http.ResponseWriter, r *http.Request, q *req) error {
	f, err := required(r, "id", "decision", "totp", "justification")
	if err != nil {
		return err
	}
	if f["decision"] != "approve" && f["decision"] != "deny" {
		return errorf(http.StatusBadRequest, "decision: approve or deny")
	}
	a, err := c.cfg.Ops.DecideApproval(q.ctx, f["id"], q.p.ID, f["totp"], f["justification"], f["decision"] == "approve")
	if err != nil {
		return errorf(http.StatusForbidden, "%v", err)
	}
	return c.back(w, r, q, "/console/approvals", fmt.Sprintf("Request %s: %s recorded; it is now %s.", a.ID, f["decision"], a.State))
}

func (c *Console) createPrincipal(w http.ResponseWriter, r *http.Request, q *req) error {
	f, err := required(r, "id", "tenant")
	if err != nil {
		return err
	}
	p := store.Principal{ID: f["id"], Tenant: f["tenant"], Org: strings.TrimSpace(r.PostFormValue("org")),
		Country: strings.ToUpper(strings.TrimSpace(r.PostFormValue("country"))), Roles: splitList(r.PostFormValue("roles"))}
	if _, err := c.cfg.Store.GetPrincipal(q.ctx, p.ID); err == nil {
		return errorf(http.StatusConflict, "principal %s exists", p.ID)
	}
	if err := c.cfg.Ops.AddPrincipal(q.ctx, p); err != nil {
		return err
	}
	return c.back(w, r, q, "/console/principals/"+pathEscape(p.ID), "Principal "+p.ID+" created and screened.")
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// newKey shows a new key's secret once, in this answer only (never stored, never logged).
func (c *Console) newKey(w http.ResponseWriter, r *http.Request, q *req, tok string, k store.APIKey, what string) error {
	c.render(w, r, q, http.StatusOK, "newkey", "New API key", map[string]any{"Token": tok, "Key": k, "What": what})
	return nil
}

func (c *Console) createKey(w http.ResponseWriter, r *http.Request, q *req) error {
	f, err := required(r, "principal")
	if err != nil {
		return err
	}
	ttl := 30 * 24 * time.Hour
	if s := strings.TrimSpace(r.PostFormValue("expires")); s != "" {
		if ttl, err = time.ParseDuration(s); err != nil || ttl <= 0 {
			return errorf(http.StatusBadRequest, "expires: a duration such as 720h")
		}
	}
	tok, k, err := c.cfg.Ops.CreateKey(q.ctx, f["principal"], ttl, splitList(r.PostFormValue("models")))
	if err != nil {
		return err
	}
	return c.newKey(w, r, q, tok, k, "created")
}

func (c *Console) rotateKey(w http.ResponseWriter, r *http.Request, q *req) error {
	f, err := required(r, "id")
	if err != nil {
		return err
	}
	overlap := 24 * time.Hour
	if s := strings.TrimSpace(r.PostFormValue("overlap")); s != "" {
		if overlap, err = time.ParseDuration(s); err != nil || overlap < 0 {
			return errorf(http.StatusBadRequest, "overlap: a duration such as 24h")
		}
	}
	tok, k, err := c.cfg.Ops.RotateKey(q.ctx, f["id"], overlap)
	if err != nil {
		return err
	}
	return c.newKey(w, r, q, tok, k, "rotated from "+f["id"])
}

func (c *Console) revokeKey(w http.ResponseWriter, r *http.Request, q *req) error {
	f, err := required(r, "id")
	if err != nil {
		return err
	}
	if err := c.cfg.Ops.RevokeKey(q.ctx, f["id"]); err != nil {
		return err
	}
	return c.back(w, r, q, r.PostFormValue("next"), "Key "+f["id"]+" revoked.")
}

func (c *Console) liftSanction(w http.ResponseWriter, r *http.Request, q *req) error {
	f, err := required(r, "id", "reason")
	if err != nil {
		return err
	}
	if err := c.cfg.Ops.LiftSanction(q.ctx, f["id"], f["reason"]); err != nil {
		return err
	}
	return c.back(w, r, q, "/console/incidents", "Sanction on "+f["id"]+" lifted.")
}

func (c *Console) closeIncident(w http.ResponseWriter, r *http.Request, q *req) error {
	f, err := required(r, "id", "note")
	if err != nil {
		return err
	}
	if err := c.cfg.Ops.CloseIncident(q.ctx, f["id"], f["note"]); err != nil {
		return err
	}
	return c.back(w, r, q, "/console/incidents/"+pathEscape(f["id"]), "Incident "+f["id"]+" closed.")
}
