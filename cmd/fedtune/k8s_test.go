package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// TestKubernetesManifests decodes examples/kubernetes strictly into the
// Kubernetes API types (an unknown or misspelt field fails) and checks what
// a fedtune cluster needs of them: coordinators in a StatefulSet whose
// --bootstrap-expect equals its replicas, behind a headless Service that
// publishes not-ready addresses, joined by their stable names, with data
// on persistent volumes, ready from /readyz and live from /healthz; a
// PodDisruptionBudget keeping a quorum; certificates from Secrets; every
// container running a fedtune command with flags that command has.
func TestKubernetesManifests(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "examples", "kubernetes", "fedtune.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	services := map[string]*corev1.Service{}
	sets := map[string]*appsv1.StatefulSet{}
	var pdbs []*policyv1.PodDisruptionBudget
	var pods []corev1.PodTemplateSpec
	for i, doc := range strings.Split(string(b), "\n---\n") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		var obj any
		switch meta.APIVersion + "/" + meta.Kind {
		case "v1/Service":
			obj = &corev1.Service{}
		case "apps/v1/StatefulSet":
			obj = &appsv1.StatefulSet{}
		case "apps/v1/DaemonSet":
			obj = &appsv1.DaemonSet{}
		case "apps/v1/Deployment":
			obj = &appsv1.Deployment{}
		case "policy/v1/PodDisruptionBudget":
			obj = &policyv1.PodDisruptionBudget{}
		default:
			t.Fatalf("document %d: unexpected %s %s", i, meta.APIVersion, meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("document %d (%s): %v", i, meta.Kind, err)
		}
		switch o := obj.(type) {
		case *corev1.Service:
			services[o.Name] = o
		case *appsv1.StatefulSet:
			sets[o.Name] = o
			pods = append(pods, o.Spec.Template)
			checkSelector(t, o.Name, o.Spec.Selector, o.Spec.Template.Labels)
		case *appsv1.DaemonSet:
			pods = append(pods, o.Spec.Template)
			checkSelector(t, o.Name, o.Spec.Selector, o.Spec.Template.Labels)
		case *appsv1.Deployment:
			pods = append(pods, o.Spec.Template)
			checkSelector(t, o.Name, o.Spec.Selector, o.Spec.Template.Labels)
		case *policyv1.PodDisruptionBudget:
			pdbs = append(pdbs, o)
		}
	}

	coord, ok := sets["fedtune-coordinator"]
	if !ok {
		t.Fatal("no fedtune-coordinator StatefulSet")
	}
	replicas := int(*coord.Spec.Replicas)
	if replicas != 3 && replicas != 5 {
		t.Errorf("%d coordinators: want 3 or 5", replicas)
	}
	headless := services[coord.Spec.ServiceName]
	if headless == nil || headless.Spec.ClusterIP != corev1.ClusterIPNone || !headless.Spec.PublishNotReadyAddresses {
		t.Errorf("the coordinators' service %q is not headless with not-ready addresses published: %+v", coord.Spec.ServiceName, headless)
	}
	c := coord.Spec.Template.Spec.Containers[0]
	args := flagValues(c.Args)
	if args["bootstrap-expect"] != strconv.Itoa(replicas) {
		t.Errorf("--bootstrap-expect %q with %d replicas", args["bootstrap-expect"], replicas)
	}
	var joins []string
	for i := range replicas {
		joins = append(joins, fmt.Sprintf("%s-%d.%s:7946", coord.Name, i, coord.Spec.ServiceName))
	}
	if args["join"] != strings.Join(joins, ",") {
		t.Errorf("--join %q, want every coordinator's stable name: %s", args["join"], strings.Join(joins, ","))
	}
	if !strings.HasPrefix(args["raft-addr"], "$(POD_NAME)."+coord.Spec.ServiceName+":") {
		t.Errorf("--raft-addr %q is not the pod's stable name", args["raft-addr"])
	}
	if len(coord.Spec.VolumeClaimTemplates) == 0 || !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
		return m.Name == coord.Spec.VolumeClaimTemplates[0].Name && m.MountPath == args["data-dir"]
	}) {
		t.Errorf("--data-dir %s is not on a persistent volume claim", args["data-dir"])
	}
	checkProbes(t, "coordinator", c, args["http-addr"])
	pdbOK := false
	for _, p := range pdbs {
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if err == nil && sel.Matches(labels.Set(coord.Spec.Template.Labels)) && p.Spec.MinAvailable != nil && p.Spec.MinAvailable.IntValue() == replicas/2+1 {
			pdbOK = true
		}
	}
	if !pdbOK {
		t.Errorf("no PodDisruptionBudget keeps a quorum (%d of %d) of the coordinators", replicas/2+1, replicas)
	}

	// Every container: a fedtune command with flags it has, its
	// certificates from a Secret, probes on its HTTP port.
	for _, p := range pods {
		secrets := map[string]bool{}
		for _, v := range p.Spec.Volumes {
			if v.Secret != nil {
				secrets[v.Name] = true
			}
		}
		for _, c := range p.Spec.Containers {
			if c.Image != "fedtune:latest" || len(c.Args) == 0 {
				t.Errorf("%s: image %q args %v", c.Name, c.Image, c.Args)
				continue
			}
			sub := c.Args[0]
			flags, envs := knownConfig(t, sub)
			for _, a := range c.Args[1:] {
				if f, ok := strings.CutPrefix(a, "--"); ok && !flags[f] {
					t.Errorf("%s: fedtune %s has no flag --%s", c.Name, sub, f)
				}
			}
			for _, e := range c.Env {
				if strings.HasPrefix(e.Name, "FEDTUNE_") && !envs[e.Name] {
					t.Errorf("%s: fedtune %s reads no %s", c.Name, sub, e.Name)
				}
			}
			args := flagValues(c.Args)
			if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
				return secrets[m.Name] && m.MountPath == args["cert-dir"] && m.ReadOnly
			}) {
				t.Errorf("%s: --cert-dir %q is not a read-only Secret volume", c.Name, args["cert-dir"])
			}
			checkProbes(t, c.Name, c, args["http-addr"])
		}
	}
}

// flagValues maps each --flag in args to the argument after it.
func flagValues(args []string) map[string]string {
	out := map[string]string{}
	for i, a := range args {
		if f, ok := strings.CutPrefix(a, "--"); ok && i+1 < len(args) {
			out[f] = args[i+1]
		}
	}
	return out
}

func checkSelector(t *testing.T, name string, sel *metav1.LabelSelector, podLabels map[string]string) {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || !s.Matches(labels.Set(podLabels)) {
		t.Errorf("%s: selector %v does not match its pods' labels %v (%v)", name, sel, podLabels, err)
	}
}

// checkProbes: readiness from /readyz, liveness from /healthz, both on the
// container port that --http-addr listens on.
func checkProbes(t *testing.T, name string, c corev1.Container, httpAddr string) {
	t.Helper()
	_, port, _ := strings.Cut(httpAddr, ":")
	var named string
	for _, p := range c.Ports {
		if strconv.Itoa(int(p.ContainerPort)) == port {
			named = p.Name
		}
	}
	for _, pr := range []struct {
		probe *corev1.Probe
		path  string
	}{{c.ReadinessProbe, "/readyz"}, {c.LivenessProbe, "/healthz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil || pr.probe.HTTPGet.Path != pr.path || named == "" || pr.probe.HTTPGet.Port.String() != named {
			t.Errorf("%s: want a probe of %s on the --http-addr port %s (%q)", name, pr.path, port, named)
		}
	}
}
