package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/transparency-dev/tessera"
	"golang.org/x/mod/sumdb/note"

	"github.com/strongroom/strongroom/internal/redact"
)

// A witness is a third party, and what each one answers is judged here, whether or not its
// round met the policy. tessera returns a round's checkpoint as soon as the policy is met
// and drops the other witnesses' errors: in a 2-of-3 policy a witness answering with its
// real key's cosignature of a forked checkpoint went unseen while the other two made the
// quorum (outside round 42). The witness clients' transport (witnessTransport) has each
// answer judged as it is read, and says which witness misbehaved.

// witnessClient is the http.Client a log reaches its witnesses with: it follows no
// redirect — a witness answering 307 made the signer POST its request wherever the witness
// said, from inside the log's network (outside round 42) — and gives up after timeout
// (0: none; a round's context bounds it).
func witnessClient(rt http.RoundTripper, timeout time.Duration) *http.Client {
	return &http.Client{Transport: rt, Timeout: timeout, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse // the redirect is the answer: an unexpected status
	}}
}

// witnessTransport is every witness client's transport: it reads at most max bytes of an
// answer (tessera reads it whole: a hostile witness streamed 512 MiB into the signer's
// heap, outside round 41) and has each answer judged once it is read.
type witnessTransport struct {
	rt    http.RoundTripper
	max   int64
	judge *witnessJudge // nil: no witness policy, nothing to judge by
}

// witnessAnswer is one witness's answer as the transport saw it.
type witnessAnswer struct {
	url    string
	sent   []byte // the checkpoint the witness was asked to cosign (nil: not known)
	status int
	body   []byte // at most max bytes
	err    error  // the answer could not be read whole
}

// witnessRequestMax bounds the copy of a request kept to judge its answer (our own: a
// checkpoint and a consistency proof, a few KiB).
const witnessRequestMax = 1 << 20

func (w witnessTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	var sent []byte
	if r.GetBody != nil {
		if b, err := r.GetBody(); err == nil {
			all, _ := io.ReadAll(io.LimitReader(b, witnessRequestMax))
			b.Close()
			if i := bytes.Index(all, []byte("\n\n")); i >= 0 {
				sent = all[i+2:]
			}
		}
	}
	resp, err := w.rt.RoundTrip(r)
	if err != nil {
		return resp, err // tessera's error names it; a round without quorum says so
	}
	a := witnessAnswer{url: r.URL.String(), sent: sent, status: resp.StatusCode}
	resp.Body = &answerBody{ReadCloser: resp.Body, left: w.max, done: func(body []byte, rerr error) {
		a.body, a.err = body, rerr
		if w.judge != nil {
			w.judge.judge(a)
		}
	}}
	return resp, nil
}

// answerBody reads at most left bytes of an answer, keeping them; done is called once, at
// the first error (io.EOF included) or at Close.
type answerBody struct {
	io.ReadCloser
	left int64
	kept []byte
	once sync.Once
	done func(body []byte, err error)
}

var errWitnessAnswerTooLong = errors.New("audit: a witness's answer is over 64 KiB")

func (b *answerBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		b.finish(errWitnessAnswerTooLong)
		return 0, errWitnessAnswerTooLong
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	b.kept = append(b.kept, p[:n]...)
	if err != nil {
		b.finish(err)
	}
	return n, err
}

func (b *answerBody) Close() error {
	b.finish(nil)
	return b.ReadCloser.Close()
}

func (b *answerBody) finish(err error) {
	if errors.Is(err, io.EOF) {
		err = nil
	}
	b.once.Do(func() { b.done(b.kept, err) })
}

// witnessJudge says which witnesses answered wrongly, once for each new cause.
type witnessJudge struct {
	verifiers map[string]note.Verifier // by add-checkpoint URL
	log       interface {
		Error(string, ...any)
		Warn(string, ...any)
	}
	mu   sync.Mutex             // witnesses answer at once
	said map[string]string      // the last cause said, by witness
	bad  *prometheus.CounterVec // strongroom_audit_witness_bad_answers_total{witness}
}

func newWitnessJudge(g tessera.WitnessGroup, lg *slog.Logger) *witnessJudge {
	return &witnessJudge{verifiers: g.Endpoints(), log: lg, said: map[string]string{},
		bad: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strongroom_audit_witness_bad_answers_total",
			Help: "Witness answers that did not count, by witness (its key's name): a cosignature that does not verify for the checkpoint sent, a claim of a larger tree than the log's, a status other than 200 or 409, an answer that could not be read. Counted whether or not the round met the policy."},
			[]string{"witness"})}
}

// judge checks a witness's answer and says, with an ALERT for a forged cosignature or a
// larger tree and a WARN otherwise, that the witness answered wrongly (a witness answering
// well again is said no more until it errs again).
func (j *witnessJudge) judge(a witnessAnswer) {
	v := j.verifiers[a.url]
	if v == nil || errors.Is(a.err, context.Canceled) {
		return // not one of the policy's; or cut short once the policy was met
	}
	size, _ := checkpointSize(a.sent)
	name := v.Name()
	cause, alert := "", false
	switch {
	case a.err != nil:
		cause = "sent an answer that could not be read: " + a.err.Error()
	case a.status == http.StatusOK:
		if a.sent == nil {
			return
		}
		signed := append(append(make([]byte, 0, len(a.sent)+len(a.body)), a.sent...), a.body...)
		if _, err := note.Open(signed, note.VerifierList(v)); err != nil {
			cause, alert = "answered with a cosignature that does not verify for the checkpoint it was sent (a hostile or broken witness; the answer counts for nothing)", true
		}
	case a.status == http.StatusConflict:
		held, err := strconv.ParseUint(strings.TrimSpace(string(a.body)), 10, 64)
		if err == nil && a.sent != nil && held > size {
			cause, alert = fmt.Sprintf("claims to have cosigned a tree of %d entries, larger than the log's %d: a fork of this log, a database rolled back, or a lying witness", held, size), true
		}
		// Otherwise the usual 409: it holds another size, and tessera asks again with it.
	default:
		cause = fmt.Sprintf("answered HTTP %d", a.status)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if cause == "" {
		delete(j.said, name)
		return
	}
	j.bad.WithLabelValues(name).Inc()
	if j.said[name] == cause {
		return
	}
	j.said[name] = cause
	if alert {
		j.log.Error("ALERT audit log: witness "+name+" "+cause, "url", redact.URL(a.url), "size", size)
	} else {
		j.log.Warn("audit log: witness "+name+" "+cause, "url", redact.URL(a.url), "size", size)
	}
}
