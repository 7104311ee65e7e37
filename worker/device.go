package worker

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Device describes what a worker trains on, as gossip labels: device=cpu,
// or device=gpu with gpu=<model> and gpu_free_mb=<free memory>. Jobs
// require them with label selectors (`job submit --require device=gpu`).
type Device struct {
	Kind   string // "cpu" or "gpu"
	Name   string // GPU model, labels-safe (spaces as dashes)
	FreeMB int
}

// Labels returns the device's gossip labels.
func (d Device) Labels() map[string]string {
	l := map[string]string{"device": d.Kind}
	if d.Kind == "gpu" {
		l["gpu"] = d.Name
		l["gpu_free_mb"] = strconv.Itoa(d.FreeMB)
	}
	return l
}

// DetectDevice resolves --device: "cpu", "gpu" (an NVIDIA GPU must be
// found), or "auto" (a GPU if nvidia-smi reports one, else the CPU).
func DetectDevice(ctx context.Context, want string) (Device, error) {
	switch want {
	case "cpu":
		return Device{Kind: "cpu"}, nil
	case "gpu", "auto", "":
	default:
		return Device{}, fmt.Errorf("--device %q: want auto, cpu or gpu", want)
	}
	d, err := nvidiaSMI(ctx)
	if err != nil {
		if want == "gpu" {
			return Device{}, fmt.Errorf("--device gpu: %w", err)
		}
		return Device{Kind: "cpu"}, nil // auto: no GPU here
	}
	return d, nil
}

// nvidiaSMI asks nvidia-smi for the first GPU's name and free memory.
func nvidiaSMI(ctx context.Context) (Device, error) {
	path, err := exec.LookPath("nvidia-smi")
	if err != nil {
		return Device{}, fmt.Errorf("no nvidia-smi on PATH: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--query-gpu=name,memory.free", "--format=csv,noheader,nounits").Output()
	if err != nil {
		return Device{}, fmt.Errorf("nvidia-smi: %w", err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	name, free, ok := strings.Cut(line, ",")
	mb, err := strconv.Atoi(strings.TrimSpace(free))
	if !ok || err != nil || strings.TrimSpace(name) == "" {
		return Device{}, fmt.Errorf("nvidia-smi printed %q, want \"NAME, FREE_MB\"", line)
	}
	return Device{Kind: "gpu", Name: strings.Join(strings.Fields(name), "-"), FreeMB: mb}, nil
}
