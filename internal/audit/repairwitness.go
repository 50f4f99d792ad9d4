package audit

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera"
	"golang.org/x/mod/sumdb/note"

	"github.com/strongroom/strongroom/internal/redact"
)

// A repair rewrites the unsigned tail from its floor: the largest tree the log key signed
// that the repairing replica knows (floorTree). Both of its sources can be behind: a data
// directory that never saw the latest checkpoint, and the database's Checkpoint row, which
// someone with write access can put an older authentic checkpoint back into. A floor below
// the log's real one would let the repair rewrite entries an outsider already holds a
// signed checkpoint for. The witnesses saw every checkpoint published (tessera publishes
// none without their policy met), so before the repair changes anything each witness of
// the policy is asked for the tree it holds, over its own protocol (C2SP tlog-witness):
// an add-checkpoint of the floor's tree with "old" set to the floor. A witness holding
// that very tree cosigns it again (200); one holding another size answers 409 with that
// size, and one holding a smaller tree is then sent the floor's tree with a consistency
// proof from its size, which it cosigns (moving it to the floor: an authentic checkpoint);
// one holding another tree answers 422 (a fork).
//
// What counts, against an attacker who can answer in a witness's place (plain HTTP):
//   - only a 200 carrying the witness's valid cosignature of the checkpoint sent, which
//     carries a fresh random extension line ("strongroom-repair-probe NONCE"; cosignature/v1
//     signs every line of the note), so a cosignature from the Checkpoint row or one seen
//     on the wire earlier cannot be replayed; 409 and 422 are unauthenticated, so one can
//     only make the repair refuse;
//   - the witnesses that cosigned must meet the policy, and must meet every set that could
//     have published a checkpoint: the others — unreachable, refusing, impersonated — must
//     not satisfy the policy by themselves (with a 1-of-2 policy both must answer: the one
//     not asked could have cosigned a larger tree alone). The policy is evaluated as
//     tessera does, nested groups included.
// The repair goes on only then, and when no witness holds a larger tree or another tree.

// WitnessCheck is what the witnesses said of a repair's floor.
type WitnessCheck struct {
	Configured int      // witnesses in the log's policy (0: none, nothing was checked)
	Unbound    bool     // the policy needs no cosignature: publication proves nothing, nothing was checked
	Answered   int      // witnesses that cosigned the floor's tree
	Unanswered []string // "URL: why" for each that did not
}

// String is the check for a person: one line.
func (w WitnessCheck) String() string {
	switch {
	case w.Configured == 0:
		return "no witnesses configured: the floor was not checked against any"
	case w.Unbound:
		return "the witness policy needs no cosignature: the floor was not checked against the witnesses"
	}
	return fmt.Sprintf("%d of %d witnesses cosigned the floor's tree and hold none past it (they meet the policy; the others cannot alone)", w.Answered, w.Configured)
}

// checkFloorWitnessed asks every witness of the policy whether it holds a tree past the
// repair's floor (see above); proof gives the consistency proof from a smaller tree to the
// floor's. An error means the repair must not go on.
func (l *Log) checkFloorWitnessed(ctx context.Context, floor uint64, root []byte, proof func(from uint64) ([][]byte, error)) (WitnessCheck, error) {
	var wc WitnessCheck
	if l.witnesses == nil {
		return wc, nil
	}
	ends := l.witnesses.Endpoints()
	urls := slices.Sorted(maps.Keys(ends))
	wc.Configured = len(urls)
	if wc.Configured == 0 {
		return wc, nil
	}
	if policyMet(*l.witnesses, func(string) bool { return false }) {
		wc.Unbound = true
		return wc, nil
	}
	if floor == 0 {
		root = rfc6962.DefaultHasher.EmptyRoot()
	}
	var nonce [16]byte
	rand.Read(nonce[:])
	text := string(log.Checkpoint{Origin: l.origin, Size: floor, Hash: root}.Marshal()) + "strongroom-repair-probe " + hex.EncodeToString(nonce[:]) + "\n"
	signed, err := note.Sign(&note.Note{Text: text}, l.signer.Signer)
	if err != nil {
		return wc, fmt.Errorf("audit: repair: signing the floor's checkpoint for the witnesses: %w", err)
	}
	w := witnessProbe{client: witnessClient(http.DefaultTransport, max(l.witnessTimeout, 3*time.Second)), cp: signed, floor: floor}
	cosigned := map[string]bool{}
	for _, u := range urls {
		w.url, w.key, w.name = u, ends[u], redact.URL(u)
		why, err := w.ask(ctx, proof)
		if err != nil {
			return wc, err
		}
		if why != "" {
			wc.Unanswered = append(wc.Unanswered, w.name+": "+why)
			continue
		}
		cosigned[u] = true
		wc.Answered++
	}
	if !policyMet(*l.witnesses, func(u string) bool { return cosigned[u] }) || policyMet(*l.witnesses, func(u string) bool { return !cosigned[u] }) {
		return wc, fmt.Errorf("%w: repair: %d of %d witnesses cosigned the floor's tree (size %d); the repair needs the policy met by those that did, and not by those that did not (they could have cosigned a larger tree by themselves): %s",
			ErrUnavailable, wc.Answered, wc.Configured, floor, strings.Join(wc.Unanswered, "; "))
	}
	return wc, nil
}

// policyMet evaluates a witness policy as tessera does (WitnessGroup.Satisfied), with
// in saying which witnesses (by add-checkpoint URL) signed. A component of a kind it does
// not know counts as met: the check fails closed.
func policyMet(c any, in func(url string) bool) bool {
	switch c := c.(type) {
	case tessera.Witness:
		return in(c.URL)
	case tessera.WitnessGroup:
		if c.N <= 0 {
			return true
		}
		n := 0
		for _, sub := range c.Components {
			if policyMet(sub, in) {
				n++
			}
		}
		return n >= c.N
	case *tessera.WitnessGroup:
		return c == nil || policyMet(*c, in)
	default:
		return true
	}
}

// witnessProbe asks one witness about the floor's tree.
type witnessProbe struct {
	client *http.Client
	cp     []byte // the floor's checkpoint, signed by the log key
	floor  uint64
	url    string
	name   string        // url without its password, for messages
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
			return "", securityf("repair: witness %s holds a checkpoint of size %d, past this repair's floor %d: the floor (this replica's trusted tree or the database's Checkpoint row) is behind the published log — put the latest signed checkpoint back in the Checkpoint row, then repair", w.name, held, w.floor)
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
				return "", securityf("repair: witness %s holds a checkpoint of size %d, past this repair's floor %d: put the latest signed checkpoint back in the Checkpoint row, then repair", w.name, n, w.floor)
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
		return "", securityf("repair: witness %s does not take the floor's tree (size %d) as an extension of the tree it holds (422): a fork, or tiles under the floor altered; nothing was changed", w.name, w.floor)
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
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its text names the URL, credentials included
		}
		return 0, nil, "unreachable: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, b, ""
}
