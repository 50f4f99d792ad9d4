package web

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/policy"
	"github.com/strongroom/strongroom/internal/store"
)

// auditQuery reads the explorer's filters: principal, kind, since (a duration back from
// now, e.g. 24h, or an RFC 3339 time) and before (the page cursor, a log index).
func (c *Console) auditQuery(r *http.Request) (store.AuditQuery, error) {
	v := r.URL.Query()
	q := store.AuditQuery{Principal: strings.TrimSpace(v.Get("principal")), Kind: strings.TrimSpace(v.Get("kind")), Desc: true}
	if s := strings.TrimSpace(v.Get("since")); s != "" {
		if d, err := time.ParseDuration(s); err == nil {
			q.Since = c.cfg.Now().Add(-d)
		} else if t, err := time.Parse(time.RFC3339, s); err == nil {
			q.Since = t
		} else {
			return q, errorf(http.StatusBadRequest, "since: a duration (24h) or an RFC 3339 time")
		}
	}
	if b := v.Get("before"); b != "" {
		n, err := strconv.ParseUint(b, 10, 64)
		if err != nil {
			return q, errorf(http.StatusBadRequest, "before: a log index")
		}
		q.Before = n
	}
	return q, nil
}

func (c *Console) auditPage(w http.ResponseWriter, r *http.Request, q *req) error {
	aq, err := c.auditQuery(r)
	if err != nil {
		return err
	}
	aq.Limit = pageSize + 1
	evs, err := c.cfg.Store.SearchAudit(q.ctx, aq)
	if err != nil {
		return err
	}
	next := ""
	if len(evs) > pageSize {
		evs = evs[:pageSize]
		if last := evs[pageSize-1].Index; last > 0 { // nothing is below entry 0
			v := r.URL.Query()
			v.Set("before", strconv.FormatUint(last, 10))
			next = "/console/audit?" + v.Encode()
		}
	}
	rows := make([]entry, len(evs))
	for i, e := range evs {
		rows[i] = toEntry(e)
	}
	v := r.URL.Query()
	v.Del("before")
	c.render(w, r, q, http.StatusOK, "audit", "Audit explorer", map[string]any{
		"Rows": rows, "Next": next, "Export": "/console/audit/export?" + v.Encode(),
		"Principal": aq.Principal, "Kind": aq.Kind, "SinceText": r.URL.Query().Get("since"),
	})
	return nil
}

// auditExport writes every matching indexed event as JSON lines (the entry's own bytes
// under "event"), read a page at a time. The export itself is recorded.
func (c *Console) auditExport(w http.ResponseWriter, r *http.Request, q *req) error {
	aq, err := c.auditQuery(r)
	if err != nil {
		return err
	}
	if err := c.record(q.ctx, audit.KindConsoleExport, audit.Allow, "", map[string]string{"principal": aq.Principal, "kind": aq.Kind},
		map[string]string{"query": url.Values(r.URL.Query()).Encode()}); err != nil {
		return errorf(http.StatusServiceUnavailable, "not exported: the audit log cannot record it")
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Content-Disposition", `attachment; filename="strongroom-audit.jsonl"`)
	enc := json.NewEncoder(w)
	aq.Limit = 1000
	for {
		evs, err := c.cfg.Store.SearchAudit(q.ctx, aq)
		if err != nil {
			c.cfg.Log.Error("console: export", "err", err)
			return nil // the body has started: a cut stream is the signal
		}
		for _, e := range evs {
			if err := enc.Encode(map[string]any{"index": e.Index, "event": json.RawMessage(e.Raw)}); err != nil {
				return nil
			}
		}
		var more bool
		if aq, more = aq.NextPage(evs); !more {
			return nil
		}
	}
}

type policyFile struct {
	Path, Text string
}

type caseFile struct {
	Path    string
	Err     string
	Results []policy.Result
	Passed  int
}

func (c *Console) policies(w http.ResponseWriter, r *http.Request, q *req) error {
	dir := c.cfg.PolicyDir
	set, lerr := policy.Load(dir)
	var files []policyFile
	var cases []caseFile
	if dir != "" {
		ms, _ := filepath.Glob(filepath.Join(dir, "*.cedar"))
		for _, m := range ms {
			b, err := os.ReadFile(m)
			if err != nil {
				b = []byte("(unreadable: " + err.Error() + ")")
			}
			files = append(files, policyFile{Path: filepath.Base(m), Text: string(b)})
		}
		ys, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
		yml, _ := filepath.Glob(filepath.Join(dir, "*.yml"))
		for _, y := range append(ys, yml...) {
			cf := caseFile{Path: filepath.Base(y)}
			if set == nil {
				cf.Err = "not run: the policies do not validate"
			} else if res, err := policy.RunFile(set, y); err != nil {
				cf.Err = err.Error()
			} else {
				cf.Results = res
				for _, x := range res {
					if x.Passed {
						cf.Passed++
					}
				}
			}
			cases = append(cases, cf)
		}
	}
	valid := "valid: the baseline and every file validate against the schema"
	if lerr != nil {
		valid = "INVALID: " + lerr.Error()
	}
	c.render(w, r, q, http.StatusOK, "policies", "Policies", map[string]any{"Dir": dir, "Valid": valid, "OK": lerr == nil, "Files": files, "Cases": cases})
	return nil
}
