package audit

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const testOrigin = "strongroom.test/log"

// sealed is event i as a replica appends it.
func sealed(t *testing.T, ev Event) []byte {
	t.Helper()
	b, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return sealEntry(testEntryKey, testOrigin, b)
}

func unsealed(t *testing.T, ev Event) []byte {
	t.Helper()
	b, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSealCheck: the rule the signer and Verify apply to entry MACs. A foreign entry
// passes only with a sealed acknowledgement after it naming its index and its bytes' hash.
func TestSealCheck(t *testing.T) {
	foreign := unsealed(t, event(2))
	badMAC := event(5)
	badMAC.MAC = strings.Repeat("0", 64)
	cases := []struct {
		name    string
		legacy  bool
		entries [][]byte
		want    string   // error text, "" for none
		acked   []uint64 // when no error
		old     uint64
	}{
		{name: "all sealed", entries: [][]byte{sealed(t, event(0)), sealed(t, event(1))}},
		{name: "foreign", entries: [][]byte{sealed(t, event(0)), foreign, sealed(t, event(3))}, want: "entry 1: log entry not written"},
		{name: "acknowledged", entries: [][]byte{sealed(t, event(0)), foreign, sealed(t, event(3)), sealed(t, ForeignEntryEvent(1, foreign, "r"))}, acked: []uint64{1}},
		{name: "acknowledgement of other bytes", entries: [][]byte{sealed(t, event(0)), foreign, sealed(t, ForeignEntryEvent(1, unsealed(t, event(4)), "r"))}, want: "entry 1:"},
		{name: "acknowledgement of another index", entries: [][]byte{sealed(t, event(0)), foreign, sealed(t, ForeignEntryEvent(0, foreign, "r"))}, want: "entry 1:"},
		{name: "acknowledgement before the entry", entries: [][]byte{sealed(t, ForeignEntryEvent(1, foreign, "r")), foreign}, want: "entry 1:"},
		{name: "forged acknowledgement", entries: [][]byte{sealed(t, event(0)), foreign, unsealed(t, ForeignEntryEvent(1, foreign, "r"))}, want: "entry 1:"},
		{name: "two, both acknowledged", entries: [][]byte{foreign, unsealed(t, event(7)), sealed(t, ForeignEntryEvent(1, unsealed(t, event(7)), "r")), sealed(t, ForeignEntryEvent(0, foreign, "r"))}, acked: []uint64{0, 1}},
		{name: "two, one acknowledged", entries: [][]byte{foreign, unsealed(t, event(7)), sealed(t, ForeignEntryEvent(0, foreign, "r"))}, want: "entry 1:"},
		{name: "legacy entries before the first sealed one", legacy: true, entries: [][]byte{unsealed(t, event(0)), unsealed(t, event(1)), sealed(t, event(2))}, old: 2},
		{name: "no legacy for the signer", entries: [][]byte{unsealed(t, event(0)), sealed(t, event(2))}, want: "entry 0:"},
		{name: "unsealed after a sealed one", legacy: true, entries: [][]byte{unsealed(t, event(0)), sealed(t, event(1)), foreign}, want: "entry 2:"},
		{name: "a legacy entry acknowledged is foreign", legacy: true, entries: [][]byte{foreign, sealed(t, event(1)), sealed(t, ForeignEntryEvent(0, foreign, "r"))}, acked: []uint64{0}},
		{name: "a wrong MAC is not legacy", legacy: true, entries: [][]byte{unsealed(t, badMAC), sealed(t, event(1))}, want: "entry 0:"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sc := sealCheck{key: testEntryKey, origin: testOrigin, legacy: c.legacy}
			for i, e := range c.entries {
				sc.add(uint64(i), e)
			}
			acked, err := sc.unacknowledged()
			if c.want != "" {
				if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrSecurity) {
					t.Fatalf("err %v; want a security error with %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(acked, c.acked) || uint64(len(sc.old)) != c.old {
				t.Fatalf("acknowledged %v, legacy %d; want %v, %d", acked, len(sc.old), c.acked, c.old)
			}
		})
	}
}

// TestForeignEntryAcknowledged: the incident workflow on a shared log. Someone with
// database access appends an entry, and then a forged acknowledgement of it; the signer
// stops before the first. A replica cannot acknowledge an entry it wrote, nor one past
// the log's end. Once an operator has acknowledged both, checkpoints cover them and what
// came after; Verify with the key names them, and without it (an outsider) still passes.
func TestForeignEntryAcknowledged(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/foreign")
	ctx := context.Background()
	l, logs := a3Open(t, dsn, s, &syncBuffer{})
	first, err := l.Record(ctx, event(0))
	if err != nil {
		t.Fatal(err)
	}
	a2WaitVerify(t, l, v, first+1, nil)

	forged := unsealed(t, Event{V: 1, TS: ts0, Kind: KindLeaseGrant, Actor: map[string]string{"principal": "attacker"}, Decision: Allow})
	bad := a2AppendForged(t, dsn, s.Name(), forged).Index
	fakeAck := a2AppendForged(t, dsn, s.Name(), unsealed(t, ForeignEntryEvent(bad, forged, "forged acknowledgement"))).Index
	after, err := l.Record(ctx, event(1))
	if err != nil {
		t.Fatal(err)
	}
	alert := "entry " + strconv.FormatUint(bad, 10) + ": log entry not written by a replica"
	waitFor(t, func() bool { return strings.Contains(logs.String(), alert) }) // the signer's ALERT naming the forged entry

	if _, err := l.ForeignEntry(ctx, first, "a replica's entry"); !errors.Is(err, ErrNotForeign) {
		t.Fatalf("acknowledging an entry a replica wrote: %v; want ErrNotForeign", err)
	}
	if _, err := l.ForeignEntry(ctx, after+10, "past the end"); err == nil {
		t.Fatal("acknowledged an entry past the log's end")
	}
	// A sealed acknowledgement of other bytes at that index does not count.
	if _, err := l.Record(ctx, ForeignEntryEvent(bad, []byte("other bytes"), "wrong hash")); err != nil {
		t.Fatal(err)
	}
	ack1, err := l.ForeignEntry(ctx, bad, "database write by the attacker; see incident 7")
	if err != nil {
		t.Fatal(err)
	}
	at1, err := l.Record(ctx, ack1)
	if err != nil {
		t.Fatal(err)
	}
	// The forged acknowledgement is itself foreign and not acknowledged yet: still nothing
	// is signed past the forged entry.
	waitFor(t, func() bool {
		return strings.Contains(logs.String(), "entry "+strconv.FormatUint(fakeAck, 10)+": log entry not written by a replica")
	})
	f, bundles := a2Fetch(t, l.Handler())
	if st, err := Verify(ctx, f, VerifyOptions{LogKey: v, Bundles: bundles}); err != nil || st.Size > bad {
		t.Fatalf("a checkpoint of size %d (%v) covers the forged entry %d before every foreign entry was acknowledged", st.Size, err, bad)
	}
	ack2, err := l.ForeignEntry(ctx, fakeAck, "forged acknowledgement")
	if err != nil {
		t.Fatal(err)
	}
	at2, err := l.Record(ctx, ack2)
	if err != nil {
		t.Fatal(err)
	}
	st := a2WaitVerify(t, l, v, at2+1, nil)
	if at1 <= bad || st.Size <= after {
		t.Fatalf("sizes: forged %d, acknowledged at %d, checkpoint %d", bad, at1, st.Size)
	}
	keyed, err := Verify(ctx, f, VerifyOptions{LogKey: v, Bundles: bundles, EntryKey: testEntryKey})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(keyed.Foreign, []uint64{bad, fakeAck}) || keyed.Unsealed != 0 {
		t.Fatalf("Verify with the key: foreign %v, unsealed %d; want [%d %d], 0", keyed.Foreign, keyed.Unsealed, bad, fakeAck)
	}
	// Another key: every entry is foreign, and none is acknowledged.
	if _, err := Verify(ctx, f, VerifyOptions{LogKey: v, Bundles: bundles, EntryKey: EntryKey([]byte("another key"))}); !errors.Is(err, ErrSecurity) {
		t.Fatalf("Verify under another entry key: %v; want a security error", err)
	}
}
