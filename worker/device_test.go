package worker

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// fakeSMI puts an nvidia-smi that prints out on PATH (alone).
func fakeSMI(t *testing.T, out string) {
	dir := t.TempDir()
	script := "#!/bin/sh\nprintf '" + out + "'\n"
	if err := os.WriteFile(filepath.Join(dir, "nvidia-smi"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
}

func TestDetectDevice(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no nvidia-smi
	if d, err := DetectDevice(context.Background(), "auto"); err != nil || d.Kind != "cpu" {
		t.Errorf("auto without nvidia-smi: %+v %v, want cpu", d, err)
	}
	if _, err := DetectDevice(context.Background(), "gpu"); err == nil {
		t.Error("--device gpu without a GPU was accepted")
	}
	fakeSMI(t, "NVIDIA A100-SXM4-40GB, 40123\\nNVIDIA A100-SXM4-40GB, 40000\\n")
	d, err := DetectDevice(context.Background(), "auto")
	if err != nil || d.Kind != "gpu" || d.Name != "NVIDIA-A100-SXM4-40GB" || d.FreeMB != 40123 {
		t.Fatalf("auto with a GPU: %+v %v", d, err)
	}
	if l := d.Labels(); l["device"] != "gpu" || l["gpu_free_mb"] != "40123" {
		t.Errorf("labels %v", l)
	}
	if d, _ := DetectDevice(context.Background(), "cpu"); d.Kind != "cpu" {
		t.Error("--device cpu did not force the CPU")
	}
	fakeSMI(t, "garbage")
	if d, err := DetectDevice(context.Background(), "auto"); err != nil || d.Kind != "cpu" {
		t.Errorf("auto with a broken nvidia-smi: %+v %v, want cpu", d, err)
	}
	if _, err := DetectDevice(context.Background(), "tpu"); err == nil {
		t.Error("--device tpu accepted")
	}
}
