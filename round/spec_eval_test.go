package round

import (
	"errors"
	"strings"
	"testing"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
)

// fakeModels knows one architecture, "m", configured or not.
type fakeModels struct{}

func (fakeModels) Layout(name string, config []byte) (tensor.Set, error) {
	if name != "m" {
		return tensor.Set{}, errors.New("unknown model")
	}
	return tensor.MustNew(tensor.Tensor{Name: "w", Shape: []int{4, 4}, Data: make([]float32, 16)}), nil
}

func (fakeModels) LoRATargets(string, []byte, []string) ([]string, error) { return []string{"w"}, nil }

// TestNormalizeEvalAndText: evaluation modes and their parameters, a text
// job's sequence length, the local optimizer and the size of a model
// configuration are checked, each error naming its field.
func TestNormalizeEvalAndText(t *testing.T) {
	cases := []struct {
		name  string
		edit  func(*pb.JobSpec)
		field string // "" when the spec is valid
		check func(*pb.JobSpec) bool
	}{
		{"evaluate means central", func(s *pb.JobSpec) { s.Evaluate = true }, "", func(s *pb.JobSpec) bool { return s.Evaluation == EvalCentral }},
		{"default none", func(s *pb.JobSpec) {}, "", func(s *pb.JobSpec) bool { return s.Evaluation == EvalNone && !s.Evaluate }},
		{"central sets evaluate", func(s *pb.JobSpec) { s.Evaluation = EvalCentral }, "", func(s *pb.JobSpec) bool { return s.Evaluate }},
		{"federated with groups", func(s *pb.JobSpec) { s.Evaluation, s.EvalGroupBy, s.EvalClients = EvalFederated, "lang", 3 }, "", nil},
		{"unknown mode", func(s *pb.JobSpec) { s.Evaluation = "peer" }, "evaluation", nil},
		{"federated and evaluate", func(s *pb.JobSpec) { s.Evaluation, s.Evaluate = EvalFederated, true }, "evaluate", nil},
		{"groups without federated", func(s *pb.JobSpec) { s.EvalGroupBy = "lang" }, "eval_clients", nil},
		{"long label", func(s *pb.JobSpec) { s.Evaluation, s.EvalGroupBy = EvalFederated, strings.Repeat("x", 64) }, "eval_group_by", nil},
		{"text job default length", func(s *pb.JobSpec) { s.Tokenizer = "h" }, "", func(s *pb.JobSpec) bool { return s.SeqLen == DefaultSeqLen }},
		{"one-token sequences", func(s *pb.JobSpec) { s.Tokenizer, s.SeqLen = "h", 1 }, "seq_len", nil},
		{"huge sequences", func(s *pb.JobSpec) { s.SeqLen = MaxSeqLen + 1 }, "seq_len", nil},
		{"adamw", func(s *pb.JobSpec) {
			s.Train = &pb.TrainConfig{Optimizer: "adamw", WeightDecay: 0.01, ClipNorm: 1, Accum: 4}
		}, "", nil},
		{"adamw with momentum", func(s *pb.JobSpec) { s.Train = &pb.TrainConfig{Optimizer: "adamw", Momentum: 0.9} }, "train.momentum", nil},
		{"unknown optimizer", func(s *pb.JobSpec) { s.Train = &pb.TrainConfig{Optimizer: "lion"} }, "train.optimizer", nil},
		{"weight decay 1", func(s *pb.JobSpec) { s.Train = &pb.TrainConfig{WeightDecay: 1} }, "train.weight_decay", nil},
		{"oversized config", func(s *pb.JobSpec) { s.ModelConfig = make([]byte, MaxModelConfig+1) }, "model_config", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := &pb.JobSpec{Name: "j", Model: "m", Dataset: "d", Rounds: 1}
			c.edit(s)
			err := NormalizeSpec(s, fakeModels{}, nil)
			if c.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.check != nil && !c.check(s) {
					t.Errorf("normalised to %v", s)
				}
				return
			}
			fe, ok := errors.AsType[*FieldError](err)
			if !ok || fe.Field != c.field {
				t.Errorf("error %v, want one about %s", err, c.field)
			}
		})
	}
}
