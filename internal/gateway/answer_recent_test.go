package gateway

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/strongroom/strongroom/internal/h1"
)

// answerVariants repeat, change, move and drop one another's header lines at the same
// positions: what an engine connection's remembered strings (h1.Recent) must never answer
// with a stale one.
var answerVariants = []string{
	"HTTP/1.1 200 OK\r\nDate: Sat, 05 Dec 2026 01:00:00 GMT\r\nContent-Type: application/json\r\nX-Engine-Id: e1\r\nContent-Length: 2\r\n\r\n{}",
	"HTTP/1.1 200 OK\r\nDate: Sat, 05 Dec 2026 01:00:00 GMT\r\nContent-Type: application/json\r\nX-Engine-Id: e1\r\nContent-Length: 2\r\n\r\n{}",
	"HTTP/1.1 200 OK\r\nDate: Sat, 05 Dec 2026 01:00:01 GMT\r\nContent-Type: application/json\r\nX-Engine-Id: e2\r\nContent-Length: 3\r\n\r\n{} ",
	"HTTP/1.1 200 OK\r\nDate: Sat, 05 Dec 2026 01:00:01 GMT\r\nContent-Type: application/json\r\nX-Engine-Ie: e2\r\nContent-Length: 2\r\n\r\n{}",
	"HTTP/1.1 429 Too Many\r\nx-engine-id: e1\r\nX-Engine-Id: e3\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
}

// TestAnswerRecentNeverStale: answers read one after another on one engine connection
// are each read as net/http reads that answer alone — status and every header.
func TestAnswerRecentNeverStale(t *testing.T) {
	for _, order := range [][]int{{0, 1, 2, 3, 4, 5}, {5, 4, 3, 2, 1, 0}, {0, 3, 0, 2, 0, 4, 1, 3, 3, 5, 0}} {
		var stream strings.Builder
		for _, i := range order {
			stream.WriteString(answerVariants[i])
		}
		br := bufio.NewReader(strings.NewReader(stream.String()))
		var recent h1.Recent
		for k, i := range order {
			got, err := readAnswer(br, &recent)
			if err != nil {
				t.Fatalf("order %v, answer %d: %v", order, k, err)
			}
			body, err := io.ReadAll(got.Body)
			if err != nil {
				t.Fatal(err)
			}
			want, err := http.ReadResponse(bufio.NewReader(strings.NewReader(answerVariants[i])), nil)
			if err != nil {
				t.Fatal(err)
			}
			wbody, _ := io.ReadAll(want.Body)
			if got.StatusCode != want.StatusCode || got.Status != want.Status || !bytes.Equal(body, wbody) {
				t.Errorf("order %v, answer %d (variant %d): status %q body %q, net/http %q %q", order, k, i, got.Status, body, want.Status, wbody)
			}
			for _, name := range slices.Sorted(maps.Keys(want.Header)) {
				if !slices.Equal(got.Header[name], want.Header[name]) {
					t.Errorf("order %v, answer %d (variant %d): %s %q, net/http %q", order, k, i, name, got.Header[name], want.Header[name])
				}
			}
			if len(got.Header) != len(want.Header) {
				t.Errorf("order %v, answer %d (variant %d): headers %s, net/http %s", order, k, i, fmt.Sprint(got.Header), fmt.Sprint(want.Header))
			}
		}
	}
}
