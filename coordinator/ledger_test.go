package coordinator

import (
	"testing"

	pb "github.com/fedtune/fedtune/protocol"
)

// TestLedgerSecAgg: a secure-aggregation round counts each masked update
// as kept with an equal share of the sum (nothing can be scored), and a
// plain round counts its scores.
func TestLedgerSecAgg(t *testing.T) {
	j := &pb.Job{History: []*pb.RoundRecord{
		{Secagg: &pb.SecAggRound{}, Accepted: []*pb.AcceptedUpdate{{Worker: "a", Samples: 10}, {Worker: "b", Samples: 30}}},
		{Accepted: []*pb.AcceptedUpdate{{Worker: "a", Samples: 10}}, Scores: []*pb.Score{{Worker: "a", Kept: true, Weight: 1, Cosine: 0.5}}},
	}}
	rows := Ledger(j)
	if len(rows) != 2 {
		t.Fatalf("%d rows", len(rows))
	}
	a, b := rows[0], rows[1]
	if a.Rounds != 2 || a.Kept != 2 || a.Samples != 20 || a.Weight != 1.5 || b.Rounds != 1 || b.Weight != 0.5 || b.Samples != 30 {
		t.Errorf("ledger %+v %+v", a, b)
	}
}
