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
// or device=gpu with gpu=<model>, gpu_free_mb=<free memory> and, when
// nvidia-smi reports utilisation, idle=true|false. Jobs require them with
// label selectors (`job submit --require device=gpu`), and the scheduler
// prefers idle workers.
type Device struct {
	Kind   string // "cpu" or "gpu"
	Name   string // GPU model, labels-safe (spaces as dashes)
	FreeMB int
	// Util is the GPU's utilisation in percent, -1 if unknown.
	Util int
}

// IdleBelow is the GPU utilisation (percent) under which a GPU counts as
// idle: a lab's GPU busy with someone else's work is not.
const IdleBelow = 50

// Labels returns the device's gossip labels.
func (d Device) Labels() map[string]string {
	l := map[string]string{"device": d.Kind}
	if d.Kind == "gpu" {
		l["gpu"] = d.Name
		l["gpu_free_mb"] = strconv.Itoa(d.FreeMB)
		if d.Util >= 0 {
			l["idle"] = strconv.FormatBool(d.Util < IdleBelow)
		}
	}
	return l
}

// DetectDevice resolves --device: "cpu", "gpu" (an NVIDIA GPU must be
// found), or "auto" (a GPU if nvidia-smi reports one, else the CPU).
func DetectDevice(ctx context.Context, want string) (Device, error) {
	switch want {
	case "cpu":
		return Device{Kind: "cpu", Util: -1}, nil
	case "gpu", "auto", "":
	default:
		return Device{}, fmt.Errorf("--device %q: want auto, cpu or gpu", want)
	}
	d, err := nvidiaSMI(ctx)
	if err != nil {
		if want == "gpu" {
			return Device{}, fmt.Errorf("--device gpu: %w", err)
		}
		return Device{Kind: "cpu", Util: -1}, nil // auto: no GPU here
	}
	return d, nil
}

// nvidiaSMI asks nvidia-smi for the first GPU's name, free memory and
// utilisation (a third field older drivers may leave out).
func nvidiaSMI(ctx context.Context) (Device, error) {
	path, err := exec.LookPath("nvidia-smi")
	if err != nil {
		return Device{}, fmt.Errorf("no nvidia-smi on PATH: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--query-gpu=name,memory.free,utilization.gpu", "--format=csv,noheader,nounits").Output()
	if err != nil {
		return Device{}, fmt.Errorf("nvidia-smi: %w", err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	f := strings.Split(line, ",")
	if len(f) < 2 || len(f) > 3 || strings.TrimSpace(f[0]) == "" {
		return Device{}, fmt.Errorf("nvidia-smi printed %q, want \"NAME, FREE_MB, UTIL\"", line)
	}
	mb, err := strconv.Atoi(strings.TrimSpace(f[1]))
	if err != nil {
		return Device{}, fmt.Errorf("nvidia-smi printed %q, want \"NAME, FREE_MB, UTIL\"", line)
	}
	util := -1
	if len(f) == 3 {
		if u, err := strconv.Atoi(strings.TrimSpace(f[2])); err == nil && u >= 0 && u <= 100 {
			util = u
		}
	}
	return Device{Kind: "gpu", Name: strings.Join(strings.Fields(f[0]), "-"), FreeMB: mb, Util: util}, nil
}
