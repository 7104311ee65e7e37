package round

import (
	"errors"
	"strings"
	"testing"
	"time"

	pb "github.com/fedtune/fedtune/protocol"
)

// TestNormalizeSecAgg: secure aggregation needs FedAvg (a robust rule is
// refused with the reason), sync rounds, an fp32 wire and no central DP;
// its defaults are filled in.
func TestNormalizeSecAgg(t *testing.T) {
	cases := []struct {
		name, field, why string
		edit             func(*pb.JobSpec)
	}{
		{"ok", "", "", func(s *pb.JobSpec) {}},
		{"robust rule", "aggregator", "robust rules read every update", func(s *pb.JobSpec) { s.Aggregator = "median" }},
		{"krum", "aggregator", "only their sum", func(s *pb.JobSpec) { s.Aggregator = "krum" }},
		{"async", "mode", "", func(s *pb.JobSpec) { s.Mode = ModeAsync }},
		{"lossy codec", "codec", "fixed point", func(s *pb.JobSpec) { s.Codec = "int8" }},
		{"central dp", "dp", "cannot clip", func(s *pb.JobSpec) { s.Dp = &pb.DPSpec{NoiseMultiplier: 1, ClipNorm: 1} }},
		{"two clients", "clients_per_round", "the other's", func(s *pb.JobSpec) { s.ClientsPerRound = 2 }},
		{"threshold 1", "secagg.threshold", "", func(s *pb.JobSpec) { s.Secagg.Threshold = 1 }},
		{"huge neighbourhood", "secagg.neighbors", "", func(s *pb.JobSpec) { s.Secagg.Neighbors = 1000 }},
		{"negative clip range", "secagg.clip_range", "", func(s *pb.JobSpec) { s.Secagg.ClipRange = -1 }},
	}
	for _, c := range cases {
		s := &pb.JobSpec{Name: "j", Model: "m", Dataset: "d", Rounds: 1, ClientsPerRound: 5, Secagg: &pb.SecAggSpec{}}
		c.edit(s)
		err := NormalizeSpec(s, fakeModels{}, nil)
		if c.field == "" {
			if err != nil || s.Secagg.Threshold != DefaultSecAggThreshold || s.Secagg.ClipRange != DefaultSecAggClipRange || s.Secagg.PhaseTimeoutSeconds != DefaultSecAggPhaseTimeout {
				t.Errorf("%s: %v, defaults %v", c.name, err, s.Secagg)
			}
			continue
		}
		if fe, ok := errors.AsType[*FieldError](err); !ok || fe.Field != c.field || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: %v, want an error about %s saying %q", c.name, err, c.field, c.why)
		}
	}
}

// TestSecAggPhases walks a round through its phases with the decisions the
// leader takes: each phase ends when everyone expected answered or at its
// deadline with enough; too few masked updates abort the round.
func TestSecAggPhases(t *testing.T) {
	spec := &pb.JobSpec{Name: "j", Aggregator: "fedavg", ClientsPerRound: 5, MinUpdates: 3, Secagg: &pb.SecAggSpec{Threshold: 0.5, ClipRange: 1, PhaseTimeoutSeconds: 10}}
	ids := []string{"a", "b", "c", "d", "e"}
	alive := map[string]bool{"a": true, "b": true, "c": true, "d": true, "e": true}
	now := time.Unix(1000, 0)
	newRound := func() Job {
		r := &pb.Round{Number: 1, Selected: ids, DeadlineUnixNano: now.Add(time.Minute).UnixNano()}
		startSecAgg(spec, r)
		return Job{Job: &pb.Job{Spec: spec, Status: pb.JobStatus_JOB_STATUS_RUNNING, OpenRound: r}}
	}
	key := func(w string) *pb.SecAggMessage {
		return &pb.SecAggMessage{Job: "j", Round: 1, Worker: w, Phase: PhaseKeys, Keys: &pb.SecAggKeys{Worker: w}}
	}
	j := newRound()
	if d := DecideSecAgg(spec, j.OpenRound, alive, now); d.Action != Wait || d.Next != 0 {
		t.Fatalf("no keys yet: %+v", d)
	}
	for _, w := range ids[:4] {
		if err := j.SecAggMessage(key(w)); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.SecAggMessage(key("a")); !errors.Is(err, ErrDuplicate) {
		t.Errorf("second keys: %v", err)
	}
	if err := j.SecAggMessage(&pb.SecAggMessage{Job: "j", Round: 1, Worker: "z", Phase: PhaseKeys, Keys: &pb.SecAggKeys{Worker: "z"}}); !errors.Is(err, ErrNotSelected) {
		t.Errorf("keys of an unselected worker: %v", err)
	}
	if err := j.SecAggMessage(&pb.SecAggMessage{Job: "j", Round: 1, Attempt: 1, Worker: "e", Phase: PhaseKeys, Keys: &pb.SecAggKeys{Worker: "e"}}); !errors.Is(err, ErrStaleRound) {
		t.Errorf("keys for another attempt: %v", err)
	}
	// e is alive and silent: wait until the deadline, then go on with four
	if d := DecideSecAgg(spec, j.OpenRound, alive, now); d.Next != 0 {
		t.Errorf("moved on while e may still send keys: %+v", d)
	}
	late := time.Unix(0, j.OpenRound.Secagg.PhaseDeadlineUnixNano)
	if d := DecideSecAgg(spec, j.OpenRound, alive, late); d.Next != PhaseShares {
		t.Fatalf("at the deadline with 4 keys: %+v", d)
	}
	if err := j.SecAggPhase(&pb.SecAggPhase{Job: "j", Round: 1, Phase: PhaseMasked}); !errors.Is(err, ErrStaleRound) {
		t.Errorf("skipped a phase: %v", err)
	}
	if err := j.SecAggPhase(&pb.SecAggPhase{Job: "j", Round: 1, Phase: PhaseShares, DeadlineUnixNano: now.Add(10 * time.Second).UnixNano()}); err != nil {
		t.Fatal(err)
	}
	if err := j.SecAggMessage(key("e")); !errors.Is(err, ErrStaleRound) {
		t.Errorf("keys after the key phase: %v", err)
	}
	for _, w := range ids[:4] {
		if err := j.SecAggMessage(&pb.SecAggMessage{Job: "j", Round: 1, Worker: w, Phase: PhaseShares, Shares: []*pb.SecAggShare{{From: w, To: "x"}}}); err != nil {
			t.Fatal(err)
		}
	}
	if d := DecideSecAgg(spec, j.OpenRound, alive, now); d.Next != PhaseMasked {
		t.Fatalf("every worker with keys shared: %+v", d)
	}
	if err := j.SecAggPhase(&pb.SecAggPhase{Job: "j", Round: 1, Phase: PhaseMasked, DeadlineUnixNano: now.Add(10 * time.Second).UnixNano()}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(j.OpenRound.Secagg.Shared, ","); got != "a,b,c,d" {
		t.Errorf("U2 = %s", got)
	}
	// two masked updates of four, the others dead: k = 3, t = 2, but a
	// round needs 3: abort
	for _, w := range []string{"a", "b"} {
		if err := j.AcceptUpdate(1, &pb.AcceptedUpdate{Worker: w}); err != nil {
			t.Fatal(err)
		}
	}
	dead := map[string]bool{"a": true, "b": true}
	if d := DecideSecAgg(spec, j.OpenRound, dead, now); d.Action != Abort || !strings.Contains(d.Reason, "too few survivors") {
		t.Errorf("2 masked updates, nobody left to send: %+v", d)
	}
	if err := j.AcceptUpdate(1, &pb.AcceptedUpdate{Worker: "c"}); err != nil {
		t.Fatal(err)
	}
	if d := DecideSecAgg(spec, j.OpenRound, map[string]bool{"a": true, "b": true, "c": true}, now); d.Next != PhaseUnmask {
		t.Fatalf("3 masked updates, d dead: %+v", d)
	}
	if err := j.SecAggPhase(&pb.SecAggPhase{Job: "j", Round: 1, Phase: PhaseUnmask, DeadlineUnixNano: now.Add(10 * time.Second).UnixNano()}); err != nil {
		t.Fatal(err)
	}
	if err := j.SecAggMessage(&pb.SecAggMessage{Job: "j", Round: 1, Worker: "d", Phase: PhaseUnmask}); !errors.Is(err, ErrNotSelected) {
		t.Errorf("reveals from a worker whose masked update never came: %v", err)
	}
	for _, w := range []string{"a", "b"} {
		if err := j.SecAggMessage(&pb.SecAggMessage{Job: "j", Round: 1, Worker: w, Phase: PhaseUnmask}); err != nil {
			t.Fatal(err)
		}
	}
	if d := DecideSecAgg(spec, j.OpenRound, alive, now); d.Action != Wait {
		t.Errorf("c alive and not yet revealed: %+v", d)
	}
	if d := DecideSecAgg(spec, j.OpenRound, map[string]bool{"a": true, "b": true}, now); d.Action != Commit {
		t.Errorf("c gone: %+v", d)
	}
}

// TestCheckSecAggMessage: malformed keys, shares and reveals are refused
// before they are committed.
func TestCheckSecAggMessage(t *testing.T) {
	spec := &pb.JobSpec{Name: "j", Seed: 1, Secagg: &pb.SecAggSpec{Threshold: 0.5, ClipRange: 1}}
	key := func(w string) *pb.SecAggKeys {
		return &pb.SecAggKeys{Worker: w, CipherPub: make([]byte, 32), MaskPub: make([]byte, 32), SeedCommit: make([]byte, 32)}
	}
	r := &pb.Round{Number: 1, Secagg: &pb.SecAggRound{Phase: PhaseShares, Keys: []*pb.SecAggKeys{key("a"), key("b"), key("c")}}}
	shares := func(to ...string) []*pb.SecAggShare {
		var out []*pb.SecAggShare
		for _, w := range to {
			out = append(out, &pb.SecAggShare{From: "a", To: w, Ciphertext: make([]byte, 92)})
		}
		return out
	}
	short := key("a")
	short.MaskPub = short.MaskPub[:8]
	for _, c := range []struct {
		name string
		m    *pb.SecAggMessage
		ok   bool
	}{
		{"keys", &pb.SecAggMessage{Worker: "a", Phase: PhaseKeys, Keys: key("a")}, true},
		{"short key", &pb.SecAggMessage{Worker: "a", Phase: PhaseKeys, Keys: short}, false},
		{"someone else's keys", &pb.SecAggMessage{Worker: "a", Phase: PhaseKeys, Keys: key("b")}, false},
		{"shares", &pb.SecAggMessage{Worker: "a", Phase: PhaseShares, Shares: shares("b", "c")}, true},
		{"a share missing", &pb.SecAggMessage{Worker: "a", Phase: PhaseShares, Shares: shares("b")}, false},
		{"share to a stranger", &pb.SecAggMessage{Worker: "a", Phase: PhaseShares, Shares: shares("b", "z")}, false},
		{"share to itself", &pb.SecAggMessage{Worker: "a", Phase: PhaseShares, Shares: shares("a", "b")}, false},
		{"huge share", &pb.SecAggMessage{Worker: "a", Phase: PhaseShares, Shares: []*pb.SecAggShare{{From: "a", To: "b", Ciphertext: make([]byte, 4096)}, {From: "a", To: "c"}}}, false},
		{"reveal", &pb.SecAggMessage{Worker: "a", Phase: PhaseUnmask, Reveals: []*pb.SecAggReveal{{From: "a", Of: "b", X: 1, Share: make([]byte, 32)}}}, true},
		{"reveal of the wrong size", &pb.SecAggMessage{Worker: "a", Phase: PhaseUnmask, Reveals: []*pb.SecAggReveal{{From: "a", Of: "b", X: 1, Share: make([]byte, 31)}}}, false},
		{"reveal in another's name", &pb.SecAggMessage{Worker: "a", Phase: PhaseUnmask, Reveals: []*pb.SecAggReveal{{From: "c", Of: "b", X: 1, Share: make([]byte, 32)}}}, false},
		{"reveal at point 0", &pb.SecAggMessage{Worker: "a", Phase: PhaseUnmask, Reveals: []*pb.SecAggReveal{{From: "a", Of: "b", Share: make([]byte, 32)}}}, false},
		{"no such phase", &pb.SecAggMessage{Worker: "a", Phase: 9}, false},
	} {
		if err := CheckSecAggMessage(spec, r, c.m); (err == nil) != c.ok {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// TestSecAggWaiting: each phase waits for its own set of workers.
func TestSecAggWaiting(t *testing.T) {
	r := &pb.Round{Selected: []string{"a", "b", "c", "d"}, Failures: []*pb.TaskFailure{{Worker: "d"}},
		Secagg: &pb.SecAggRound{Phase: PhaseKeys, Keys: []*pb.SecAggKeys{{Worker: "a"}, {Worker: "b"}}}}
	for _, c := range []struct {
		phase uint32
		edit  func()
		want  string
	}{
		{PhaseKeys, func() {}, "c"},
		{PhaseShares, func() { r.Secagg.Shares = []*pb.SecAggShare{{From: "a", To: "b"}} }, "b"},
		{PhaseMasked, func() { r.Secagg.Shared = []string{"a", "b"}; r.Updates = []*pb.AcceptedUpdate{{Worker: "b"}} }, "a"},
		{PhaseUnmask, func() { r.Secagg.Revealed = []string{"b"} }, ""},
	} {
		r.Secagg.Phase = c.phase
		c.edit()
		if got := strings.Join(SecAggWaiting(r), ","); got != c.want {
			t.Errorf("phase %d: waiting for %q, want %q", c.phase, got, c.want)
		}
	}
}
