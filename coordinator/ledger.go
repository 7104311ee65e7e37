package coordinator

import (
	"encoding/json"
	"math"
	"sort"

	pb "github.com/fedtune/fedtune/protocol"
)

// LedgerRow is one worker's contribution to a job, summed over its
// committed rounds' scores.
type LedgerRow struct {
	Worker       string  `json:"worker"`
	Rounds       int     `json:"rounds"`  // rounds its update was scored in
	Kept         int     `json:"kept"`    // rounds a robust rule kept it
	Samples      uint64  `json:"samples"` // examples it trained on, over accepted updates
	Weight       float64 `json:"weight"`  // its total share of the aggregates
	MeanCosine   float64 `json:"mean_cosine"`
	MeanDistance float64 `json:"mean_distance"`
}

// MarshalJSON writes the row with NaN and infinities as null: the
// dashboard's state is one JSON document, and encoding/json refuses a NaN
// (which once made every page of the dashboard answer 500 for good).
func (r LedgerRow) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Worker       string    `json:"worker"`
		Rounds       int       `json:"rounds"`
		Kept         int       `json:"kept"`
		Samples      uint64    `json:"samples"`
		Weight       JSONFloat `json:"weight"`
		MeanCosine   JSONFloat `json:"mean_cosine"`
		MeanDistance JSONFloat `json:"mean_distance"`
	}{r.Worker, r.Rounds, r.Kept, r.Samples, JSONFloat(r.Weight), JSONFloat(r.MeanCosine), JSONFloat(r.MeanDistance)})
}

// JSONFloat is a float64 that encodes a NaN or an infinity as JSON null
// instead of failing the whole document.
type JSONFloat float64

// MarshalJSON writes f, or null if it is not finite.
func (f JSONFloat) MarshalJSON() ([]byte, error) {
	if v := float64(f); math.IsNaN(v) || math.IsInf(v, 0) {
		return []byte("null"), nil
	}
	return json.Marshal(float64(f))
}

// Ledger returns a job's contribution ledger, by worker id.
func Ledger(j *pb.Job) []LedgerRow {
	rows := map[string]*LedgerRow{}
	get := func(id string) *LedgerRow {
		if rows[id] == nil {
			rows[id] = &LedgerRow{Worker: id}
		}
		return rows[id]
	}
	for _, r := range j.GetHistory() {
		for _, u := range r.Accepted {
			get(u.Worker).Samples += u.Samples
		}
		if r.Secagg != nil {
			// masked: every update in the sum counts, with equal weight,
			// and none can be scored
			for _, u := range r.Accepted {
				w := get(u.Worker)
				w.Rounds++
				w.Kept++
				w.Weight += 1 / float64(len(r.Accepted))
			}
			continue
		}
		for _, s := range r.Scores {
			w := get(s.Worker)
			w.Rounds++
			if s.Kept {
				w.Kept++
			}
			w.Weight += s.Weight
			w.MeanCosine += s.Cosine
			w.MeanDistance += s.Distance
		}
	}
	out := make([]LedgerRow, 0, len(rows))
	for _, w := range rows {
		n := float64(max(w.Rounds, 1))
		w.MeanCosine /= n
		w.MeanDistance /= n
		out = append(out, *w)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Worker < out[b].Worker })
	return out
}
