package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	tc "github.com/fedtune/fedtune/internal/testcluster"
	pb "github.com/fedtune/fedtune/protocol"
)

// `make soak` runs TestSoak for 10 minutes; `make test` skips it.
var (
	soakFor      = flag.Duration("soak.duration", 0, "how long TestSoak runs jobs with leader kills (0: skip)")
	soakRSS      = flag.Int("soak.max-rss-mb", 400, "TestSoak: bound on every coordinator's resident memory, MB")
	soakProfiles = flag.String("soak.profiles", "", "TestSoak: directory for the coordinators' heap profiles at the end")
	soakKill     = flag.Duration("soak.kill-every", 40*time.Second, "TestSoak: kill -9 the leader this often (0: never)")
	soakLoad     = flag.Int("soak.load", 0, "TestSoak: processes spinning on the CPU beside the cluster (synthetic load)")
)

// rssMB returns a process's resident and peak resident memory in MB.
func rssMB(pid int) (rss, hwm int) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		switch k {
		case "VmRSS":
			rss = kb / 1024
		case "VmHWM":
			hwm = kb / 1024
		}
	}
	return rss, hwm
}

// loadAverage returns the machine's 1, 5 and 15 minute load averages.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// TestSoak runs jobs on the 800 KB MNIST model on 3 coordinator processes
// and 4 workers for -soak.duration, one after another, killing the leader
// (kill -9, restarted at once) every -soak.kill-every and verifying every
// finished job's rounds through a follower; it samples each coordinator's
// resident memory every 10 s and fails if any exceeds -soak.max-rss-mb.
// It counts the leader changes it did not cause, per hour, with
// -soak.load processes spinning beside the cluster.
func TestSoak(t *testing.T) {
	if *soakFor == 0 {
		t.Skip("soak test: run with -soak.duration (make soak)")
	}
	for range *soakLoad {
		// Processes, not goroutines: goroutines share this process's
		// GOMAXPROCS and would load the machine by two cores at most.
		spin := osexec.Command("sh", "-c", "while :; do :; done")
		if err := spin.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { spin.Process.Kill(); spin.Wait() }()
	}
	pc := tc.NewProcCluster(t, binary, 3, "--pprof")
	startWorkers(pc, 4, 3000)
	waitWorkers(t, pc, 4)
	start := time.Now()
	peak := map[string]int{}
	sample := func() {
		var line []string
		for _, nd := range pc.Up() {
			rss, hwm := rssMB(nd.P.PID())
			peak[nd.Name] = max(peak[nd.Name], hwm)
			line = append(line, fmt.Sprintf("%s %d MB (peak %d)", nd.Name, rss, hwm))
			if rss > *soakRSS {
				t.Errorf("%v: %s resident memory %d MB, bound %d MB", time.Since(start).Round(time.Second), nd.Name, rss, *soakRSS)
			}
		}
		t.Logf("%v: %s", time.Since(start).Round(time.Second), strings.Join(line, ", "))
	}
	jobs, kills, verified, skipped := 0, 0, 0, 0
	lastKill, lastSample := time.Now(), time.Time{}
	var running, lastLeader string
	changes, killedLeader := 0, false
	for time.Since(start) < *soakFor {
		if time.Since(lastSample) >= 10*time.Second {
			sample()
			lastSample = time.Now()
		}
		l := pc.WaitForLeader(60 * time.Second)
		if l.Name != lastLeader {
			if lastLeader != "" && !killedLeader {
				changes++ // not one of ours
			}
			lastLeader, killedLeader = l.Name, false
		}
		if running == "" {
			running = fmt.Sprintf("soak-%d", jobs)
			if _, err := pc.Run(submitArgs(l.GRPC, running, 15, 4, "--model", "mnist-mlp", "--steps", "20", "--round-timeout", "20s", "--min-updates", "3")...); err != nil {
				t.Logf("submit %s: %v (again after the election)", running, err)
				running = ""
				time.Sleep(time.Second)
				continue
			}
			jobs++
		}
		if j := pc.Job(running); j != nil && j.Status != pb.JobStatus_JOB_STATUS_RUNNING {
			for _, nd := range pc.Up() {
				if nd != l {
					// This job, and the first one: once its blobs pass the
					// garbage collector's 10-minute grace, its early rounds'
					// updates are gone, and verifying them must answer at once.
					for _, job := range []string{running, "soak-0"} {
						vstart := time.Now()
						out, err := pc.Run("verify", "--coordinator", nd.GRPC, "--job", job)
						if err != nil || strings.Contains(out, "MISMATCH") {
							t.Errorf("verify %s on %s: %v\n%s", job, nd.Name, err, out)
						}
						if d := time.Since(vstart); d > 30*time.Second {
							t.Errorf("verify %s on %s took %v", job, nd.Name, d.Round(time.Second))
						}
						verified += strings.Count(out, ": OK")
						skipped += strings.Count(out, "skipped")
					}
					break
				}
			}
			running = ""
		}
		if *soakKill > 0 && time.Since(lastKill) >= *soakKill {
			pc.Kill(l)
			pc.Start(l)
			kills++
			killedLeader = true
			lastKill = time.Now()
		}
		time.Sleep(500 * time.Millisecond)
	}
	sample()
	took := time.Since(start)
	t.Logf("soak: %v, %d jobs, %d leader kills, %d rounds verified (%d skipped: updates collected); peak resident memory %v (bound %d MB); %d leader changes not caused by a kill (%.0f per hour) with %d spinning processes beside the cluster (load average %s)",
		took.Round(time.Second), jobs, kills, verified, skipped, peak, *soakRSS, changes, float64(changes)/took.Hours(), *soakLoad, loadAverage())
	if dir := *soakProfiles; dir != "" {
		for _, nd := range pc.Up() {
			resp, err := http.Get("http://" + nd.HTTP + "/debug/pprof/heap")
			if err != nil {
				t.Logf("heap profile of %s: %v", nd.Name, err)
				continue
			}
			f, _ := os.Create(filepath.Join(dir, nd.Name+".heap"))
			io.Copy(f, resp.Body)
			f.Close()
			resp.Body.Close()
		}
	}
}
