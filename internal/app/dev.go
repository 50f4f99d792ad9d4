package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/custody"
	"github.com/strongroom/strongroom/internal/engineauth"
	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/gateway"
	"github.com/strongroom/strongroom/internal/inventory"
	"github.com/strongroom/strongroom/internal/launcher"
	"github.com/strongroom/strongroom/internal/refmodel"
	"github.com/strongroom/strongroom/internal/store"
)

// DevModel is the demo model `strongroom dev` synthesizes, seals and verifies: a ~15M
// parameter Llama-family transformer with a byte-level BPE tokenizer.
var DevModel = inventory.Meta{Name: "strongroom-demo", Version: "2.0.0", Classification: "public", Owner: "strongroom-dev", Env: "dev"}

// Dev does what `strongroom dev` does today: initialize the data directory if needed,
// synthesize the demo model, import it sealed (once), verify every file and return the
// inventory. Later issues add the gateway and the runtime to it.
func Dev(ctx context.Context, dataDir string, log *slog.Logger) (*App, []store.Version, error) {
	if _, err := os.Stat(filepath.Join(dataDir, config.FileName)); errors.Is(err, os.ErrNotExist) {
		if _, err := Init(ctx, dataDir, InitOptions{}); err != nil {
			return nil, nil, err
		}
		log.Info("initialized data directory", "dir", dataDir)
	}
	a, err := Open(ctx, dataDir, "", log)
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (*App, []store.Version, error) {
		a.Close()
		return nil, nil, err
	}
	_, err = a.Inventory.Get(ctx, DevModel.Name, DevModel.Version)
	if errors.Is(err, store.ErrNotFound) {
		src := filepath.Join(dataDir, "demo-model")
		os.RemoveAll(src)
		o := refmodel.SmallLlama()
		o.Name = DevModel.Name
		if err := refmodel.SynthesizeLlama(src, o); err != nil {
			return fail(err)
		}
		var v store.Version
		v, err = a.Inventory.Import(ctx, src, DevModel)
		// The plaintext demo directory is gone once sealed: weights are never kept in the clear.
		os.RemoveAll(src)
		if err == nil {
			// The demo's record: outputs watermarked per tenant (change it with `model set`).
			attrs := v.Attrs()
			attrs.Watermark = true
			_, err = a.Inventory.SetAttrs(ctx, DevModel.Name, DevModel.Version, attrs, "strongroom-dev")
		}
	}
	if err != nil {
		return fail(err)
	}
	if _, err := a.Inventory.Verify(ctx, DevModel.Name, DevModel.Version); err != nil {
		return fail(err)
	}
	vs, err := a.Inventory.List(ctx, "")
	if err != nil {
		return fail(err)
	}
	return a, vs, nil
}

// DevEnv are the machine-readable lines scripts rely on (DESIGN.md, "Dev default").
type DevEnv struct {
	DataDir, URL, APIKey, AdminURL, LogVKey string
	// The console's dev administrator: an API key and its TOTP secret (otpauth:// URL;
	// `strongroom dev code` prints the current code).
	ConsoleKey, ConsoleTOTP string
}

// Print writes them, then a curl example; the same lines, each with `export` and its
// value shell-quoted, go to DATA/dev.env (0600), so that `. strongroom-data/dev.env` puts
// them in a shell's environment and the programs it starts (an SDK reads
// OPENAI_BASE_URL and OPENAI_API_KEY, set there too).
func (e DevEnv) Print(w io.Writer) {
	abs, _ := filepath.Abs(e.DataDir)
	vars := [][2]string{{"STRONGROOM_URL", e.URL}, {"STRONGROOM_API_KEY", e.APIKey}, {"STRONGROOM_MODEL", DevModel.Name},
		{"STRONGROOM_ADMIN_URL", e.AdminURL}, {"STRONGROOM_LOG_URL", e.AdminURL + "/log/"}, {"STRONGROOM_LOG_VKEY", e.LogVKey},
		{"STRONGROOM_DATA", abs}, {"STRONGROOM_CONSOLE_URL", e.AdminURL + "/console/"}, {"STRONGROOM_CONSOLE_KEY", e.ConsoleKey},
		{"STRONGROOM_CONSOLE_TOTP", e.ConsoleTOTP}}
	var env, file strings.Builder
	for _, v := range vars {
		fmt.Fprintf(&env, "%s=%s\n", v[0], v[1])
		fmt.Fprintf(&file, "export %s=%s\n", v[0], shellQuote(v[1]))
	}
	fmt.Fprintf(&file, "export OPENAI_BASE_URL=%s\nexport OPENAI_API_KEY=%s\n", shellQuote(e.URL), shellQuote(e.APIKey))
	fsutil.WriteFileAtomic(filepath.Join(e.DataDir, "dev.env"), []byte(file.String()), 0o600)
	io.WriteString(w, env.String())
	fmt.Fprintf(w, "(in a shell: . %s)\n", filepath.Join(e.DataDir, "dev.env"))
	fmt.Fprintf(w, "\ntry: curl -s %s/chat/completions -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' -d '{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":16}'\n",
		e.URL, e.APIKey, DevModel.Name)
	fmt.Fprintf(w, "console: %s/console/ as %s with STRONGROOM_CONSOLE_KEY and the code from `strongroom dev code`\n", e.AdminURL, DevAdmin)
	fmt.Fprintf(w, "verify the log: strongroom audit verify --log %s/log/ --vkey '%s'\n(interrupt to stop)\n", e.AdminURL, e.LogVKey)
}

// shellQuote quotes v for a POSIX shell when it holds anything but plain characters.
func shellQuote(v string) string {
	if v != "" && strings.Trim(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:+=@,%") == "" {
		return v
	}
	return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
}

// DevKey is the dev principal's API key: the one the last run wrote to DATA/dev.env while
// it still authenticates and has a day left, else a new one (30 days). A rerun reuses it,
// so runs do not pile up valid keys.
func (a *App) DevKey(ctx context.Context) (string, error) {
	if tok := readDevEnv(filepath.Join(a.DataDir, "dev.env"))["STRONGROOM_API_KEY"]; tok != "" {
		if p, err := a.APIKeys().Authenticate(ctx, tok); err == nil && p.ID == "dev" {
			if k, err := a.Store.GetAPIKey(ctx, p.KeyID); err == nil && time.Until(k.ExpiresAt) > 24*time.Hour {
				return tok, nil
			}
		}
	}
	tok, _, err := a.CreateKey(ctx, "dev", 30*24*time.Hour, nil)
	return tok, err
}

// DevAdmin is the console administrator `strongroom dev` creates.
const DevAdmin = "dev-admin"

// DevConsoleLogin is the dev administrator's API key and TOTP secret: the ones the last run
// wrote to DATA/dev.env while they still work, else new ones.
func (a *App) DevConsoleLogin(ctx context.Context) (key, totpURL string, err error) {
	env := readDevEnv(filepath.Join(a.DataDir, "dev.env"))
	if _, err := a.Store.GetPrincipal(ctx, DevAdmin); err != nil {
		if err := a.AddPrincipal(ctx, store.Principal{ID: DevAdmin, Tenant: "dev", Roles: []string{"admin"}, Country: "US"}); err != nil {
			return "", "", err
		}
	}
	key = env["STRONGROOM_CONSOLE_KEY"]
	if p, err := a.APIKeys().Authenticate(ctx, key); err != nil || p.ID != DevAdmin {
		if key, _, err = a.CreateKey(ctx, DevAdmin, 30*24*time.Hour, nil); err != nil {
			return "", "", err
		}
	}
	totpURL = env["STRONGROOM_CONSOLE_TOTP"]
	if _, err := a.Store.GetTOTP(ctx, DevAdmin); err != nil || totpURL == "" {
		svc, err := a.Custody(ctx)
		if err != nil {
			return "", "", err
		}
		if totpURL, err = svc.EnrollTOTP(ctx, DevAdmin); err != nil {
			return "", "", err
		}
	}
	return key, totpURL, nil
}

// DevCode is the current TOTP code of the dev administrator (from DATA/dev.env).
func DevCode(dataDir string, now time.Time) (string, error) {
	u := readDevEnv(filepath.Join(dataDir, "dev.env"))["STRONGROOM_CONSOLE_TOTP"]
	if u == "" {
		return "", fmt.Errorf("no STRONGROOM_CONSOLE_TOTP in %s: run strongroom dev first", filepath.Join(dataDir, "dev.env"))
	}
	k, err := otp.NewKeyFromURL(u)
	if err != nil {
		return "", err
	}
	return totp.GenerateCodeCustom(k.Secret(), now, totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
}

// readDevEnv reads NAME=VALUE lines (with or without "export ", values as shellQuote
// writes them); a missing or unreadable file is empty.
func readDevEnv(path string) map[string]string {
	out := map[string]string{}
	b, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok {
			continue
		}
		if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
			v = strings.ReplaceAll(v[1:len(v)-1], `'\''`, "'")
		}
		out[k] = v
	}
	return out
}

// StartDevRuntime runs the demo model the way a production runtime runs: the custody API
// on an ephemeral loopback port, a runtime identity joined once into DATA/runtime, and
// `strongroom run` semantics in process — a lease, the weights decrypted into memfds, and
// `strongroom refmodel serve` over them as the engine, watermarking per tenant. It returns
// the engine's base URL (ending in /v1) and a function that stops it.
func (a *App) StartDevRuntime(ctx context.Context) (gateway.Route, func(), error) {
	svc, err := a.Custody(ctx)
	if err != nil {
		return gateway.Route{}, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	fail := func(err error) (gateway.Route, func(), error) {
		cancel()
		return gateway.Route{}, nil, err
	}
	go svc.Run(ctx)
	tc, err := a.CustodyTLS("127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	cln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	guard, err := a.NetGuard()
	if err != nil {
		cln.Close()
		return fail(err)
	}
	csrv := guard.Server(svc.Handler(), tc)
	go csrv.ServeTLS(guard.Listener(cln), "", "")
	custodyURL := "https://" + cln.Addr().String()

	idDir := filepath.Join(a.DataDir, "runtime")
	id, err := custody.LoadIdentity(idDir)
	if err == nil {
		id.Server = custodyURL // the dev control plane listens on a new port each run
	} else {
		if err := a.AddPrincipal(ctx, store.Principal{ID: "strongroom-dev", Tenant: "dev", Roles: []string{"custodian"}, Country: "US"}); err != nil {
			return fail(err)
		}
		tok, err := svc.CreateJoinToken(ctx, custody.Attributes{Env: "dev", Region: "local", Jurisdiction: "US", Host: "localhost", Owner: "strongroom-dev"}, 10*time.Minute)
		if err != nil {
			return fail(err)
		}
		if id, err = custody.Join(ctx, custodyURL, tok.String(), idDir); err != nil {
			return fail(err)
		}
	}
	// The engine's port, chosen here so the gateway knows where to send requests.
	eln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	engineAddr := eln.Addr().String()
	eln.Close()
	secret, err := a.WatermarkSecret()
	if err != nil {
		return fail(err)
	}
	// One secret per run between the gateway and the engine (package engineauth).
	engineKey := make([]byte, 32)
	rand.Read(engineKey)
	engineKeyHex := hex.EncodeToString(engineKey)
	clear(engineKey)
	env := []string{"STRONGROOM_WATERMARK_SECRET=" + hex.EncodeToString(secret), engineauth.KeyEnv + "=" + engineKeyHex}
	clear(secret)
	self := os.Args[0] // the strongroom binary (under testscript, the link that dispatches to it)
	runDir := filepath.Join(a.DataDir, "run")
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return fail(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		out, err := launcher.Run(ctx, launcher.Config{Identity: id, Model: DevModel.Name, Version: DevModel.Version, Log: a.Log,
			Command: []string{self, "refmodel", "serve", "--model-dir", "{weights_dir}", "--listen", engineAddr, "--name", DevModel.Name, "--watermark", "greenlist"},
			Env:     env, KillGrace: 2 * time.Second, Stdout: io.Discard, Stderr: os.Stderr,
			TempDir: runDir}) // the /proc/self/fd links stay inside the data directory too
		if err != nil || (out.Code != 0 && ctx.Err() == nil) {
			a.Log.Error("dev runtime stopped", "reason", out.Reason, "code", out.Code, "err", err)
		}
	}()
	stop := func() {
		cancel()
		<-done
		csrv.Close()
	}
	// Wait for the engine to answer (it loads 60 MB of weights from its memfds; a loaded
	// machine running a race-enabled build takes long): readiness, with a generous limit.
	for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); {
		if resp, err := http.Get("http://" + engineAddr + "/v1/models"); err == nil {
			resp.Body.Close()
			return gateway.Route{Model: DevModel.Name, Upstreams: []string{"http://" + engineAddr + "/v1"}, UpstreamKey: engineKeyHex}, stop, nil
		}
		select {
		case <-done:
			stop()
			return gateway.Route{}, nil, errors.New("dev runtime: the engine stopped before serving (see the log)")
		case <-time.After(100 * time.Millisecond):
		}
	}
	stop()
	return gateway.Route{}, nil, errors.New("dev runtime: the engine did not start within 5 minutes")
}
