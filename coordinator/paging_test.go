package coordinator

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/fedtune/fedtune/protocol"
)

// bigJob has rounds records of about 25 KB each (200 accepted updates).
func bigJob(name string, rounds int) *pb.Job {
	j := &pb.Job{Spec: &pb.JobSpec{Name: name, Rounds: uint32(rounds)}}
	for r := 1; r <= rounds; r++ {
		rec := &pb.RoundRecord{Number: uint32(r), Metrics: map[string]float64{"test_accuracy": float64(r) / 1000}}
		for w := range 200 {
			rec.Accepted = append(rec.Accepted, &pb.AcceptedUpdate{Worker: fmt.Sprintf("worker-%03d", w), Blob: fmt.Sprintf("%064d", w), Samples: 100, Codec: "fp32",
				Metrics: map[string]float64{"loss": 1, "seconds": 2}})
		}
		j.History = append(j.History, rec)
	}
	return j
}

// TestHistoryPage: JobStatus's pages of a history stay within the budget,
// cover every round once and in order, and the default page is the newest.
func TestHistoryPage(t *testing.T) {
	const budget = 1 << 20
	full := bigJob("j", 300) // ~7.5 MB in one message
	if proto.Size(full) < 5*budget {
		t.Fatalf("test job of %d bytes is too small to page", proto.Size(full))
	}
	var got []uint32
	for from := uint32(1); from <= 300; {
		j := proto.Clone(full).(*pb.Job)
		first := HistoryPage(j, from, budget)
		if first != from || len(j.History) == 0 {
			t.Fatalf("page from %d starts at %d with %d records", from, first, len(j.History))
		}
		if size := proto.Size(j); size > budget+budget/8 {
			t.Errorf("page from %d: %d bytes, budget %d", from, size, budget)
		}
		for _, r := range j.History {
			got = append(got, r.Number)
		}
		from += uint32(len(j.History))
	}
	for i, n := range got {
		if n != uint32(i+1) {
			t.Fatalf("pages gave rounds %v, want 1..300 once each", got)
		}
	}
	j := proto.Clone(full).(*pb.Job)
	first := HistoryPage(j, 0, budget)
	if last := j.History[len(j.History)-1].Number; last != 300 || first != 300-uint32(len(j.History))+1 {
		t.Errorf("default page: rounds %d..%d, want the newest ending at 300", first, last)
	}
	small := bigJob("s", 3)
	if HistoryPage(small, 0, HistoryPageBytes); len(small.History) != 3 {
		t.Errorf("a small job's default page has %d of 3 rounds", len(small.History))
	}
}

// TestJobsPage: ListJobs pages through jobs in name order, each slim.
func TestJobsPage(t *testing.T) {
	var jobs []*pb.Job
	for i := range 25 {
		jobs = append(jobs, bigJob(fmt.Sprintf("job-%02d", 24-i), 5))
	}
	var names []string
	for token, pages := "", 0; ; pages++ {
		page, done, next := JobsPage(jobs, token, 10)
		if pages > 3 || len(page) > 10 {
			t.Fatalf("page %d: %d jobs", pages, len(page))
		}
		for i, j := range page {
			names = append(names, j.Spec.Name)
			if done[i] != 5 || len(j.History) != 1 || len(j.History[0].Accepted) != 0 || j.History[0].Number != 5 {
				t.Errorf("%s: %d rounds done, history %d records, want slim (the newest round only)", j.Spec.Name, done[i], len(j.History))
			}
		}
		if token = next; token == "" {
			break
		}
	}
	if len(names) != 25 || names[0] != "job-00" || names[24] != "job-24" {
		t.Errorf("listed %v", names)
	}
}
