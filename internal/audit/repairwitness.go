package audit

import (
	"bytes"
	"context"
	"fmt"
	"io"
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
// add-checkpoint for the floor's tree with "old" set to the floor. A witness holding that
// very tree cosigns it again (200: nothing changes); one holding another size answers
// 409 with that size; one holding another tree of that size answers 422 (a fork). The
// repair goes on only when at least the policy's quorum answered and none holds a larger
// tree or another tree at the floor.

// WitnessCheck is what the witnesses said of a repair's floor.
type WitnessCheck struct {
	Configured int      // witnesses in the log's policy (0: none, nothing was checked)
	Quorum     int      // how many must answer
	Answered   int      // witnesses that hold the floor's tree or a smaller one
	Unanswered []string // "URL: why" for each that did not answer usably
}

// String is the check for a person: one line.
func (w WitnessCheck) String() string {
	if w.Configured == 0 {
		return "no witnesses configured: the floor was not checked against any"
	}
	return fmt.Sprintf("%d of %d witnesses (quorum %d) hold no checkpoint past the floor", w.Answered, w.Configured, w.Quorum)
}

// witnessProbeBody is an add-checkpoint request body for the tree (size, root), signed by
// s, with old size = size: it changes no witness's state.
func witnessProbeBody(s note.Signer, origin string, size uint64, root []byte) ([]byte, error) {
	if size == 0 {
		root = rfc6962.DefaultHasher.EmptyRoot()
	}
	signed, err := note.Sign(&note.Note{Text: string(log.Checkpoint{Origin: origin, Size: size, Hash: root}.Marshal())}, s)
	if err != nil {
		return nil, err
	}
	return append(fmt.Appendf(nil, "old %d\n\n", size), signed...), nil
}

// checkFloorWitnessed asks every configured witness whether it holds a tree past the
// repair's floor (see above). An error means the repair must not go on.
func (l *Log) checkFloorWitnessed(ctx context.Context, floor uint64, root []byte) (WitnessCheck, error) {
	var wc WitnessCheck
	if l.witnesses == nil {
		return wc, nil
	}
	urls := make([]string, 0, len(l.witnesses.Endpoints()))
	for u := range l.witnesses.Endpoints() {
		urls = append(urls, u)
	}
	slices.Sort(urls)
	wc.Configured, wc.Quorum = len(urls), max(l.witnesses.N, 1)
	if wc.Configured == 0 {
		return wc, nil
	}
	body, err := witnessProbeBody(l.signer.Signer, l.origin, floor, root)
	if err != nil {
		return wc, fmt.Errorf("audit: repair: signing the floor's checkpoint for the witnesses: %w", err)
	}
	client := &http.Client{Timeout: max(l.witnessTimeout, 3*time.Second)}
	for _, u := range urls {
		size, why, err := probeWitness(ctx, client, u, body, floor)
		switch {
		case err != nil:
			return wc, err
		case why != "":
			wc.Unanswered = append(wc.Unanswered, u+": "+why)
		case size > floor:
			return wc, securityf("repair: witness %s holds a checkpoint of size %d, past this repair's floor %d: the floor (this replica's trusted tree or the database's Checkpoint row) is behind the published log — put the latest signed checkpoint back in the Checkpoint row, then repair", u, size, floor)
		default:
			wc.Answered++
		}
	}
	if wc.Answered < wc.Quorum {
		return wc, fmt.Errorf("%w: repair: only %d of %d witnesses answered (quorum %d), so the floor (size %d) cannot be checked against the published log: %s",
			ErrUnavailable, wc.Answered, wc.Configured, wc.Quorum, floor, strings.Join(wc.Unanswered, "; "))
	}
	return wc, nil
}

// probeWitness sends body to a witness's add-checkpoint URL and returns the size it holds
// (floor on 200), or why its answer is unusable; an error is a fork at the floor.
func probeWitness(ctx context.Context, client *http.Client, url string, body []byte, floor uint64) (size uint64, why string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err.Error(), nil
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "unreachable: " + err.Error(), nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	switch resp.StatusCode {
	case http.StatusOK:
		return floor, "", nil
	case http.StatusConflict:
		n, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if perr != nil {
			return 0, "409 without a tree size", nil
		}
		return n, "", nil
	case http.StatusUnprocessableEntity:
		return 0, "", securityf("repair: witness %s holds another tree of size %d than the floor's (a fork): nothing was changed", url, floor)
	default:
		return 0, fmt.Sprintf("status %d", resp.StatusCode), nil
	}
}
