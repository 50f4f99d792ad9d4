package deps

import (
	"go/build"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/strongroom/strongroom/"

// graph maps each of the module's packages (path relative to the module, e.g.
// "internal/detect") to the module packages it imports, tests excluded.
func graph(t *testing.T) map[string][]string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	g := map[string][]string{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if name := d.Name(); path != root && (name == "testdata" || name == "node_modules" || strings.HasPrefix(name, ".")) {
			return filepath.SkipDir
		}
		p, err := build.Default.ImportDir(path, 0)
		if err != nil {
			if _, ok := err.(*build.NoGoError); ok {
				return nil
			}
			return err
		}
		rel, _ := filepath.Rel(root, path)
		var imps []string
		for _, imp := range p.Imports {
			if after, ok := strings.CutPrefix(imp, module); ok {
				imps = append(imps, after)
			}
		}
		g[filepath.ToSlash(rel)] = imps
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(g["internal/detect"]) == 0 || len(g["internal/app"]) == 0 {
		t.Fatalf("module graph looks wrong (run from internal/deps): %d packages", len(g))
	}
	return g
}

// reach is every module package p depends on, directly or not.
func reach(g map[string][]string, p string) map[string]bool {
	seen := map[string]bool{}
	var walk func(string)
	walk = func(p string) {
		for _, q := range g[p] {
			if !seen[q] {
				seen[q] = true
				walk(q)
			}
		}
	}
	walk(p)
	return seen
}

// TestRules is docs/DESIGN.md's dependency rules, each with its reason.
func TestRules(t *testing.T) {
	g := graph(t)
	// never: package → packages it must not reach, even indirectly.
	never := []struct {
		pkg, why string
		not      []string
	}{
		{"internal/detect", "detectors see features (package obs); the offline `detect replay` must not link the gateway, Cedar or the limiters",
			[]string{"internal/gateway", "internal/policy", "internal/limits", "internal/authn", "internal/app", "internal/config", "internal/custody", "internal/inventory"}},
		{"internal/audit", "the log is a sink", []string{"internal/gateway", "internal/detect", "internal/policy", "internal/app"}},
		{"internal/policy", "policy does not depend on the transport", []string{"internal/gateway", "internal/app"}},
		{"internal/limits", "limits do not depend on the transport", []string{"internal/gateway", "internal/app"}},
		{"internal/authn", "authentication does not depend on the transport", []string{"internal/gateway", "internal/app"}},
		{"internal/refmodel", "an engine gets weights only through the launcher, like any third-party engine",
			[]string{"internal/store", "internal/custody", "internal/kms", "internal/launcher"}},
		{"internal/inventory", "the inventory is below the services", []string{"internal/gateway", "internal/custody", "internal/app", "internal/config"}},
		{"internal/custody", "custody is below the assembly", []string{"internal/gateway", "internal/inventory", "internal/app", "internal/config"}},
		{"internal/gateway", "the gateway declares interfaces for what it calls", []string{"internal/detect", "internal/app", "internal/config", "internal/custody", "internal/inventory"}},
		{"internal/web", "the console calls the deployment through the operations it declares (web.Ops), the CLI's own",
			[]string{"internal/app", "internal/gateway", "internal/custody", "internal/inventory", "internal/detect", "internal/config", "internal/kms"}},
	}
	for _, r := range never {
		got := reach(g, r.pkg)
		for _, bad := range r.not {
			if got[bad] {
				t.Errorf("%s depends on %s (%s)", r.pkg, bad, r.why)
			}
		}
	}
	// only: package → the only module packages it may import.
	only := []struct {
		pkg, why string
		may      []string
	}{
		{"internal/obs", "the vocabulary the gateway and detectors share is a leaf", nil},
		{"internal/modelrec", "the model record is a leaf every decision reads", nil},
		{"internal/seal", "works offline on files", nil},
		{"internal/modelsig", "works offline on files", nil},
		{"internal/watermark", "works offline on texts", nil},
		{"internal/fingerprint", "works offline on weight files", nil},
		{"internal/geo", "works offline on databases", nil},
		{"internal/attest", "works offline on reports", nil},
		{"internal/fsutil", "below everything", nil},
		{"internal/sqlutil", "below everything", nil},
		{"internal/redact", "below everything: how configured addresses are shown", nil},
		{"internal/store", "store is below everything", []string{"internal/fsutil", "internal/modelrec", "internal/sqlutil", "internal/redact"}},
		{"internal/config", "config holds plain data; app converts it to the domain packages' types", []string{"internal/fsutil", "internal/redact"}},
	}
	for _, r := range only {
		if _, ok := g[r.pkg]; !ok {
			t.Errorf("%s: no such package", r.pkg)
		}
		for _, imp := range g[r.pkg] {
			if !slices.Contains(r.may, imp) {
				t.Errorf("%s imports %s (%s)", r.pkg, imp, r.why)
			}
		}
	}
	// Nothing imports a command, and only commands (and app's own test helpers) import app:
	// app is the one package that knows every other one.
	for p, imps := range g {
		for _, imp := range imps {
			if strings.HasPrefix(imp, "cmd/") {
				t.Errorf("%s imports command %s", p, imp)
			}
			if imp == "internal/app" && !strings.HasPrefix(p, "cmd/") && !strings.HasPrefix(p, "internal/app/") {
				t.Errorf("%s imports internal/app (the assembly)", p)
			}
		}
	}
}

// TestGraphSeesTheModule guards the test itself: a walk that found nothing would pass.
func TestGraphSeesTheModule(t *testing.T) {
	g := graph(t)
	if !slices.Contains(g["internal/detect"], "internal/obs") {
		t.Fatalf("internal/detect imports %v; want internal/obs among them", g["internal/detect"])
	}
	if _, err := os.Stat("../../go.mod"); err != nil {
		t.Fatal(err)
	}
}
