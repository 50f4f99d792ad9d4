package app

import (
	"crypto/rand"
	"testing"

	"github.com/strongroom/strongroom/internal/config"
	f_note "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
)

// TestWitnessPolicy: witnesses listed with the quorum left out (0) must all cosign — a
// threshold of 0 would let tessera publish checkpoints without any cosignature — and an
// explicit quorum is kept.
func TestWitnessPolicy(t *testing.T) {
	var ws []config.Witness
	for _, name := range []string{"w1.test", "w2.test", "w3.test"} {
		_, vkey, err := note.GenerateKey(rand.Reader, name)
		if err != nil {
			t.Fatal(err)
		}
		cv, err := f_note.VKeyToCosignatureV1(vkey)
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, config.Witness{VKey: cv, URL: "http://" + name})
	}
	for quorum, want := range map[int]int{0: 3, 1: 1, 2: 2, 3: 3} {
		g, err := witnessPolicy(ws, quorum)
		if err != nil {
			t.Fatal(err)
		}
		if g.N != want || len(g.Endpoints()) != 3 {
			t.Errorf("quorum %d: policy needs %d of %d, want %d", quorum, g.N, len(g.Endpoints()), want)
		}
		if g.Satisfied([]byte("strongroom.test/log\n1\nAAAA\n\n")) {
			t.Errorf("quorum %d: a checkpoint without cosignatures satisfies the policy", quorum)
		}
	}
}
