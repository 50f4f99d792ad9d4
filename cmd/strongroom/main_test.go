package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"github.com/strongroom/strongroom/internal/testenv"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"strongroom": func() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) },
	})
}

// TestScripts runs the CLI end to end from testdata/*.txt.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{Dir: "testdata", Cmds: scriptCmds})
}

var scriptCmds = map[string]func(ts *testscript.TestScript, neg bool, args []string){
	// flipbyte DIR N OFFSET: flip one byte of the sealed blob N.srs under DIR.
	"flipbyte": func(ts *testscript.TestScript, neg bool, args []string) {
		if len(args) != 3 {
			ts.Fatalf("usage: flipbyte DIR N OFFSET")
		}
		matches, _ := filepath.Glob(filepath.Join(ts.MkAbs(args[0]), "*", args[1]+".srs"))
		if len(matches) != 1 {
			ts.Fatalf("want one blob %s.srs, found %d", args[1], len(matches))
		}
		off, _ := strconv.Atoi(args[2])
		b, err := os.ReadFile(matches[0])
		ts.Check(err)
		b[off] ^= 0x01
		ts.Check(os.WriteFile(matches[0], b, 0o600))
	},
	// chmodkeys MODE: chmod every local key file of $STRONGROOM_DATA.
	"chmodkeys": func(ts *testscript.TestScript, neg bool, args []string) {
		mode, _ := strconv.ParseUint(args[0], 8, 32)
		keys, _ := filepath.Glob(filepath.Join(ts.Getenv("STRONGROOM_DATA"), "keys", "*.kek"))
		if len(keys) == 0 {
			ts.Fatalf("no key files")
		}
		for _, k := range keys {
			ts.Check(os.Chmod(k, os.FileMode(mode)))
		}
	},
	// swapkek DATA OTHER: put OTHER's local key file in place of DATA's.
	"swapkek": func(ts *testscript.TestScript, neg bool, args []string) {
		ours, _ := filepath.Glob(filepath.Join(ts.MkAbs(args[0]), "keys", "*.kek"))
		theirs, _ := filepath.Glob(filepath.Join(ts.MkAbs(args[1]), "keys", "*.kek"))
		if len(ours) != 1 || len(theirs) != 1 {
			ts.Fatalf("want one key file in each data directory")
		}
		b, err := os.ReadFile(theirs[0])
		ts.Check(err)
		ts.Check(os.WriteFile(ours[0], b, 0o600))
	},
	// waitbig DIR BYTES: wait (up to 60s) until a file under DIR is at least BYTES long.
	"waitbig": func(ts *testscript.TestScript, neg bool, args []string) {
		want, _ := strconv.ParseInt(args[1], 10, 64)
		for range 12000 {
			found := false
			filepath.WalkDir(ts.MkAbs(args[0]), func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					if fi, err := d.Info(); err == nil && fi.Size() >= want {
						found = true
					}
				}
				return nil
			})
			if found {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		ts.Fatalf("no file of %d bytes under %s", want, args[0])
	},
	// grepr TEXT DIR: whether any file under DIR contains TEXT.
	"grepr": func(ts *testscript.TestScript, neg bool, args []string) {
		found := ""
		filepath.WalkDir(ts.MkAbs(args[1]), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(args[0])) {
					found = p
				}
			}
			return nil
		})
		if (found != "") != !neg {
			ts.Fatalf("grepr %q %s: found in %q", args[0], args[1], found)
		}
	},
}

// TestScriptsHSM runs the scripts that need the SoftHSM2 token and PostgreSQL from scripts/test.
func TestScriptsHSM(t *testing.T) {
	vars := []string{"SOFTHSM2_CONF", "STRONGROOM_TEST_PKCS11_MODULE", "STRONGROOM_TEST_PKCS11_TOKEN", "STRONGROOM_TEST_PKCS11_PIN", "STRONGROOM_TEST_POSTGRES"}
	vals := map[string]string{}
	for _, v := range vars {
		vals[v] = testenv.Get(t, v)
	}
	testscript.Run(t, testscript.Params{Dir: "testdata/integration", Cmds: scriptCmds, Setup: func(e *testscript.Env) error {
		for k, v := range vals {
			e.Setenv(k, v)
		}
		return nil
	}})
}
