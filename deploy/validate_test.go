package deploy_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// build runs kustomize on dir and strictly decodes every object against the
// Kubernetes API types: unknown or misplaced fields fail.
func build(t *testing.T, dir string) []runtime.Object {
	t.Helper()
	return buildWith(t, dir, nil)
}

// buildWith is build; other, when set, takes the objects of API groups the
// Kubernetes scheme does not hold (KEDA's), as JSON, and decodes them itself.
func buildWith(t *testing.T, dir string, other func(apiVersion, kind string, json []byte)) []runtime.Object {
	t.Helper()
	dec := strictDecoder(t)
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var out []runtime.Object
	for _, r := range res.Resources() {
		if other != nil && !kubernetesGroup(r.GetApiVersion()) {
			j, err := r.MarshalJSON()
			if err != nil {
				t.Fatal(err)
			}
			other(r.GetApiVersion(), r.GetKind(), j)
			continue
		}
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := dec.Decode(y, nil, nil)
		if err != nil {
			t.Fatalf("%s %s: %v", r.GetKind(), r.GetName(), err)
		}
		out = append(out, obj)
	}
	return out
}

// kubernetesGroup: apiVersion is of a group the Kubernetes scheme here holds
// (the rest, KEDA's and prometheus-operator's, are decoded into mirrors).
func kubernetesGroup(apiVersion string) bool {
	return !strings.HasPrefix(apiVersion, "keda.sh/") && !strings.HasPrefix(apiVersion, "monitoring.coreos.com/")
}

// strictDecoder decodes the Kubernetes kinds the manifests use, refusing
// unknown or misplaced fields.
func strictDecoder(t *testing.T) runtime.Decoder {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{appsv1.AddToScheme, corev1.AddToScheme, policyv1.AddToScheme, autoscalingv2.AddToScheme, batchv1.AddToScheme, networkingv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}

func TestManifests(t *testing.T) {
	for _, dir := range []string{"k8s/base", "k8s/overlays/production"} {
		t.Run(dir, func(t *testing.T) { checkManifests(t, build(t, dir)) })
	}
	// Production requires signed device tokens, and runs a pinned release.
	for _, o := range build(t, "k8s/overlays/production") {
		if d, ok := o.(*appsv1.Deployment); ok && !strings.HasSuffix(d.Spec.Template.Spec.Containers[0].Image, ":v0.1.0") {
			t.Errorf("production %s runs %s, not the pinned release", d.Name, d.Spec.Template.Spec.Containers[0].Image)
		}
		if cm, ok := o.(*corev1.ConfigMap); ok && cm.Name == "stagecast" && cm.Data["STAGECAST_REQUIRE_DEVICE_TOKEN"] != "true" {
			t.Error("the production overlay must set STAGECAST_REQUIRE_DEVICE_TOKEN=true")
		}
		if cm, ok := o.(*corev1.ConfigMap); ok && cm.Name == "stagecast" && cm.Data["STAGECAST_REDIS_WAIT_REPLICAS"] != "1" {
			t.Error("the production overlay must set STAGECAST_REDIS_WAIT_REPLICAS=1 (hardening #11)")
		}
	}
}

// manifests indexes a rendering's objects by component (the pod template's
// app.kubernetes.io/name), so that the kustomize base, its overlays and the
// Helm chart, whose object names differ, are checked alike.
type manifests struct {
	deps      map[string]*appsv1.Deployment // by component
	hpas      map[string]*autoscalingv2.HorizontalPodAutoscaler
	pdbs      map[string]*policyv1.PodDisruptionBudget
	cfg       *corev1.ConfigMap // the one with STAGECAST_REDIS
	redisConf string
	pods      []corev1.PodSpec
	netpols   []*networkingv1.NetworkPolicy
	podLabels map[string]bool
	secrets   []*corev1.Secret
	statefuls map[string]*appsv1.StatefulSet
	other     []runtime.Object
}

func index(objs []runtime.Object) *manifests {
	m := &manifests{deps: map[string]*appsv1.Deployment{}, hpas: map[string]*autoscalingv2.HorizontalPodAutoscaler{},
		pdbs: map[string]*policyv1.PodDisruptionBudget{}, podLabels: map[string]bool{}, statefuls: map[string]*appsv1.StatefulSet{}}
	byName := map[string]string{}
	var hpas []*autoscalingv2.HorizontalPodAutoscaler
	for _, o := range objs {
		switch v := o.(type) {
		case *networkingv1.NetworkPolicy:
			m.netpols = append(m.netpols, v)
		case *corev1.Secret:
			m.secrets = append(m.secrets, v)
		case *appsv1.Deployment:
			c := v.Spec.Template.Labels["app.kubernetes.io/name"]
			m.deps[c] = v
			byName[v.Name] = c
			m.pods = append(m.pods, v.Spec.Template.Spec)
			m.podLabels[c] = true
		case *appsv1.StatefulSet:
			m.statefuls[v.Spec.Template.Labels["app.kubernetes.io/name"]] = v
			m.pods = append(m.pods, v.Spec.Template.Spec)
			m.podLabels[v.Spec.Template.Labels["app.kubernetes.io/name"]] = true
		case *batchv1.Job:
			m.pods = append(m.pods, v.Spec.Template.Spec)
			m.podLabels[v.Spec.Template.Labels["app.kubernetes.io/name"]] = true
		case *corev1.ConfigMap:
			if _, ok := v.Data["STAGECAST_REDIS"]; ok {
				m.cfg = v
			}
			if c, ok := v.Data["redis.conf"]; ok {
				m.redisConf = c
			}
		case *policyv1.PodDisruptionBudget:
			m.pdbs[v.Spec.Selector.MatchLabels["app.kubernetes.io/name"]] = v
		case *autoscalingv2.HorizontalPodAutoscaler:
			hpas = append(hpas, v)
		default:
			m.other = append(m.other, o)
		}
	}
	for _, h := range hpas {
		m.hpas[byName[h.Spec.ScaleTargetRef.Name]] = h
	}
	return m
}

func checkManifests(t *testing.T, objs []runtime.Object) {
	m := index(objs)
	deps, cfg, hpas, pods := m.deps, m.cfg, m.hpas, m.pods
	for _, s := range m.secrets {
		t.Errorf("Secret %s is shipped in the manifests: secrets come from the operator's secret manager", s.Name)
	}
	for _, name := range []string{"broadcaster", "proxy", "prefetch"} {
		if deps[name] == nil {
			t.Fatalf("no %s Deployment", name)
		}
		if hpas[name] != nil && deps[name].Spec.Replicas != nil {
			t.Errorf("the %s Deployment sets replicas and has an HPA: applying the manifests during an event would scale the tier back to %d", name, *deps[name].Spec.Replicas)
		}
		c := deps[name].Spec.Template.Spec.Containers[0]
		if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil || c.Lifecycle.PreStop.Sleep.Seconds <= 0 {
			t.Errorf("%s has no preStop sleep: SIGTERM would arrive while the load balancer still sends it requests", name)
		}
		if m.pdbs[name] == nil {
			t.Errorf("%s has no PodDisruptionBudget", name)
		}
	}
	if cfg == nil {
		t.Fatal("no ConfigMap with the shared STAGECAST_* settings")
	}
	for _, p := range pods {
		if p.SecurityContext == nil || p.SecurityContext.RunAsNonRoot == nil || !*p.SecurityContext.RunAsNonRoot {
			t.Errorf("a pod (%s) may run as root", p.Containers[0].Name)
		}
		for _, c := range p.Containers {
			if c.Image == "" || c.Image == "stagecast" {
				t.Errorf("container %s has no registry image (%q): the kustomize images transformer did not apply", c.Name, c.Image)
			}
		}
	}
	proxy := deps["proxy"].Spec.Template.Spec
	drain, err := time.ParseDuration(cfg.Data["STAGECAST_DRAIN_WINDOW"])
	if err != nil {
		t.Fatalf("STAGECAST_DRAIN_WINDOW: %v", err)
	}
	c := proxy.Containers[0]
	preStop := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	if g := proxy.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= preStop+drain+10*time.Second {
		t.Errorf("proxy terminationGracePeriodSeconds must exceed the preStop sleep %v + the drain window %v + 10s (have %v)", preStop, drain, fmtSeconds(g))
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Error("proxy readiness must use /readyz (it fails while draining)")
	}
	if proxy.Affinity == nil || proxy.Affinity.PodAntiAffinity == nil {
		t.Error("proxies need pod anti-affinity")
	}
	if len(proxy.TopologySpreadConstraints) == 0 || proxy.TopologySpreadConstraints[0].TopologyKey != "topology.kubernetes.io/zone" {
		t.Error("proxies need spreading over zones: one zone's loss must not be most devices")
	}
	pdb := m.pdbs["proxy"]
	if pdb == nil || pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
		t.Error("proxies need a PodDisruptionBudget of maxUnavailable 1")
	}
	h := hpas["proxy"]
	if h == nil || len(h.Spec.Metrics) == 0 || h.Spec.Metrics[0].Pods == nil ||
		h.Spec.Metrics[0].Pods.Metric.Name != "stagecast_proxy_connections" {
		t.Error("the proxy HPA must scale on stagecast_proxy_connections")
	}
	checkSettingsAreFlags(t, cfg)
	checkSecurity(t, cfg, pods, m.netpols, m.podLabels, m.redisConf)
}

// checkSecurity: Redis needs a password and only stagecast's pods reach it;
// every server reads the Redis password from its Secret; proxies and prefetch
// servers verify device tokens.
func checkSecurity(t *testing.T, cfg *corev1.ConfigMap, pods []corev1.PodSpec, netpols []*networkingv1.NetworkPolicy, podLabels map[string]bool, redisConf string) {
	t.Helper()
	if strings.Contains(redisConf, "protected-mode no") {
		t.Error("redis.conf turns protected mode off")
	}
	var redisGuarded bool
	for _, np := range netpols {
		if np.Spec.PodSelector.MatchLabels["app.kubernetes.io/name"] != "redis-cluster" {
			continue
		}
		redisGuarded = len(np.Spec.Ingress) > 0
		for _, in := range np.Spec.Ingress {
			for _, from := range in.From {
				if from.PodSelector == nil || from.NamespaceSelector != nil || from.IPBlock != nil {
					t.Errorf("NetworkPolicy %s admits more than pods of this namespace", np.Name)
					continue
				}
				for _, e := range from.PodSelector.MatchExpressions {
					for _, v := range e.Values {
						if !podLabels[v] {
							t.Errorf("NetworkPolicy %s names pods %q that no workload has", np.Name, v)
						}
					}
				}
			}
		}
	}
	if !redisGuarded {
		t.Error("no NetworkPolicy restricts who reaches Redis")
	}
	if cfg.Data["STAGECAST_REDIS_PASSWORD_FILE"] == "" || cfg.Data["STAGECAST_DEVICE_KEYS"] == "" {
		t.Error("the shared config must set STAGECAST_REDIS_PASSWORD_FILE and STAGECAST_DEVICE_KEYS")
	}
	for _, p := range pods {
		c := p.Containers[0]
		if c.Image == "" || !strings.Contains(c.Image, "stagecast") {
			if strings.HasPrefix(c.Image, "redis") {
				auth := false
				for _, e := range c.Env {
					auth = auth || (e.Name == "REDISCLI_AUTH" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil)
				}
				if !auth {
					t.Errorf("Redis container %s has no password from a Secret", c.Name)
				}
			}
			continue
		}
		mounted := false
		for _, m := range c.VolumeMounts {
			mounted = mounted || strings.HasPrefix(cfg.Data["STAGECAST_REDIS_PASSWORD_FILE"], m.MountPath+"/")
		}
		if !mounted {
			t.Errorf("container %s does not mount the Redis password", c.Name)
		}
	}
}

var flagLine = regexp.MustCompile(`(?m)^\s+-([a-z0-9-]+)`)

// checkSettingsAreFlags: every STAGECAST_* setting names a real flag of some
// server subcommand; a typo would otherwise be silently ignored.
func checkSettingsAreFlags(t *testing.T, cfg *corev1.ConfigMap) {
	bin := stagecastBinary(t)
	flags := map[string]bool{}
	for _, cmd := range []string{"proxy", "broadcaster", "prefetch"} {
		out, _ := exec.Command(bin, cmd, "-h").CombinedOutput()
		for _, m := range flagLine.FindAllStringSubmatch(string(out), -1) {
			flags["STAGECAST_"+strings.ToUpper(strings.ReplaceAll(m[1], "-", "_"))] = true
		}
	}
	if len(flags) < 10 {
		t.Fatalf("could not read the flags of stagecast (%d found)", len(flags))
	}
	for k := range cfg.Data {
		if !flags[k] {
			t.Errorf("ConfigMap setting %s is not a flag of stagecast proxy/broadcaster/prefetch", k)
		}
	}
}

var binDir string

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "deploy-test-")
	if err != nil {
		panic(err)
	}
	binDir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

// stagecastBinary builds cmd/stagecast once for the package's tests.
func stagecastBinary(t *testing.T) string {
	bin := filepath.Join(binDir, "stagecast")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/stagecast/stagecast/cmd/stagecast").CombinedOutput(); err != nil {
		t.Fatalf("build stagecast: %v\n%s", err, out)
	}
	return bin
}

func TestCompose(t *testing.T) {
	b, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Services map[string]struct {
			Image           string            `json:"image"`
			Build           map[string]string `json:"build"`
			Command         []string          `json:"command"`
			Environment     map[string]string `json:"environment"`
			Ports           []string          `json:"ports"`
			DependsOn       []string          `json:"depends_on"`
			Volumes         []string          `json:"volumes"`
			StopGracePeriod string            `json:"stop_grace_period"`
		} `json:"services"`
		Volumes map[string]any `json:"volumes"`
	}
	if err := yaml.UnmarshalStrict(b, &doc); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	port := regexp.MustCompile(`^\d+:\d+$`)
	for name, s := range doc.Services {
		if s.Image == "" && s.Build["dockerfile"] == "" {
			t.Errorf("service %s has neither image nor build", name)
		}
		if s.Build["dockerfile"] != "" {
			if _, err := os.Stat(filepath.Join(s.Build["context"], s.Build["dockerfile"])); err != nil {
				t.Errorf("service %s: dockerfile %s/%s: %v", name, s.Build["context"], s.Build["dockerfile"], err)
			}
		}
		for _, d := range s.DependsOn {
			if _, ok := doc.Services[d]; !ok {
				t.Errorf("service %s depends on unknown service %s", name, d)
			}
		}
		for _, p := range s.Ports {
			if !port.MatchString(p) {
				t.Errorf("service %s: port %q is not HOST:CONTAINER", name, p)
			}
		}
		if strings.HasPrefix(name, "proxy") {
			if g, err := time.ParseDuration(s.StopGracePeriod); err != nil || g <= 40*time.Second {
				t.Errorf("service %s: stop_grace_period %q must exceed the 30s drain window + 10s", name, s.StopGracePeriod)
			}
		}
		if len(s.Command) > 0 && s.Build["dockerfile"] != "" && !map[string]bool{"proxy": true, "broadcaster": true, "prefetch": true}[s.Command[0]] {
			t.Errorf("service %s runs unknown subcommand %q", name, s.Command[0])
		}
	}
	for _, want := range []string{"redis", "broadcaster", "prefetch"} {
		if _, ok := doc.Services[want]; !ok {
			t.Errorf("no %s service", want)
		}
	}
}

func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	froms := regexp.MustCompile(`(?m)^FROM `).FindAllStringIndex(s, -1)
	if len(froms) < 2 {
		t.Errorf("want a multi-stage build, found %d FROM", len(froms))
	}
	final := s[froms[len(froms)-1][0]:]
	for _, want := range []string{"USER nonroot", "ENTRYPOINT"} {
		if !strings.Contains(final, want) {
			t.Errorf("final stage lacks %q", want)
		}
	}
	if !strings.Contains(s, "CGO_ENABLED=0") {
		t.Error("the binary must be static (CGO_ENABLED=0)")
	}
}

func fmtSeconds(g *int64) string {
	if g == nil {
		return "none"
	}
	return (time.Duration(*g) * time.Second).String()
}

// TestLoadgenJob (issue 23, item 5): the rehearsal Job decodes strictly; it is
// Indexed with as many completions as parallel pods and as --segment's shares
// (the ConfigMap's SHARES), starts every share at START_AT, mints device
// tokens from the mounted key, writes each share where merge finds it, and
// runs as the image's user on a read-only root.
func TestLoadgenJob(t *testing.T) {
	var job *batchv1.Job
	var cm *corev1.ConfigMap
	for _, o := range build(t, "k8s/loadgen") {
		switch o := o.(type) {
		case *batchv1.Job:
			job = o
		case *corev1.ConfigMap:
			cm = o
		}
	}
	if job == nil || cm == nil {
		t.Fatal("want the Job and its ConfigMap")
	}
	s := job.Spec
	if s.CompletionMode == nil || *s.CompletionMode != batchv1.IndexedCompletion || s.Completions == nil || s.Parallelism == nil ||
		*s.Completions != *s.Parallelism || strconv.Itoa(int(*s.Completions)) != cm.Data["SHARES"] {
		t.Fatalf("job spec: indexed %v, completions %v, parallelism %v, SHARES %q: all the same number", s.CompletionMode, s.Completions, s.Parallelism, cm.Data["SHARES"])
	}
	c := s.Template.Spec.Containers[0]
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"loadgen live", "--segment=$(JOB_COMPLETION_INDEX)/$(SHARES)", "--start-at=$(START_AT)", "--device-key=/keys/", "--partial-out=/results/share-$(JOB_COMPLETION_INDEX).json"} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("the loadgen must run on a read-only root, as the image allows")
	}
	if psc := s.Template.Spec.SecurityContext; psc == nil || psc.RunAsUser == nil || *psc.RunAsUser != 65532 {
		t.Error("the loadgen must run as the image's user 65532")
	}
	if !strings.HasPrefix(c.Image, "ghcr.io/") {
		t.Errorf("image %q: the kustomize images transformer did not apply", c.Image)
	}
}

// scaledObject is the part of KEDA's ScaledObject (keda.sh/v1alpha1) the
// live-event overlay uses, decoded with unknown fields refused: a misspelt
// field fails here, as the Kubernetes kinds do in build.
type scaledObject struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		ScaleTargetRef struct {
			Name string `json:"name"`
		} `json:"scaleTargetRef"`
		MinReplicaCount int `json:"minReplicaCount"`
		MaxReplicaCount int `json:"maxReplicaCount"`
		PollingInterval int `json:"pollingInterval"`
		CooldownPeriod  int `json:"cooldownPeriod"`
		Advanced        struct {
			HorizontalPodAutoscalerConfig struct {
				Behavior autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior"`
			} `json:"horizontalPodAutoscalerConfig"`
		} `json:"advanced"`
		Triggers []struct {
			Type     string            `json:"type"`
			Metadata map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

// TestLiveEventOverlay (issue 23, item 3): the live-event overlay decodes
// strictly; its proxy tier is the base proxy's pod under its own name, with
// no HPA of its own (KEDA makes it); the ScaledObject targets it, scales up
// fast and down slowly, on the event's window (cron), on a stage armed within
// 15 minutes (the broadcaster's gauge) and on connections.
func TestLiveEventOverlay(t *testing.T) {
	var sos []scaledObject
	objs := buildWith(t, "k8s/overlays/live-event", func(apiVersion, kind string, j []byte) {
		if kind != "ScaledObject" {
			t.Errorf("unexpected %s %s", apiVersion, kind)
			return
		}
		var so scaledObject
		dec := json.NewDecoder(bytes.NewReader(j))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&so); err != nil {
			t.Fatalf("ScaledObject: %v", err)
		}
		sos = append(sos, so)
	})
	var live *appsv1.Deployment
	for _, o := range objs {
		switch o := o.(type) {
		case *appsv1.Deployment:
			if o.Name == "proxy-live" {
				live = o
			}
			if img := o.Spec.Template.Spec.Containers[0].Image; img != "ghcr.io/stagecast/stagecast:v0.1.0" {
				t.Errorf("%s runs %s, not the pinned release", o.Name, img)
			}
		case *autoscalingv2.HorizontalPodAutoscaler:
			if o.Spec.ScaleTargetRef.Name == "proxy-live" {
				t.Error("an HPA targets proxy-live: KEDA makes its own, two would fight")
			}
		}
	}
	if live == nil || live.Namespace != "stagecast" || !strings.HasPrefix(live.Spec.Template.Spec.Containers[0].Image, "ghcr.io/") ||
		live.Spec.Template.Labels["app.kubernetes.io/name"] != "proxy-live" {
		t.Fatalf("the live proxy Deployment: %+v", live)
	}
	if len(sos) != 1 {
		t.Fatalf("%d ScaledObjects, want 1", len(sos))
	}
	so := sos[0]
	if so.Spec.ScaleTargetRef.Name != "proxy-live" || so.Metadata.Namespace != "stagecast" || so.Spec.MaxReplicaCount <= so.Spec.MinReplicaCount {
		t.Fatalf("ScaledObject %+v", so)
	}
	up := so.Spec.Advanced.HorizontalPodAutoscalerConfig.Behavior.ScaleUp
	if up == nil || up.StabilizationWindowSeconds == nil || *up.StabilizationWindowSeconds != 0 || len(up.Policies) == 0 || up.Policies[0].PeriodSeconds > 15 {
		t.Fatalf("scale-up %+v: want no stabilization and a policy every 15 s at most", up)
	}
	kinds := map[string]bool{}
	for _, tr := range so.Spec.Triggers {
		kinds[tr.Type] = true
		if tr.Type == "prometheus" && (tr.Metadata["query"] == "" || tr.Metadata["threshold"] == "" || tr.Metadata["serverAddress"] == "") {
			t.Errorf("prometheus trigger %+v lacks query, threshold or serverAddress", tr.Metadata)
		}
		if tr.Type == "cron" && (tr.Metadata["start"] == "" || tr.Metadata["end"] == "" || tr.Metadata["desiredReplicas"] == "") {
			t.Errorf("cron trigger %+v lacks start, end or desiredReplicas", tr.Metadata)
		}
	}
	armed := false
	for _, tr := range so.Spec.Triggers {
		if strings.Contains(tr.Metadata["query"], "stagecast_broadcaster_armed_stages_ahead") {
			armed = true
		}
	}
	if !kinds["cron"] || !kinds["prometheus"] || !armed {
		t.Fatalf("triggers %v (armed-stage query %v): want the window (cron) and the armed stages ahead (prometheus)", kinds, armed)
	}
}
