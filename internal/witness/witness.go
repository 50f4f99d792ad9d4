// Package witness is a C2SP tlog-witness: it cosigns a log's checkpoint only if it is
// signed by the log's key and provably extends the last checkpoint it cosigned for that
// log, so that a log cannot show different histories to different people.
//
// SPEC: https://c2sp.org/tlog-witness (add-checkpoint), https://c2sp.org/tlog-cosignature
// (cosignature/v1, Ed25519).
package witness

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// Limits on requests.
const (
	maxBody        = 1 << 20
	maxProofHashes = 64
)

// Config configures a witness.
type Config struct {
	Signer   note.Signer              // cosignature/v1 signer (formats/note.NewSignerForCosignatureV1)
	Logs     map[string]note.Verifier // origin -> the log's checkpoint key
	StateDir string                   // one state file per log; must survive restarts
	Logger   *slog.Logger
}

// Server implements POST /add-checkpoint.
type Server struct {
	signer note.Signer
	logs   map[string]note.Verifier
	dir    string
	log    *slog.Logger
	mu     sync.Mutex
}

// state is what the witness remembers per log: the last checkpoint it cosigned.
type state struct {
	Size       uint64 `json:"size"`
	Root       []byte `json:"root"`
	Checkpoint string `json:"checkpoint"`
}

// New checks cfg and creates the state directory.
func New(cfg Config) (*Server, error) {
	if cfg.Signer == nil || len(cfg.Logs) == 0 || cfg.StateDir == "" {
		return nil, errors.New("witness: signer, at least one log and a state directory are required")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("witness: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{signer: cfg.Signer, logs: cfg.Logs, dir: cfg.StateDir, log: cfg.Logger}, nil
}

func (s *Server) statePath(origin string) string {
	h := sha256.Sum256([]byte(origin))
	return filepath.Join(s.dir, hex.EncodeToString(h[:16])+".json")
}

func (s *Server) load(origin string) (state, error) {
	var st state
	b, err := os.ReadFile(s.statePath(origin))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

// httpError is an error with the status the protocol assigns to it.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func fail(status int, format string, args ...any) error {
	return &httpError{status: status, msg: fmt.Sprintf(format, args...)}
}

// ServeHTTP handles POST /add-checkpoint.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/add-checkpoint" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		http.Error(w, "request body too large or unreadable", http.StatusBadRequest)
		return
	}
	sig, conflictSize, err := s.AddCheckpoint(body)
	var he *httpError
	switch {
	case err == nil:
		w.Header().Set("Content-Type", "text/x.tlog.signature")
		w.Write(sig)
	case errors.As(err, &he) && he.status == http.StatusConflict:
		w.Header().Set("Content-Type", "text/x.tlog.size")
		w.WriteHeader(http.StatusConflict)
		fmt.Fprintf(w, "%d\n", conflictSize)
	case errors.As(err, &he):
		s.log.Warn("witness refused checkpoint", "status", he.status, "reason", he.msg)
		http.Error(w, he.msg, he.status)
	default:
		s.log.Error("witness failed", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
	}
}

// AddCheckpoint processes one request body and returns the cosignature line, or an error
// carrying the protocol's status (and, for 409, the size the witness holds).
func (s *Server) AddCheckpoint(body []byte) ([]byte, uint64, error) {
	oldSize, hashes, cpRaw, err := parseRequest(body)
	if err != nil {
		return nil, 0, fail(http.StatusBadRequest, "%v", err)
	}
	origin, _, _ := strings.Cut(string(cpRaw), "\n")
	v, ok := s.logs[origin]
	if !ok {
		return nil, 0, fail(http.StatusNotFound, "unknown log %q", origin)
	}
	n, err := note.Open(cpRaw, note.VerifierList(v))
	if err != nil {
		return nil, 0, fail(http.StatusForbidden, "checkpoint not signed by the log's key: %v", err)
	}
	var cp log.Checkpoint
	if _, err := cp.Unmarshal([]byte(n.Text)); err != nil {
		return nil, 0, fail(http.StatusBadRequest, "checkpoint: %v", err)
	}
	if oldSize > cp.Size {
		return nil, 0, fail(http.StatusBadRequest, "old size %d is larger than the checkpoint's %d", oldSize, cp.Size)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.load(origin)
	if err != nil {
		return nil, 0, err
	}
	if oldSize != st.Size {
		return nil, st.Size, fail(http.StatusConflict, "old size %d, witness holds %d", oldSize, st.Size)
	}
	if oldSize == 0 {
		if len(hashes) != 0 {
			return nil, 0, fail(http.StatusBadRequest, "proof given for old size 0")
		}
	} else if err := proof.VerifyConsistency(rfc6962.DefaultHasher, oldSize, cp.Size, hashes, st.Root, cp.Hash); err != nil {
		// A checkpoint of the same size with another root lands here too: a fork.
		return nil, 0, fail(http.StatusUnprocessableEntity, "checkpoint does not extend the one cosigned at size %d: %v", st.Size, err)
	}
	next, _ := json.Marshal(state{Size: cp.Size, Root: cp.Hash, Checkpoint: string(cpRaw)})
	if err := fsutil.WriteFileAtomic(s.statePath(origin), next, 0o600); err != nil {
		return nil, 0, err // not cosigned: the state must be durable first
	}
	signed, err := note.Sign(&note.Note{Text: n.Text}, s.signer)
	if err != nil {
		return nil, 0, err
	}
	_, sigs, _ := bytes.Cut(signed, []byte("\n\n"))
	return sigs, 0, nil
}

// parseRequest splits "old N\n" + base64 proof lines + "\n" + checkpoint.
func parseRequest(body []byte) (uint64, [][]byte, []byte, error) {
	br := bufio.NewReader(bytes.NewReader(body))
	first, err := br.ReadString('\n')
	if err != nil {
		return 0, nil, nil, errors.New("missing old size line")
	}
	num, ok := strings.CutPrefix(strings.TrimSuffix(first, "\n"), "old ")
	if !ok {
		return 0, nil, nil, errors.New(`first line must be "old <size>"`)
	}
	old, err := strconv.ParseUint(num, 10, 64)
	if err != nil || (len(num) > 1 && num[0] == '0') {
		return 0, nil, nil, fmt.Errorf("bad old size %q", num)
	}
	var hashes [][]byte
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return 0, nil, nil, errors.New("missing empty line before the checkpoint")
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			break
		}
		if len(hashes) == maxProofHashes {
			return 0, nil, nil, errors.New("too many proof lines")
		}
		h, err := base64.StdEncoding.Strict().DecodeString(line)
		if err != nil || len(h) != sha256.Size {
			return 0, nil, nil, errors.New("bad proof line")
		}
		hashes = append(hashes, h)
	}
	rest, _ := io.ReadAll(br)
	if len(rest) == 0 {
		return 0, nil, nil, errors.New("missing checkpoint")
	}
	return old, hashes, rest, nil
}
