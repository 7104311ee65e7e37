package worker

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/fedtune/fedtune/dataset"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
)

// ExecTrainer trains with an external command — a lab's own PyTorch or
// JAX stack — while fedtune coordinates. For each task it makes a work
// directory holding:
//
//	task.json            the task (ExecTask below): job, round, model, training recipe, file names
//	base.safetensors     the base model, F32, PyTorch-style names (fc1.weight [out, in], …)
//	adapter.safetensors  LoRA jobs only: the current adapters, PEFT names
//	                     (fc1.lora_A.weight [r, in], fc1.lora_B.weight [out, r], …);
//	                     task.json's "lora" gives rank and alpha (scale alpha/rank)
//	data_x.npy           the worker's local examples (float32, [n, features]) and
//	data_y.npy           labels (uint8, [n]), when the worker holds the task's data set
//
// runs the command in the worker's own working directory (sh -c, with
// FEDTUNE_TASK set to task.json's path and FEDTUNE_TASK_DIR to the task
// directory; task.json names every file by its absolute path, so a command
// given with a relative path, such as python3 examples/external-trainer/train.py,
// runs as written), and expects it to write out.safetensors — the trained full weights, or in
// a LoRA job the trained adapters (the base stays frozen), same names and
// shapes as it was given — and metrics.json ({"samples": n, "loss": x, …}).
// The worker validates both and submits out − (base or adapters) as its
// update. A command that
// runs past the task's deadline (or Timeout) is killed; a non-zero exit, a
// missing or malformed output, a model of another layout or with NaN/Inf
// values is an error naming the problem, and the round goes on without
// this worker.
type ExecTrainer struct {
	Cmd     string                       // shell command
	Dir     string                       // where task directories are made (default: the system temp dir)
	Data    map[string]*dataset.Examples // local data by data set name
	Timeout time.Duration                // cap per task, besides the task deadline (0: none)
	Log     *slog.Logger
}

// ExecTask is task.json.
type ExecTask struct {
	Job      string          `json:"job"`
	Round    uint32          `json:"round"`
	Model    string          `json:"model"`
	Dataset  string          `json:"dataset"`
	Seed     uint64          `json:"seed"`
	Train    ExecTrainRecipe `json:"train"`
	Base     string          `json:"base"`
	Adapter  string          `json:"adapter,omitempty"` // LoRA jobs: the adapters to train
	LoRA     *ExecLoRA       `json:"lora,omitempty"`
	DataX    string          `json:"data_x,omitempty"`
	DataY    string          `json:"data_y,omitempty"`
	Classes  int             `json:"classes,omitempty"`
	Output   string          `json:"output"`
	Metrics  string          `json:"metrics"`
	Deadline string          `json:"deadline,omitempty"` // RFC 3339
}

// ExecLoRA is a LoRA task's adapter shape: every dense layer computes
// x·Wᵀ + (Alpha/Rank)·x·Aᵀ·Bᵀ + b with W and b frozen.
type ExecLoRA struct {
	Rank  uint32  `json:"rank"`
	Alpha float64 `json:"alpha"`
}

// ExecTrainRecipe is the local training recipe of a task.
type ExecTrainRecipe struct {
	Epochs    uint32  `json:"epochs"`
	Steps     uint32  `json:"steps"`
	BatchSize uint32  `json:"batch_size"`
	LR        float64 `json:"lr"`
	Momentum  float64 `json:"momentum"`
	ProxMu    float64 `json:"prox_mu"`
}

// ErrExternal wraps every failure of an external trainer.
var ErrExternal = errors.New("external trainer")

// ErrMalformed marks a trainer's output that is not a usable update
// (unreadable, another layout, not finite).
var ErrMalformed = errors.New("malformed output")

// Train runs the command for one task.
func (e *ExecTrainer) Train(ctx context.Context, in Input, task *pb.Task) (Result, error) {
	start := time.Now()
	dir, err := os.MkdirTemp(e.Dir, "fedtune-task-")
	if err != nil {
		return Result{}, fmt.Errorf("%w: work dir: %v", ErrExternal, err)
	}
	defer os.RemoveAll(dir)
	if dir, err = filepath.Abs(dir); err != nil {
		return Result{}, fmt.Errorf("%w: work dir: %v", ErrExternal, err)
	}
	// task.json names its files by absolute path: the command runs in the
	// worker's own working directory (so that a relative path in it, as
	// the README writes it, resolves), not in the task directory.
	taskFile := func(name string) string { return filepath.Join(dir, name) }
	t := ExecTask{Job: task.Job, Round: task.Round, Model: task.Model, Dataset: task.Dataset, Seed: task.Seed,
		Base: taskFile("base.safetensors"), Output: taskFile("out.safetensors"), Metrics: taskFile("metrics.json")}
	if tc := task.Train; tc != nil {
		t.Train = ExecTrainRecipe{Epochs: tc.LocalEpochs, Steps: tc.LocalSteps, BatchSize: tc.BatchSize, LR: tc.LearningRate, Momentum: tc.Momentum, ProxMu: tc.ProxMu}
	}
	if d, ok := ctx.Deadline(); ok {
		t.Deadline = d.UTC().Format(time.RFC3339)
	}
	base := in.Base // what the output must fit and the delta is taken from
	frozen := in.Base
	if l := task.Lora; l != nil {
		frozen = in.Frozen
		t.Adapter, t.LoRA = taskFile("adapter.safetensors"), &ExecLoRA{Rank: l.Rank, Alpha: l.Alpha}
		if err := tensor.WriteFile(t.Adapter, in.Base, tensor.F32); err != nil {
			return Result{}, fmt.Errorf("%w: write adapters: %v", ErrExternal, err)
		}
	}
	if err := tensor.WriteFile(t.Base, frozen, tensor.F32); err != nil {
		return Result{}, fmt.Errorf("%w: write base: %v", ErrExternal, err)
	}
	local, _ := localFor(e.Data, task.Dataset)
	if local != nil {
		t.DataX, t.DataY, t.Classes = taskFile("data_x.npy"), taskFile("data_y.npy"), local.Classes
		if err := writeNPY(t.DataX, "<f4", []int{local.Len(), local.Dim}, tensor.F32Bytes(local.X)); err != nil {
			return Result{}, fmt.Errorf("%w: write data: %v", ErrExternal, err)
		}
		if err := writeNPY(t.DataY, "|u1", []int{local.Len()}, local.Y); err != nil {
			return Result{}, fmt.Errorf("%w: write data: %v", ErrExternal, err)
		}
	}
	tj, _ := json.MarshalIndent(t, "", "  ")
	taskPath := taskFile("task.json")
	if err := os.WriteFile(taskPath, tj, 0o644); err != nil {
		return Result{}, fmt.Errorf("%w: write task: %v", ErrExternal, err)
	}

	rctx := ctx
	if e.Timeout > 0 {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, e.Timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(rctx, "sh", "-c", e.Cmd)
	cmd.Env = append(os.Environ(), "FEDTUNE_TASK="+taskPath, "FEDTUNE_TASK_DIR="+dir)
	var stderr tail
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.WaitDelay = 2 * time.Second
	err = cmd.Run()
	switch {
	case rctx.Err() != nil:
		return Result{}, fmt.Errorf("%w: %q killed after %s: %v (the task's deadline or --trainer-timeout)", ErrExternal, e.Cmd, time.Since(start).Round(time.Millisecond), rctx.Err())
	case err != nil:
		return Result{}, fmt.Errorf("%w: %q failed: %v; its last output:\n%s", ErrExternal, e.Cmd, err, stderr.String())
	}

	if e.Log != nil && len(stderr.b) > 0 {
		// Kept where the operator reads the worker's own log.
		e.Log.Info("external trainer output", "job", task.Job, "round", task.Round, "output", strings.TrimSpace(stderr.String()))
	}
	out, err := tensor.ReadFile(t.Output)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %w: %s: %v", ErrExternal, ErrMalformed, t.Output, err)
	}
	if err := tensor.SameLayout(out, base); err != nil {
		if t.LoRA != nil {
			return Result{}, fmt.Errorf("%w: %w: it does not fit the rank-%d adapters of %s (a LoRA task returns the trained adapters, not the model): %v", ErrExternal, ErrMalformed, t.LoRA.Rank, task.Model, err)
		}
		return Result{}, fmt.Errorf("%w: %w: it does not fit model %s: %v", ErrExternal, ErrMalformed, task.Model, err)
	}
	if err := out.CheckFinite(); err != nil {
		return Result{}, fmt.Errorf("%w: %w: %v", ErrExternal, ErrMalformed, err)
	}
	metrics := map[string]float64{}
	if b, err := os.ReadFile(t.Metrics); err == nil {
		if err := json.Unmarshal(b, &metrics); err != nil {
			return Result{}, fmt.Errorf("%w: %s is not a JSON object of numbers: %v", ErrExternal, t.Metrics, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return Result{}, fmt.Errorf("%w: %v", ErrExternal, err)
	}
	samples := metrics["samples"]
	if samples <= 0 && local != nil {
		samples = float64(local.Len())
	}
	if !(samples >= 1) || samples > math.MaxInt64 {
		return Result{}, fmt.Errorf("%w: metrics.json must give \"samples\" > 0 (the examples trained on)", ErrExternal)
	}
	delete(metrics, "samples")
	delta, err := tensor.Diff(out, base)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %v", ErrExternal, err)
	}
	metrics["seconds"] = time.Since(start).Seconds()
	if e.Log != nil {
		e.Log.Info("external trainer done", "job", task.Job, "round", task.Round, "seconds", metrics["seconds"], "loss", metrics["loss"])
	}
	return Result{Delta: delta, Samples: uint64(samples), Metrics: metrics}, nil
}

// Close does nothing (the trainer holds no resources between tasks).
func (e *ExecTrainer) Close() {}

// writeNPY writes a NumPy .npy file (format 1.0) of a C-order array.
func writeNPY(path, descr string, shape []int, data []byte) error {
	dims := ""
	for _, d := range shape {
		dims += fmt.Sprintf("%d, ", d)
	}
	if len(shape) > 1 {
		dims = dims[:len(dims)-2]
	}
	header := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, dims)
	// magic (6) + version (2) + length (2) + header, padded to 64 bytes, ending in \n
	pad := 64 - (10+len(header)+1)%64
	header += string(bytes.Repeat([]byte{' '}, pad%64)) + "\n"
	var b bytes.Buffer
	b.WriteString("\x93NUMPY\x01\x00")
	binary.Write(&b, binary.LittleEndian, uint16(len(header)))
	b.WriteString(header)
	b.Write(data)
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// tail keeps the last 4 KiB written to it.
type tail struct{ b []byte }

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

func (t *tail) String() string { return string(t.b) }
