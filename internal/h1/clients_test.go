package h1

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
)

// hashEcho answers with the request's method, path, body length and body digest, and
// streams a second line after a flush when asked (?stream=1).
var hashEcho = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "body: "+err.Error(), 400)
		return
	}
	sum := sha256.Sum256(b)
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "%s %s %d %s\n", r.Method, r.URL.Path, len(b), hex.EncodeToString(sum[:4]))
	if r.URL.Query().Get("stream") == "1" {
		w.(http.Flusher).Flush()
		io.WriteString(w, "second\n")
	}
})

func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:4])
}

// TestOutsideClients: clients that are not Go's — curl, Python's http.client, Node's
// fetch — send their usual requests (JSON posts, chunked uploads, Expect: 100-continue,
// HTTP/1.0, HEAD, several requests on one connection, a streamed answer) and read
// h1's answers as they should.
func TestOutsideClients(t *testing.T) {
	_, addr := serve(t, hashEcho, nil)
	base := "http://" + addr
	big := strings.Repeat("y", 1<<20+7)
	run := func(name string, args ...string) string {
		t.Helper()
		if _, err := exec.LookPath(name); err != nil {
			t.Skipf("%s not installed", name)
		}
		cmd := exec.Command(name, args...)
		cmd.Stdin = strings.NewReader(big)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	t.Run("curl", func(t *testing.T) {
		for _, c := range []struct {
			args []string
			want string
		}{
			{[]string{"-sS", "-d", `{"model":"m"}`, "-H", "Content-Type: application/json", base + "/v1/chat/completions"}, "POST /v1/chat/completions 13 " + digest(`{"model":"m"}`) + "\n"},
			{[]string{"-sS", "-H", "Transfer-Encoding: chunked", "--data-binary", "@-", base + "/up"}, "POST /up 1048583 " + digest(big) + "\n"},
			{[]string{"-sS", "-H", "Expect: 100-continue", "--data-binary", "@-", base + "/expect"}, "POST /expect 1048583 " + digest(big) + "\n"},
			{[]string{"-sS", "--http1.0", base + "/old"}, "GET /old 0 " + digest("") + "\n"},
			{[]string{"-sS", "-N", base + "/s?stream=1"}, "GET /s 0 " + digest("") + "\nsecond\n"},
			{[]string{"-sS", "-I", base + "/head"}, "HTTP/1.1 200 OK\r\n"},
		} {
			if out := run("curl", c.args...); !strings.HasPrefix(out, c.want) {
				t.Errorf("curl %v: %q, want %q", c.args, out, c.want)
			}
		}
		// Three URLs in one run share one connection.
		out := run("curl", "-sSv", base+"/a", base+"/b", base+"/c")
		if strings.Count(out, "Re-using existing connection") != 2 || !strings.Contains(out, "GET /c 0") {
			t.Errorf("curl keep-alive:\n%s", out)
		}
	})
	t.Run("python", func(t *testing.T) {
		script := `
import http.client, sys, hashlib
c = http.client.HTTPConnection(sys.argv[1])
for i in range(3):
    c.request("POST", "/py/%d" % i, body=b'{"i":%d}' % i, headers={"Content-Type": "application/json"})
    r = c.getresponse(); print(r.status, r.read().decode().strip())
def gen():
    yield b"ab"; yield b"cd"
c.request("POST", "/chunked", body=gen(), encode_chunked=True)
r = c.getresponse(); print(r.status, r.read().decode().strip())
`
		out := run("python3", "-c", script, addr)
		want := fmt.Sprintf("200 POST /py/0 7 %s\n200 POST /py/1 7 %s\n200 POST /py/2 7 %s\n200 POST /chunked 4 %s\n",
			digest(`{"i":0}`), digest(`{"i":1}`), digest(`{"i":2}`), digest("abcd"))
		if out != want {
			t.Errorf("python:\n%s\nwant\n%s", out, want)
		}
	})
	t.Run("node", func(t *testing.T) {
		script := `
const base = process.argv[1];
for (let i = 0; i < 2; i++) {
  const r = await fetch(base + "/node/" + i, {method: "POST", body: JSON.stringify({i}), headers: {"content-type": "application/json"}});
  console.log(r.status, (await r.text()).trim());
}
const s = await fetch(base + "/s?stream=1");
let text = ""; for await (const chunk of s.body) text += Buffer.from(chunk).toString();
console.log(s.status, JSON.stringify(text));
`
		out := run("node", "--input-type=module", "-e", script, base)
		want := fmt.Sprintf("200 POST /node/0 7 %s\n200 POST /node/1 7 %s\n200 %q\n", digest(`{"i":0}`), digest(`{"i":1}`),
			"GET /s 0 "+digest("")+"\nsecond\n")
		if out != want {
			t.Errorf("node:\n%s\nwant\n%s", out, want)
		}
	})
}
