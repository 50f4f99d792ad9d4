package audit

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// SPEC: https://c2sp.org/tlog-tiles — "checkpoint", "tile/<L>/<N>[.p/<W>]" and
// "tile/entries/<N>[.p/<W>]", where N is split into 3-digit path elements prefixed by x.
var tilePath = regexp.MustCompile(`^tile/(entries|[0-9]{1,2})/(x[0-9]{3}/)*[0-9]{3}(\.p/[0-9]{1,3})?$`)

// Handler serves the log directory read-only in the tlog-tiles layout. Mount it with
// http.StripPrefix("/log", ...). Nothing but the checkpoint and tiles is reachable: not
// the log's private state, not a directory listing.
func Handler(dir string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		p := r.URL.Path
		if len(p) > 0 && p[0] == '/' {
			p = p[1:]
		}
		switch {
		case p == "checkpoint":
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Cache-Control", "no-cache")
		case strings.HasPrefix(p, "batches/") && validBundleName(strings.TrimPrefix(p, "batches/")):
			// Request batches' bundles: content-addressed, so immutable.
			name := strings.TrimPrefix(p, "batches/")
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
			p = "batches/" + name[:2] + "/" + name
		case tilePath.MatchString(p):
			w.Header().Set("Content-Type", "application/octet-stream")
			if !strings.Contains(p, ".p/") {
				// Full tiles never change.
				w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
			}
		default:
			http.NotFound(w, r)
			return
		}
		f, err := os.Open(filepath.Join(dir, filepath.FromSlash(p)))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "", st.ModTime(), f)
	})
}
