package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/inventory"
	"github.com/strongroom/strongroom/internal/refmodel"
	"github.com/strongroom/strongroom/internal/store"
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

// PrintEnv writes the machine-readable lines scripts rely on (DESIGN.md, "Dev default").
func PrintEnv(w io.Writer, dataDir string) {
	abs, _ := filepath.Abs(dataDir)
	fmt.Fprintf(w, "STRONGROOM_DATA=%s\n", abs)
	fmt.Fprintf(w, "STRONGROOM_MODEL=%s\n", DevModel.Name)
}
