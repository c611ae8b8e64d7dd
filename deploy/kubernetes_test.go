package deploy

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// manifests is every object of deploy/kubernetes, decoded strictly into the
// Kubernetes API's own types: a misspelt or misplaced field, or a value of
// the wrong type, is an error (kubeconform is not packaged in Debian; the
// API's Go types are the schema kubeconform's is generated from).
type manifests struct {
	configMaps   map[string]corev1.ConfigMap
	secrets      map[string]corev1.Secret
	statefulSets []appsv1.StatefulSet
	services     map[string]corev1.Service
	pdbs         []policyv1.PodDisruptionBudget
}

// kinds are the objects the manifests may hold, with their API version.
var kinds = map[string]string{
	"ConfigMap": "v1", "Secret": "v1", "Service": "v1",
	"StatefulSet": "apps/v1", "PodDisruptionBudget": "policy/v1",
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	m := manifests{configMaps: map[string]corev1.ConfigMap{}, secrets: map[string]corev1.Secret{}, services: map[string]corev1.Service{}}
	files, _ := filepath.Glob("kubernetes/*.yaml")
	for _, file := range files {
		if filepath.Base(file) == "kustomization.yaml" {
			continue
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range strings.Split(string(b), "\n---\n") {
			where := fmt.Sprintf("%s document %d", file, i+1)
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Metadata   struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			if want, ok := kinds[head.Kind]; !ok || head.APIVersion != want || head.Metadata.Name == "" {
				t.Fatalf("%s: %s %s named %q: want one of %v with its apiVersion and a name", where, head.APIVersion, head.Kind, head.Metadata.Name, kinds)
			}
			strict := func(into any) {
				if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
					t.Fatalf("%s (%s %s): %v", where, head.Kind, head.Metadata.Name, err)
				}
			}
			switch head.Kind {
			case "ConfigMap":
				var o corev1.ConfigMap
				strict(&o)
				m.configMaps[o.Name] = o
			case "Secret":
				var o corev1.Secret
				strict(&o)
				m.secrets[o.Name] = o
			case "StatefulSet":
				var o appsv1.StatefulSet
				strict(&o)
				m.statefulSets = append(m.statefulSets, o)
			case "Service":
				var o corev1.Service
				strict(&o)
				m.services[o.Name] = o
			case "PodDisruptionBudget":
				var o policyv1.PodDisruptionBudget
				strict(&o)
				m.pdbs = append(m.pdbs, o)
			}
		}
	}
	if len(m.statefulSets) != 1 {
		t.Fatalf("%d StatefulSets, want 1", len(m.statefulSets))
	}
	return m
}

// TestKustomizationListsTheManifests: every file kustomization.yaml names
// exists, and every manifest but the example Secrets is applied.
func TestKustomizationListsTheManifests(t *testing.T) {
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
		Labels     []any    `json:"labels"`
		Images     []any    `json:"images"`
	}
	b, err := os.ReadFile("kubernetes/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &k); err != nil || k.Kind != "Kustomization" {
		t.Fatalf("kustomization.yaml: %v %+v", err, k)
	}
	files, _ := filepath.Glob("kubernetes/*.yaml")
	for _, f := range files {
		name := filepath.Base(f)
		if name != "kustomization.yaml" && name != "secret.example.yaml" && !slices.Contains(k.Resources, name) {
			t.Errorf("kustomization.yaml does not apply %s", name)
		}
	}
	for _, r := range k.Resources {
		if _, err := os.Stat(filepath.Join("kubernetes", r)); err != nil {
			t.Errorf("kustomization.yaml: %v", err)
		}
	}
}

// TestKubernetesManifests: the objects fit together, and fit Postern: the
// configuration passes "postern config check", the probes ask /healthz and
// /readyz on the admin listener's port, the grace period outlasts the
// preStop pause and the drain, the queue is on a volume per pod, the pod
// runs as a user of its own, and the Services and the budget select the
// pods.
func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t)
	sts := m.statefulSets[0]
	pod := sts.Spec.Template
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	labels := pod.Labels
	selects := func(what string, sel map[string]string) {
		t.Helper()
		if len(sel) == 0 {
			t.Errorf("%s selects nothing", what)
		}
		for k, v := range sel {
			if labels[k] != v {
				t.Errorf("%s selects %s=%s, which the pods do not have (%v)", what, k, v, labels)
			}
		}
	}
	selects("the StatefulSet", sts.Spec.Selector.MatchLabels)

	// The configuration, as the pod sees it.
	cfgMount := mountAt(t, c, "/etc/postern/postern.yaml")
	vol := volume(t, pod.Spec, cfgMount.Name)
	if vol.ConfigMap == nil {
		t.Fatalf("the configuration's volume %s is not a ConfigMap", vol.Name)
	}
	cm, ok := m.configMaps[vol.ConfigMap.Name]
	if !ok {
		t.Fatalf("ConfigMap %s is not in the manifests", vol.ConfigMap.Name)
	}
	cfgText, ok := cm.Data[cfgMount.SubPath]
	if !ok {
		t.Fatalf("ConfigMap %s has no %s", cm.Name, cfgMount.SubPath)
	}
	if !slices.Equal(c.Args, []string{"serve", "-c", "/etc/postern/postern.yaml"}) {
		t.Errorf("the container runs %v", c.Args)
	}
	cfg := parseConfig(t, cfgText)
	// With the Secrets' files and variables in place, Postern accepts it.
	tlsMount := mountAt(t, c, "/etc/postern/tls")
	if v := volume(t, pod.Spec, tlsMount.Name); v.Secret == nil || v.Secret.SecretName != "postern-tls" {
		t.Errorf("the certificate does not come from the Secret postern-tls: %+v", v)
	}
	if !strings.Contains(cfgText, "cert_file: /etc/postern/tls/tls.crt") || !strings.Contains(cfgText, "key_file: /etc/postern/tls/tls.key") {
		t.Errorf("the configuration does not use the mounted certificate")
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			t.Errorf("%s is not from a Secret", e.Name)
			continue
		}
		env[e.Name] = "from-secret-" + e.ValueFrom.SecretKeyRef.Name
	}
	if env["POSTERN_ADMIN_PASSWORD"] == "" {
		t.Error("admin.password (metrics_listen is not loopback) does not come from a Secret")
	}
	configCheck(t, cfgText, env)

	// The queue: a volume per pod, holding data_dir.
	dataMount := mountAt(t, c, cfg.DataDir)
	if !slices.ContainsFunc(sts.Spec.VolumeClaimTemplates, func(p corev1.PersistentVolumeClaim) bool { return p.Name == dataMount.Name }) {
		t.Errorf("data_dir %s is on volume %s, which is not from volumeClaimTemplates", cfg.DataDir, dataMount.Name)
	}
	if dataMount.MountPath == cfg.DataDir {
		t.Errorf("data_dir is the volume's root, which belongs to root: Postern refuses a data_dir of another user")
	}

	// A user of its own, nothing more.
	sc := pod.Spec.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 ||
		sc.FSGroup == nil || *sc.FSGroup != *sc.RunAsUser {
		t.Errorf("pod securityContext %+v: want runAsNonRoot, a runAsUser, and fsGroup the same (so the volume is writable)", sc)
	}
	if csc := c.SecurityContext; csc == nil || csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation ||
		csc.Capabilities == nil || !slices.Contains(csc.Capabilities.Drop, "ALL") {
		t.Errorf("container securityContext %+v: want no privilege escalation and every capability dropped", csc)
	}

	// Ports: the container's are the ones Postern listens on.
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	wantPort := func(name, listen string) {
		t.Helper()
		_, port, err := net.SplitHostPort(listen)
		if err != nil || fmt.Sprint(ports[name]) != port {
			t.Errorf("container port %s is %d, Postern listens on %s", name, ports[name], listen)
		}
	}
	wantPort("submission", cfg.Submission.Listen[0])
	wantPort("submissions", cfg.Submission.TLSListen[0])
	wantPort("admin", cfg.Admin.MetricsListen)
	if host, _, _ := net.SplitHostPort(cfg.Admin.MetricsListen); host == "127.0.0.1" || host == "localhost" || host == "::1" {
		t.Errorf("admin.metrics_listen %s: the kubelet's probes come from outside the pod", cfg.Admin.MetricsListen)
	}

	// Probes: alive and ready, on the admin port.
	probe := func(what string, p *corev1.Probe, path string) {
		t.Helper()
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port.String() != "admin" {
			t.Errorf("%s probe %+v: want GET %s on port admin", what, p, path)
		}
	}
	probe("liveness", c.LivenessProbe, "/healthz")
	probe("startup", c.StartupProbe, "/healthz")
	probe("readiness", c.ReadinessProbe, "/readyz")

	// The drain: SIGTERM comes after preStop, SIGKILL at the grace period.
	var pause time.Duration
	if l := c.Lifecycle; l != nil && l.PreStop != nil {
		if l.PreStop.Sleep == nil {
			t.Error("preStop is not a sleep (the image has no shell)")
		} else {
			pause = time.Duration(l.PreStop.Sleep.Seconds) * time.Second
		}
	}
	var grace time.Duration // unset: 30s, the API's default
	if g := sts.Spec.Template.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	} else {
		grace = 30 * time.Second
	}
	if grace <= pause+cfg.Shutdown.Timeout {
		t.Errorf("terminationGracePeriodSeconds (%s) must exceed the preStop pause (%s) plus shutdown.timeout (%s)", grace, pause, cfg.Shutdown.Timeout)
	}

	// Services: the pods' own (serviceName) is headless; each targets a
	// port the container has.
	if s, ok := m.services[sts.Spec.ServiceName]; !ok || s.Spec.ClusterIP != "None" {
		t.Errorf("serviceName %s: want a headless Service of that name", sts.Spec.ServiceName)
	}
	for name, s := range m.services {
		selects("Service "+name, s.Spec.Selector)
		for _, p := range s.Spec.Ports {
			if _, ok := ports[p.TargetPort.String()]; !ok {
				t.Errorf("Service %s port %s targets %s, which the container does not have", name, p.Name, p.TargetPort.String())
			}
		}
		if s.Spec.Type == corev1.ServiceTypeLoadBalancer && s.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
			t.Errorf("Service %s: the client address (per-address limits) is lost without externalTrafficPolicy: Local", name)
		}
	}
	if len(m.pdbs) != 1 {
		t.Fatalf("%d PodDisruptionBudgets", len(m.pdbs))
	}
	selects("the PodDisruptionBudget", m.pdbs[0].Spec.Selector.MatchLabels)
	if m.pdbs[0].Spec.MaxUnavailable == nil && m.pdbs[0].Spec.MinAvailable == nil {
		t.Error("the PodDisruptionBudget bounds nothing")
	}
	// The Secrets the pod reads are in the example.
	for _, name := range []string{"postern-tls", strings.TrimPrefix(env["POSTERN_ADMIN_PASSWORD"], "from-secret-")} {
		if _, ok := m.secrets[name]; !ok {
			t.Errorf("secret.example.yaml lacks the Secret %s", name)
		}
	}
}

func mountAt(t *testing.T, c corev1.Container, path string) corev1.VolumeMount {
	t.Helper()
	var best corev1.VolumeMount
	for _, m := range c.VolumeMounts {
		if (path == m.MountPath || strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/")) && len(m.MountPath) > len(best.MountPath) {
			best = m
		}
	}
	if best.Name == "" {
		t.Fatalf("nothing is mounted at %s", path)
	}
	return best
}

func volume(t *testing.T, spec corev1.PodSpec, name string) corev1.Volume {
	t.Helper()
	for _, v := range spec.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no volume %s", name)
	return corev1.Volume{}
}
