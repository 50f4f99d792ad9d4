package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/rogpeppe/go-internal/testscript"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

func init() {
	// jsonenv VAR FILE PATH: set VAR to the value at PATH (dot-separated keys and array
	// indexes) in the JSON file.
	scriptCmds["jsonenv"] = func(ts *testscript.TestScript, neg bool, args []string) {
		var v any
		ts.Check(json.Unmarshal([]byte(ts.ReadFile(args[1])), &v))
		for _, k := range strings.Split(args[2], ".") {
			switch x := v.(type) {
			case []any:
				i, err := strconv.Atoi(k)
				if err != nil || i >= len(x) {
					ts.Fatalf("%s: no element %s", args[2], k)
				}
				v = x[i]
			case map[string]any:
				v = x[k]
			default:
				ts.Fatalf("%s: no key %s", args[2], k)
			}
		}
		s, ok := v.(string)
		if !ok {
			b, _ := json.Marshal(v)
			s = string(b)
		}
		ts.Setenv(args[0], s)
	}
	// replacere FILE REGEXP REPLACEMENT: rewrite every match in FILE.
	scriptCmds["replacere"] = func(ts *testscript.TestScript, neg bool, args []string) {
		re := regexp.MustCompile(args[1])
		p := ts.MkAbs(args[0])
		b := ts.ReadFile(args[0])
		if !re.MatchString(b) {
			ts.Fatalf("%s: no match for %s", args[0], args[1])
		}
		ts.Check(os.WriteFile(p, []byte(re.ReplaceAllString(b, args[2])), 0o644))
	}
	// validincident FILE: FILE is valid against docs/incident-report.schema.json.
	scriptCmds["validincident"] = func(ts *testscript.TestScript, neg bool, args []string) {
		wd, _ := os.Getwd() // go test runs in the package directory
		c := jsonschema.NewCompiler()
		c.AssertFormat()
		sch, err := c.Compile(filepath.Join(wd, "..", "..", "docs", "incident-report.schema.json"))
		ts.Check(err)
		f, err := os.Open(ts.MkAbs(args[0]))
		ts.Check(err)
		defer f.Close()
		v, err := jsonschema.UnmarshalJSON(f)
		ts.Check(err)
		if err := sch.Validate(v); (err == nil) == neg {
			ts.Fatalf("validincident %s: %v", args[0], err)
		}
	}
}
