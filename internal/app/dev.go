package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/inventory"
	"github.com/strongroom/strongroom/internal/refmodel"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/watermark"
)

// DevModel is the demo model `strongroom dev` synthesizes, seals and verifies.
var DevModel = inventory.Meta{Name: "strongroom-demo", Version: "1.0.0", Classification: "public", Owner: "strongroom-dev", Env: "dev"}

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
		o := refmodel.DefaultSynth()
		o.Name = DevModel.Name
		if err := refmodel.Synthesize(src, o); err != nil {
			return fail(err)
		}
		_, err = a.Inventory.Import(ctx, src, DevModel)
		// The plaintext demo directory is gone once sealed: weights are never kept in the clear.
		os.RemoveAll(src)
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
}

// Print writes them, then a curl example; the KEY=VALUE lines also go to DATA/dev.env
// (0600) for scripts to source.
func (e DevEnv) Print(w io.Writer) {
	abs, _ := filepath.Abs(e.DataDir)
	env := fmt.Sprintf("STRONGROOM_URL=%s\nSTRONGROOM_API_KEY=%s\nSTRONGROOM_MODEL=%s\nSTRONGROOM_ADMIN_URL=%s\nSTRONGROOM_LOG_URL=%s/log/\nSTRONGROOM_LOG_VKEY=%s\nSTRONGROOM_DATA=%s\n",
		e.URL, e.APIKey, DevModel.Name, e.AdminURL, e.AdminURL, e.LogVKey, abs)
	fsutil.WriteFileAtomic(filepath.Join(e.DataDir, "dev.env"), []byte(env), 0o600)
	io.WriteString(w, env)
	fmt.Fprintf(w, "\ntry: curl -s %s/chat/completions -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' -d '{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":16}'\n",
		e.URL, e.APIKey, DevModel.Name)
	fmt.Fprintf(w, "verify the log: strongroom audit verify --log %s/log/ --vkey '%s'\n(interrupt to stop)\n", e.AdminURL, e.LogVKey)
}

// StartDevRuntime loads the demo model's weights from its sealed file into memory (never
// to disk) and serves them with the reference runtime on a loopback port. It returns the
// runtime's base URL (ending in /v1). Issue 5 replaces this with leased custody.
func (a *App) StartDevRuntime(ctx context.Context) (string, func(), error) {
	v, err := a.Inventory.Get(ctx, DevModel.Name, DevModel.Version)
	if err != nil {
		return "", nil, err
	}
	var weights *store.File
	for i := range v.Files {
		if v.Files[i].Path == "model.safetensors" {
			weights = &v.Files[i]
		}
	}
	if weights == nil {
		return "", nil, fmt.Errorf("%s:%s has no model.safetensors", v.Model, v.Version)
	}
	if err := a.Audit(ctx, "model.load", "allow", "", map[string]string{"model": v.Model, "version": v.Version},
		map[string]string{"runtime": "refmodel", "into": "memory"}); err != nil {
		return "", nil, err
	}
	dek, err := a.Keys.Key(ctx, v.KeyID)
	if err != nil {
		return "", nil, err
	}
	r, closer, err := a.Inventory.OpenFile(ctx, v, *weights, dek)
	clear(dek)
	if err != nil {
		return "", nil, err
	}
	m, err := refmodel.LoadModel(r, r.Size())
	closer.Close()
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	secret, err := a.WatermarkSecret()
	if err != nil {
		return "", nil, err
	}
	wm := func(tenant string) func([]int, []float64) {
		k, err := watermark.DeriveKey(secret, tenant, watermark.DefaultParams())
		if err != nil {
			return nil
		}
		return func(ctx []int, lp []float64) { k.Bias(ctx[len(ctx)-1], lp) }
	}
	srv := &http.Server{Handler: &refmodel.Server{Name: DevModel.Name, Model: m, Watermark: wm}, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String() + "/v1", func() { srv.Close() }, nil
}
