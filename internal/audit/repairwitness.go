package audit

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// A repair rewrites the unsigned tail from its floor: the largest tree the log key signed
// that the repairing replica knows (floorTree). Both of its sources can be behind: a data
// directory that never saw the latest checkpoint, and the database's Checkpoint row, which
// someone with write access can put an older authentic checkpoint back into. A floor below
// the log's real one would let the repair rewrite entries an outsider already holds a
// signed checkpoint for. The witnesses saw every checkpoint published (tessera publishes
// none without their quorum), so before the repair changes anything each configured
// witness is asked for the tree it holds, over its own protocol (C2SP tlog-witness): an
// add-checkpoint of the floor's tree with "old" set to the floor. A witness holding that
// very tree cosigns it again (200); one holding another size answers 409 with that size,
// and one holding a smaller tree is then sent the floor's tree with a consistency proof
// from its size, which it cosigns (moving it to the floor: an authentic checkpoint); one
// holding another tree answers 422 (a fork). Only a 200 carrying the witness's valid
// cosignature of the floor's tree counts as an answer: a 409 or 422 is unauthenticated, so
// one can only make the repair refuse, never let it through. The repair goes on when at
// least the policy's quorum answered and none holds a larger tree or another tree.

// WitnessCheck is what the witnesses said of a repair's floor.
type WitnessCheck struct {
	Configured int      // witnesses in the log's policy (0: none, nothing was checked)
	Quorum     int      // how many must cosign the floor's tree
	Answered   int      // witnesses that cosigned it
	Unanswered []string // "URL: why" for each that did not
}

// String is the check for a person: one line.
func (w WitnessCheck) String() string {
	if w.Configured == 0 {
		return "no witnesses configured: the floor was not checked against any"
	}
	return fmt.Sprintf("%d of %d witnesses (quorum %d) cosigned the floor's tree and hold none past it", w.Answered, w.Configured, w.Quorum)
}

// checkFloorWitnessed asks every configured witness whether it holds a tree past the
// repair's floor (see above); proof gives the consistency proof from a smaller tree to the
// floor's. An error means the repair must not go on.
func (l *Log) checkFloorWitnessed(ctx context.Context, floor uint64, root []byte, proof func(from uint64) ([][]byte, error)) (WitnessCheck, error) {
	var wc WitnessCheck
	if l.witnesses == nil {
		return wc, nil
	}
	ends := l.witnesses.Endpoints()
	urls := slices.Sorted(maps.Keys(ends))
	wc.Configured, wc.Quorum = len(urls), max(l.witnesses.N, 1)
	if wc.Configured == 0 {
		return wc, nil
	}
	if floor == 0 {
		root = rfc6962.DefaultHasher.EmptyRoot()
	}
	signed, err := note.Sign(&note.Note{Text: string(log.Checkpoint{Origin: l.origin, Size: floor, Hash: root}.Marshal())}, l.signer.Signer)
	if err != nil {
		return wc, fmt.Errorf("audit: repair: signing the floor's checkpoint for the witnesses: %w", err)
	}
	w := witnessProbe{client: &http.Client{Timeout: max(l.witnessTimeout, 3*time.Second)}, cp: signed, floor: floor}
	for _, u := range urls {
		w.url, w.key = u, ends[u]
		why, err := w.ask(ctx, proof)
		if err != nil {
			return wc, err
		}
		if why != "" {
			wc.Unanswered = append(wc.Unanswered, u+": "+why)
			continue
		}
		wc.Answered++
	}
	if wc.Answered < wc.Quorum {
		return wc, fmt.Errorf("%w: repair: only %d of %d witnesses cosigned the floor's tree (quorum %d), so the floor (size %d) cannot be checked against the published log: %s",
			ErrUnavailable, wc.Answered, wc.Configured, wc.Quorum, floor, strings.Join(wc.Unanswered, "; "))
	}
	return wc, nil
}

// witnessProbe asks one witness about the floor's tree.
type witnessProbe struct {
	client *http.Client
	cp     []byte // the floor's checkpoint, signed by the log key
	floor  uint64
	url    string
	key    note.Verifier // the witness's cosignature key
}

// ask returns "" when the witness cosigned the floor's tree, else why its answer does not
// count; an error (a larger tree, a fork) means the repair must not go on.
func (w witnessProbe) ask(ctx context.Context, proof func(from uint64) ([][]byte, error)) (string, error) {
	status, b, why := w.post(ctx, w.floor, nil)
	if status == http.StatusConflict {
		held, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		switch {
		case perr != nil || held == w.floor:
			return "409 without a usable tree size", nil
		case held > w.floor:
			return "", securityf("repair: witness %s holds a checkpoint of size %d, past this repair's floor %d: the floor (this replica's trusted tree or the database's Checkpoint row) is behind the published log — put the latest signed checkpoint back in the Checkpoint row, then repair", w.url, held, w.floor)
		}
		var p [][]byte
		if held > 0 {
			var err error
			if p, err = proof(held); err != nil {
				return "", fmt.Errorf("audit: repair: a consistency proof from %d to the floor %d: %w", held, w.floor, err)
			}
		}
		status, b, why = w.post(ctx, held, p)
		if status == http.StatusConflict {
			if n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); n > w.floor {
				return "", securityf("repair: witness %s holds a checkpoint of size %d, past this repair's floor %d: put the latest signed checkpoint back in the Checkpoint row, then repair", w.url, n, w.floor)
			}
		}
	}
	switch status {
	case http.StatusOK:
		if _, err := note.Open(append(append(slices.Clip(w.cp[:bytes.Index(w.cp, []byte("\n\n"))+1]), '\n'), b...), note.VerifierList(w.key)); err != nil {
			return "200 without a valid cosignature of the floor's tree", nil
		}
		return "", nil
	case http.StatusUnprocessableEntity:
		return "", securityf("repair: witness %s does not take the floor's tree (size %d) as an extension of the tree it holds (422): a fork, or tiles under the floor altered; nothing was changed", w.url, w.floor)
	case 0:
		return why, nil
	default:
		return fmt.Sprintf("status %d", status), nil
	}
}

// post sends an add-checkpoint request (old size old, its proof) and returns the status and
// body; status 0 with why when the witness could not be reached.
func (w witnessProbe) post(ctx context.Context, old uint64, proof [][]byte) (int, []byte, string) {
	body := fmt.Appendf(nil, "old %d\n", old)
	for _, h := range proof {
		body = base64.StdEncoding.AppendEncode(body, h)
		body = append(body, '\n')
	}
	body = append(append(body, '\n'), w.cp...)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err.Error()
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return 0, nil, "unreachable: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, b, ""
}
