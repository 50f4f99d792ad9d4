package audit

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/api/layout"
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

// Handler serves this log in the tlog-tiles layout, from its directory or, for a log on a
// shared engine, from the database: any replica serves the same tree and every batch.
func (l *Log) Handler() http.Handler {
	if l.db == nil {
		return Handler(l.dir)
	}
	return ReaderHandler(l.served, l.bundles)
}

// ReaderHandler serves the checkpoint, tiles, entry bundles and batch bundles read through
// r and bundles, with the paths, types and caching of Handler.
func ReaderHandler(r tessera.LogReader, bundles BundleStore) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		p := strings.TrimPrefix(req.URL.Path, "/")
		ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
		defer cancel()
		var b []byte
		var err error
		immutable := false
		switch {
		case p == "checkpoint":
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Cache-Control", "no-cache")
			b, err = r.ReadCheckpoint(ctx)
		case strings.HasPrefix(p, "batches/") && validBundleName(strings.TrimPrefix(p, "batches/")):
			b, err = bundles.Bundle(ctx, strings.TrimPrefix(p, "batches/"))
			immutable = true
		case tilePath.MatchString(p):
			level, index, _ := strings.Cut(strings.TrimPrefix(p, "tile/"), "/")
			i, part, perr := layout.ParseTileIndexPartial(index)
			if perr != nil {
				http.NotFound(w, req)
				return
			}
			if level == "entries" {
				b, err = r.ReadEntryBundle(ctx, i, part)
			} else {
				lv, lerr := layout.ParseTileLevel(level)
				if lerr != nil {
					http.NotFound(w, req)
					return
				}
				b, err = r.ReadTile(ctx, lv, i, part)
			}
			immutable = part == 0
		default:
			http.NotFound(w, req)
			return
		}
		switch {
		case errors.Is(err, os.ErrNotExist):
			http.NotFound(w, req)
			return
		case err != nil:
			// The engine is unreachable: a reader should retry, not conclude the tile is gone.
			w.Header().Set("Retry-After", "1")
			http.Error(w, "log storage unavailable", http.StatusServiceUnavailable)
			return
		}
		if p != "checkpoint" {
			w.Header().Set("Content-Type", "application/octet-stream")
			if immutable {
				w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
			}
		}
		http.ServeContent(w, req, "", time.Time{}, bytes.NewReader(b))
	})
}
