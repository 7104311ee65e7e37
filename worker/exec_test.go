package worker

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
)

// PythonWithNumpy returns a Python interpreter that imports numpy, or "".
func pythonWithNumpy() string {
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(p, "-c", "import numpy").Run() == nil {
			return p
		}
	}
	return ""
}

func script(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "examples", "external-trainer", "train.py")
}

func execTask() *pb.Task {
	return &pb.Task{Job: "j", Round: 1, Model: "mnist-mlp-small", Dataset: "mnist", Seed: 3,
		Train: &pb.TrainConfig{LocalEpochs: 1, LocalSteps: 30, BatchSize: 32, LearningRate: 0.1, Momentum: 0.5}}
}

func localMNIST(t *testing.T, n int) *dataset.Examples {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	return train.Subset(idx)
}

// TestExecTrainer runs the reference script (NumPy) as a worker's trainer
// and checks the update it returns makes the model better on the data.
func TestExecTrainer(t *testing.T) {
	py := pythonWithNumpy()
	if py == "" {
		t.Skip("no Python with numpy (make pydeps installs Debian's python3-numpy)")
	}
	arch, _ := model.Lookup("mnist-mlp-small")
	base := arch.Init(1)
	data := localMNIST(t, 1000)
	tr := &ExecTrainer{Cmd: py + " " + script(t), Data: map[string]*dataset.Examples{"mnist": data}}
	t.Setenv("FEDTUNE_TRAIN_NUMPY", "1")
	res, err := tr.Train(context.Background(), Input{Base: base}, execTask())
	if err != nil {
		t.Fatal(err)
	}
	if res.Samples != 1000 || math.IsNaN(res.Metrics["loss"]) {
		t.Fatalf("result: %d samples, metrics %v", res.Samples, res.Metrics)
	}
	ev, _ := arch.NewEvaluator(500)
	defer ev.Close()
	before, _ := ev.Evaluate(base, data)
	after := base.Clone()
	after.AddScaled(1, res.Delta)
	got, _ := ev.Evaluate(after, data)
	t.Logf("local loss %.3f -> %.3f, accuracy %.3f -> %.3f", before.Loss, got.Loss, before.Accuracy, got.Accuracy)
	if got.Loss > before.Loss*0.7 || got.Accuracy < before.Accuracy+0.3 {
		t.Errorf("external training did not help: loss %.3f -> %.3f", before.Loss, got.Loss)
	}
}

// TestExecTrainerLoRA: in a LoRA task the reference script trains the
// adapters only. One full-batch step must land where Gorgonia's does from
// the same start (the script's hand-written LoRA gradients checked against
// automatic differentiation), a few epochs must lower the loss, and
// returning the whole model instead of the adapters is refused.
func TestExecTrainerLoRA(t *testing.T) {
	py := pythonWithNumpy()
	if py == "" {
		t.Skip("no Python with numpy (make pydeps installs Debian's python3-numpy)")
	}
	t.Setenv("FEDTUNE_TRAIN_NUMPY", "1")
	arch, _ := model.Lookup("mnist-mlp-small")
	base := arch.Init(1)
	l := lora.Config{Rank: 3, Alpha: 6}
	ad, _ := l.Init(arch, 2)
	for k := range ad.Tensors { // non-zero B, so that every gradient is exercised
		if strings.HasSuffix(ad.Tensors[k].Name, "lora_B.weight") {
			for e := range ad.Tensors[k].Data {
				ad.Tensors[k].Data[e] = float32(e%7-3) * 0.01
			}
		}
	}
	data := localMNIST(t, 256)
	tr := &ExecTrainer{Cmd: py + " " + script(t), Data: map[string]*dataset.Examples{"mnist": data}}
	task := execTask()
	task.Lora = &pb.LoRASpec{Rank: 3, Alpha: 6}
	task.Train = &pb.TrainConfig{LocalSteps: 1, BatchSize: 256, LearningRate: 0.5}
	res, err := tr.Train(context.Background(), Input{Base: ad, Frozen: base}, task)
	if err != nil {
		t.Fatal(err)
	}
	if err := tensor.SameLayout(res.Delta, ad); err != nil {
		t.Fatalf("a LoRA task's update is not the adapters': %v", err)
	}
	gt, _ := arch.NewTrainer()
	defer gt.Close()
	want, _, err := gt.TrainAdapter(context.Background(), l, base, ad, data, model.TrainConfig{Steps: 1, BatchSize: 256, LR: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	wantDelta, _ := tensor.Diff(want, ad)
	diff, _ := tensor.Diff(res.Delta, wantDelta)
	if rel := diff.Norm() / wantDelta.Norm(); !(rel < 1e-3) || wantDelta.Norm() == 0 {
		t.Errorf("one full-batch step: numpy and Gorgonia differ by %.2g of the step (norm %.4g)", rel, wantDelta.Norm())
	}

	task.Train = &pb.TrainConfig{LocalEpochs: 5, BatchSize: 32, LearningRate: 0.2, Momentum: 0.5}
	if res, err = tr.Train(context.Background(), Input{Base: ad, Frozen: base}, task); err != nil {
		t.Fatal(err)
	}
	trained := ad.Clone()
	trained.AddScaled(1, res.Delta)
	ev, _ := arch.NewEvaluator(256)
	defer ev.Close()
	m0, _ := l.Merge(arch, base, ad)
	m1, _ := l.Merge(arch, base, trained)
	before, _ := ev.Evaluate(m0, data)
	after, _ := ev.Evaluate(m1, data)
	t.Logf("LoRA via numpy: local loss %.3f -> %.3f", before.Loss, after.Loss)
	if after.Loss > 0.8*before.Loss {
		t.Errorf("adapter training did not help: loss %.3f -> %.3f", before.Loss, after.Loss)
	}

	whole := &ExecTrainer{Cmd: "cd $FEDTUNE_TASK_DIR && cp base.safetensors out.safetensors", Data: tr.Data}
	if _, err := whole.Train(context.Background(), Input{Base: ad, Frozen: base}, task); !errors.Is(err, ErrExternal) || !strings.Contains(err.Error(), "adapters") {
		t.Errorf("whole model returned for a LoRA task: %v", err)
	}
}

// TestExecTrainerFailures: time-outs, crashes and malformed outputs each
// give an error saying what went wrong.
func TestExecTrainerFailures(t *testing.T) {
	arch, _ := model.Lookup("mnist-mlp-small")
	base := arch.Init(1)
	dir := t.TempDir()
	other := filepath.Join(dir, "other.safetensors")
	tensor.WriteFile(other, model.MLP{Sizes: []int{784, 16, 10}}.Init(1), tensor.F32)
	nan := base.Clone()
	nan.Tensors[0].Data[7] = float32(math.NaN())
	nanPath := filepath.Join(dir, "nan.safetensors")
	tensor.WriteFile(nanPath, nan, tensor.F32)
	for _, tc := range []struct {
		name, cmd, want string
		timeout         time.Duration
	}{
		{"time-out", "sleep 10", "killed after", 300 * time.Millisecond},
		{"crash", "echo boom >&2; exit 3", "exit status 3", 0},
		{"no output", "true", "out.safetensors: open", 0},
		{"garbage output", "echo garbage > $FEDTUNE_TASK_DIR/out.safetensors", "invalid safetensors", 0},
		{"other layout", "cp " + other + " $FEDTUNE_TASK_DIR/out.safetensors", "does not fit", 0},
		{"NaN", "cp " + nanPath + " $FEDTUNE_TASK_DIR/out.safetensors", "not finite", 0},
		{"bad metrics", "cd $FEDTUNE_TASK_DIR && cp base.safetensors out.safetensors && echo '[1,2]' > metrics.json", "metrics.json", 0},
	} {
		tr := &ExecTrainer{Cmd: tc.cmd, Timeout: tc.timeout, Data: map[string]*dataset.Examples{"mnist": localMNIST(t, 64)}}
		start := time.Now()
		_, err := tr.Train(context.Background(), Input{Base: base}, execTask())
		if !errors.Is(err, ErrExternal) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want ErrExternal mentioning %q", tc.name, err, tc.want)
		}
		if tc.name == "crash" && !strings.Contains(err.Error(), "boom") {
			t.Errorf("crash: the error lacks the command's output: %v", err)
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("%s took %v", tc.name, time.Since(start))
		}
	}
	// Nothing is left behind in the work directory's parent.
	tr := &ExecTrainer{Cmd: "true", Dir: dir}
	tr.Train(context.Background(), Input{Base: base}, execTask())
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("work directories left behind: %d entries in %s", len(entries), dir)
	}
}

// TestExecTrainerRelativeCommand: the command as the README writes it,
// with a path relative to the worker's working directory, runs (it ran in
// the task's temporary directory, where the script is not), and its output
// reaches the worker's log when it succeeds.
func TestExecTrainerRelativeCommand(t *testing.T) {
	py := pythonWithNumpy()
	if py == "" {
		t.Skip("no Python with numpy (make pydeps installs Debian's python3-numpy)")
	}
	t.Chdir(filepath.Join(filepath.Dir(script(t)), "..", ".."))
	var logged strings.Builder
	arch, _ := model.Lookup("mnist-mlp-small")
	tr := &ExecTrainer{Cmd: py + " examples/external-trainer/train.py", Data: map[string]*dataset.Examples{"mnist": localMNIST(t, 300)},
		Log: slog.New(slog.NewTextHandler(&logged, nil))}
	t.Setenv("FEDTUNE_TRAIN_NUMPY", "1")
	if _, err := tr.Train(context.Background(), Input{Base: arch.Init(1)}, execTask()); err != nil {
		t.Fatalf("relative command: %v", err)
	}
	if !strings.Contains(logged.String(), "trained job j round 1") {
		t.Errorf("the trainer's output is not in the worker's log:\n%s", logged.String())
	}
}
