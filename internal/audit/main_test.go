package audit

import (
	"flag"
	"os"
	"testing"
)

// TestMain runs up to four of the package's parallel tests at once unless -parallel is
// given. go test's default is GOMAXPROCS (2 on the CI machine), but the shared-log tests
// mostly wait — on MariaDB, on a proxy's held COMMIT, on a signed checkpoint — rather than
// compute: at 2 the package took 588 s of the suite's critical path, at 4 it took 436 s
// with 187 s of user CPU (docs/PERFORMANCE.md, "The suite's critical path").
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		flag.Set("test.parallel", "4")
	}
	os.Exit(m.Run())
}
