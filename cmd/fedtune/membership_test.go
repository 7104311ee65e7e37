package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	tc "github.com/fedtune/fedtune/internal/testcluster"
)

// TestClusterMembershipCLI follows membership changes through `fedtune
// cluster raft` and `cluster members`: a 4th coordinator joins as a
// non-voter and is promoted; a killed one is removed after the grace period.
func TestClusterMembershipCLI(t *testing.T) {
	pc := tc.NewProcCluster(t, binary, 3, "--server-grace", "3s")
	raftOut := func() string {
		l := pc.WaitForLeader(20 * time.Second)
		out, _ := pc.Run("cluster", "raft", "--coordinator", l.GRPC)
		return out
	}
	row := func(out, id string) string {
		return regexp.MustCompile(`(?m)^` + id + `\s+(\S+)`).FindString(out)
	}
	out := raftOut()
	t.Logf("three coordinators:\n%s", out)
	if strings.Count(out, "Voter") != 3 || !strings.Contains(out, "gossip: sees 3 of 3 voters") || strings.Contains(out, "warning") {
		t.Fatalf("want 3 voters, all seen by gossip:\n%s", out)
	}
	n4 := pc.Add()
	var seenNonvoter bool
	tc.WaitFor(t, 30*time.Second, "coord-4 a voter", func() bool {
		out = raftOut()
		r := row(out, n4.Name)
		seenNonvoter = seenNonvoter || strings.Contains(r, "Nonvoter")
		return strings.HasSuffix(r, " Voter")
	})
	t.Logf("after coord-4 joined (seen as non-voter first: %v):\n%s", seenNonvoter, out)
	members, _ := pc.Run("cluster", "members", "--coordinator", n4.GRPC)
	if strings.Count(members, "coordinator") != 4 {
		t.Errorf("cluster members:\n%s", members)
	}
	// Leadership handed to the newcomer, asked through a follower (the
	// CLI finds the leader); a name that is no voter is refused.
	leader := pc.WaitForLeader(10 * time.Second)
	var follower *tc.ProcNode
	for _, nd := range pc.Up() {
		if nd != leader && nd != n4 {
			follower = nd
		}
	}
	if out, err := pc.Run("cluster", "transfer-leader", "--coordinator", follower.GRPC, "--to", "nobody"); err == nil || !strings.Contains(out, `"nobody" is not a voter`) {
		t.Errorf("transfer to a non-voter: err %v, output:\n%s", err, out)
	}
	if out, err := pc.Run("cluster", "transfer-leader", "--coordinator", follower.GRPC, "--to", n4.Name); err != nil || !strings.Contains(out, "leader: "+n4.Name+" ("+n4.GRPC+")") {
		t.Fatalf("transfer to %s: err %v, output:\n%s", n4.Name, err, out)
	}
	if l := pc.WaitForLeader(10 * time.Second); l != n4 {
		t.Fatalf("%s leads after the transfer, want %s", l.Name, n4.Name)
	}
	leader = n4
	var victim *tc.ProcNode
	for _, nd := range pc.Up() {
		if nd != leader && nd != n4 {
			victim = nd
			break
		}
	}
	pc.Kill(victim)
	tc.WaitFor(t, 60*time.Second, victim.Name+" removed", func() bool {
		out = raftOut()
		return row(out, victim.Name) == "" && strings.Count(out, "Voter") == 3
	})
	t.Logf("after %s was killed and the grace period passed:\n%s", victim.Name, out)
}
