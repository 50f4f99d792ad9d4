package web

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// page is what every template gets: the layout's fields and the page's own Data.
type page struct {
	Title, Name string
	User        string
	Roles       []string
	CSRF        string
	StepUpUntil time.Time // zero: no step-up in force
	Flash       string
	Path        string // this page, for forms that come back to it
	LogVKey     string
	State       string // the live state this page was rendered at (JSON), for app.js
	Data        any
}

// live are the pages that reload when the state they show changes.
var live = map[string]bool{"overview": true, "inventory": true, "leases": true, "approvals": true, "incidents": true, "incident": true}

var funcs = template.FuncMap{
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"short": func(s string, n int) string {
		if len(s) <= n {
			return s
		}
		return s[:n] + "…"
	},
	"join":    strings.Join,
	"add":     func(a, b int) int { return a + b },
	"pathseg": url.PathEscape,
}

// parsePages parses the layout with each page's template.
func parsePages() (map[string]*template.Template, error) {
	names, err := templateFS.ReadDir("templates")
	if err != nil {
		return nil, err
	}
	out := map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(n.Name(), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+n.Name())
		if err != nil {
			return nil, fmt.Errorf("web: template %s: %w", name, err)
		}
		out[name] = t
	}
	return out, nil
}

// render executes page name into a buffer first, so that a template error is a clean 500
// and never half a page.
func (c *Console) render(w http.ResponseWriter, r *http.Request, q *req, status int, name, title string, data any) {
	pg := page{Title: title, Name: name, Data: data, Path: r.URL.RequestURI(), LogVKey: c.cfg.LogVKey}
	if q != nil {
		pg.User, pg.Roles, pg.CSRF = q.p.ID, q.p.Roles, q.s.csrf
		if !q.s.stepUp.IsZero() && c.cfg.Now().Sub(q.s.stepUp) < c.cfg.StepUpFor {
			pg.StepUpUntil = q.s.stepUp.Add(c.cfg.StepUpFor)
		}
		pg.State = q.state
		if q.s.flash != "" {
			pg.Flash = q.s.flash
			c.sessions.update(q.s.key, func(s *session) { s.flash = "" })
		}
	}
	t := c.pages[name]
	var buf bytes.Buffer
	if t == nil {
		c.cfg.Log.Error("console: no template", "name", name)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	if err := t.Execute(&buf, pg); err != nil {
		c.cfg.Log.Error("console: render", "page", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// fail answers an error as a page (its message is ours, escaped like everything else).
func (c *Console) fail(w http.ResponseWriter, r *http.Request, q *req, err error) {
	st := status(err)
	msg := err.Error()
	if st == http.StatusInternalServerError {
		c.cfg.Log.Error("console", "path", r.URL.Path, "err", err)
		msg = "internal error (see the server log)"
	}
	c.render(w, r, q, st, "error", http.StatusText(st), msg)
}
