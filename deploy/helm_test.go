package deploy_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

const chartDir = "helm/stagecast"

// kubeVersion is the cluster the chart is rendered for: its Chart.yaml asks
// for >= 1.30 (the preStop sleep action).
const kubeVersion = "v1.32.0"

// rendering is one `helm template` of the chart: the Kubernetes objects,
// decoded strictly, and the ServiceMonitors, decoded into a mirror.
type rendering struct {
	objs     []runtime.Object
	monitors []serviceMonitor
}

// serviceMonitor mirrors the prometheus-operator fields the chart uses;
// unknown fields fail the decode (the operator's Go module is not a dependency).
type serviceMonitor struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace,omitempty"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Selector struct {
			MatchLabels      map[string]string `json:"matchLabels"`
			MatchExpressions []struct {
				Key      string   `json:"key"`
				Operator string   `json:"operator"`
				Values   []string `json:"values"`
			} `json:"matchExpressions"`
		} `json:"selector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// values reads values files (later ones win, as `helm -f a -f b`) and then
// applies overrides.
func values(t *testing.T, files []string, overrides ...map[string]any) map[string]any {
	t.Helper()
	vals := map[string]any{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		v, err := loader.LoadValues(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		vals = loader.MergeMaps(vals, v)
	}
	for _, o := range overrides {
		vals = loader.MergeMaps(vals, o)
	}
	return vals
}

// renderChart renders the chart as `helm template <release> -n stagecast`
// with vals, validating vals against values.schema.json on the way; it
// returns the engine's error instead of failing, so that tests can check
// refusals.
func renderChart(t *testing.T, release string, vals map[string]any) (map[string]string, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	caps := common.DefaultCapabilities.Copy()
	kv, err := common.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	caps.KubeVersion = *kv
	rv, err := chartutil.ToRenderValues(ch, vals, common.ReleaseOptions{Name: release, Namespace: "stagecast", IsInstall: true, Revision: 1}, caps)
	if err != nil {
		return nil, err
	}
	return engine.Render(ch, rv)
}

// mustRender is renderChart that fails the test on an error, and decodes the
// manifests strictly.
func mustRender(t *testing.T, release string, vals map[string]any) rendering {
	t.Helper()
	files, err := renderChart(t, release, vals)
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	dec := strictDecoder(t)
	var r rendering
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if strings.HasSuffix(name, "NOTES.txt") {
			continue
		}
		for _, doc := range releaseutil.SplitManifests(files[name]) {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
			if head.Kind == "" {
				continue // a document of comments only
			}
			if !kubernetesGroup(head.APIVersion) {
				if head.Kind != "ServiceMonitor" {
					t.Fatalf("%s: unexpected %s %s", name, head.APIVersion, head.Kind)
				}
				j, err := yaml.YAMLToJSON([]byte(doc))
				if err != nil {
					t.Fatal(err)
				}
				var sm serviceMonitor
				d := json.NewDecoder(bytes.NewReader(j))
				d.DisallowUnknownFields()
				if err := d.Decode(&sm); err != nil {
					t.Fatalf("%s: ServiceMonitor: %v", name, err)
				}
				r.monitors = append(r.monitors, sm)
				continue
			}
			obj, _, err := dec.Decode([]byte(doc), nil, nil)
			if err != nil {
				t.Fatalf("%s: %s: %v\n%s", name, head.Kind, err, doc)
			}
			r.objs = append(r.objs, obj)
		}
	}
	return r
}

var (
	defaultValues    = []string{chartDir + "/values.yaml"}
	productionValues = []string{chartDir + "/values.yaml", "helm/values-production.yaml"}
)

// TestChart (issue 23, item 2): the chart renders with the Helm library, for
// the default values and the production values file, into objects that
// decode strictly and pass the checks every manifest here passes (probes,
// drain, PDBs, security, settings that are real flags); `helm lint` finds
// nothing to warn about.
func TestChart(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string
	}{{"default", defaultValues}, {"production", productionValues}} {
		t.Run(tc.name, func(t *testing.T) {
			vals := values(t, tc.files)
			r := mustRender(t, "stagecast", vals)
			checkManifests(t, r.objs)
			m := index(r.objs)
			for _, c := range []string{"broadcaster", "proxy", "prefetch", "redis-cluster"} {
				if m.pdbs[c] == nil {
					t.Errorf("no PodDisruptionBudget for %s", c)
				}
			}
			if tc.name == "production" {
				if m.cfg.Data["STAGECAST_REQUIRE_DEVICE_TOKEN"] != "true" || m.cfg.Data["STAGECAST_REDIS_WAIT_REPLICAS"] != "1" {
					t.Errorf("production values: device tokens and WAIT 1 required, have %v", m.cfg.Data)
				}
				checkServiceMonitor(t, r, m)
			} else if len(r.monitors) != 0 {
				t.Error("a ServiceMonitor by default: it needs prometheus-operator's CRD")
			}
			// `helm lint` with the same values: no warnings.
			// lint.RunAll takes the user's values; the chart's own are its defaults.
			user := vals
			if tc.name == "default" {
				user = map[string]any{}
			}
			l := lint.RunAll(chartDir, user, "stagecast", lint.WithKubeVersion(mustKube(t)))
			for _, msg := range l.Messages {
				if msg.Severity >= support.WarningSev {
					t.Errorf("helm lint: %v", msg)
				}
			}
		})
	}
}

func mustKube(t *testing.T) *common.KubeVersion {
	kv, err := common.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// checkServiceMonitor: the ServiceMonitor selects the three tiers' Services
// of this release, on ports they have.
func checkServiceMonitor(t *testing.T, r rendering, m *manifests) {
	t.Helper()
	if len(r.monitors) != 1 {
		t.Fatalf("%d ServiceMonitors, want 1", len(r.monitors))
	}
	sm := r.monitors[0]
	ports := map[string]bool{}
	for _, e := range sm.Spec.Endpoints {
		ports[e.Port] = true
		if e.Path != "/metrics" {
			t.Errorf("ServiceMonitor endpoint %+v does not scrape /metrics", e)
		}
	}
	selected := map[string]bool{}
	for _, o := range m.other {
		svc, ok := o.(*corev1.Service)
		if !ok {
			continue
		}
		match := true
		for k, v := range sm.Spec.Selector.MatchLabels {
			match = match && svc.Labels[k] == v
		}
		for _, e := range sm.Spec.Selector.MatchExpressions {
			in := false
			for _, v := range e.Values {
				in = in || svc.Labels[e.Key] == v
			}
			match = match && e.Operator == "In" && in
		}
		if !match {
			continue
		}
		for _, p := range svc.Spec.Ports {
			if ports[p.Name] {
				selected[svc.Labels["app.kubernetes.io/name"]] = true
			}
		}
	}
	for _, c := range []string{"broadcaster", "proxy", "prefetch"} {
		if !selected[c] {
			t.Errorf("the ServiceMonitor scrapes no %s Service (selector %+v, ports %v)", c, sm.Spec.Selector, ports)
		}
	}
}

// TestChartMatchesKustomize: the chart and the kustomize manifests are one
// deployment written twice, so they are kept in step: the chart's default
// values render the base's workloads, and the production values file the
// production overlay's: the same pods (arguments, settings, probes,
// resources, security, drain, spreading), autoscalers, disruption budgets and
// settings. Names differ (the chart's carry the release's) and are left out.
func TestChartMatchesKustomize(t *testing.T) {
	for _, tc := range []struct {
		dir   string
		files []string
	}{{"k8s/base", defaultValues}, {"k8s/overlays/production", productionValues}} {
		t.Run(tc.dir, func(t *testing.T) {
			chart := index(mustRender(t, "stagecast", values(t, tc.files)).objs)
			kust := index(build(t, tc.dir))
			if tc.dir == "k8s/base" {
				// The base runs :latest; the chart its appVersion.
				for _, d := range kust.deps {
					for i := range d.Spec.Template.Spec.Containers {
						c := &d.Spec.Template.Spec.Containers[i]
						c.Image = strings.TrimSuffix(c.Image, ":latest") + ":" + chartAppVersion(t)
					}
				}
			}
			for _, c := range []string{"broadcaster", "proxy", "prefetch"} {
				if chart.deps[c] == nil || kust.deps[c] == nil {
					t.Fatalf("%s: chart %v, kustomize %v", c, chart.deps[c] != nil, kust.deps[c] != nil)
				}
				same(t, c+" replicas", chart.deps[c].Spec.Replicas, kust.deps[c].Spec.Replicas)
				same(t, c+" pod", comparablePod(chart.deps[c].Spec.Template.Spec), comparablePod(kust.deps[c].Spec.Template.Spec))
				same(t, c+" PDB", chart.pdbs[c].Spec.MaxUnavailable, kust.pdbs[c].Spec.MaxUnavailable)
				same(t, c+" PDB", chart.pdbs[c].Spec.MinAvailable, kust.pdbs[c].Spec.MinAvailable)
				if (chart.hpas[c] == nil) != (kust.hpas[c] == nil) {
					t.Errorf("%s: HPA in the chart %v, in kustomize %v", c, chart.hpas[c] != nil, kust.hpas[c] != nil)
				} else if chart.hpas[c] != nil {
					ch, kh := chart.hpas[c].Spec.DeepCopy(), kust.hpas[c].Spec.DeepCopy()
					ch.ScaleTargetRef.Name, kh.ScaleTargetRef.Name = "", ""
					same(t, c+" HPA", ch, kh)
				}
			}
			rs, ks := chart.statefuls["redis-cluster"], kust.statefuls["redis-cluster"]
			same(t, "redis replicas", rs.Spec.Replicas, ks.Spec.Replicas)
			same(t, "redis.conf", settingsOnly(chart.redisConf), settingsOnly(kust.redisConf))
			cd, kd := map[string]string{}, map[string]string{}
			for k, v := range chart.cfg.Data {
				cd[k] = v
			}
			for k, v := range kust.cfg.Data {
				kd[k] = v
			}
			// The Redis seeds are named after the release; the same nodes.
			if a, b := strings.Count(cd["STAGECAST_REDIS"], ","), strings.Count(kd["STAGECAST_REDIS"], ","); a != b {
				t.Errorf("STAGECAST_REDIS: chart %q, kustomize %q", cd["STAGECAST_REDIS"], kd["STAGECAST_REDIS"])
			}
			delete(cd, "STAGECAST_REDIS")
			delete(kd, "STAGECAST_REDIS")
			same(t, "settings", cd, kd)
		})
	}
}

func chartAppVersion(t *testing.T) string {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	return ch.Metadata.AppVersion
}

// comparablePod is a pod spec without what names it after its release: the
// ConfigMap, Secret and label-selector names, the image tag's registry.
func comparablePod(p corev1.PodSpec) corev1.PodSpec {
	p = *p.DeepCopy()
	for i := range p.Containers {
		c := &p.Containers[i]
		for j := range c.EnvFrom {
			if c.EnvFrom[j].ConfigMapRef != nil {
				c.EnvFrom[j].ConfigMapRef.Name = ""
			}
		}
		c.Name = ""
	}
	for i := range p.Volumes {
		if s := p.Volumes[i].Secret; s != nil {
			s.SecretName = ""
		}
	}
	if p.Affinity != nil && p.Affinity.PodAntiAffinity != nil {
		for i := range p.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			sel := p.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[i].PodAffinityTerm.LabelSelector
			delete(sel.MatchLabels, "app.kubernetes.io/instance")
		}
	}
	for i := range p.TopologySpreadConstraints {
		delete(p.TopologySpreadConstraints[i].LabelSelector.MatchLabels, "app.kubernetes.io/instance")
	}
	return p
}

// settingsOnly is a config file without its comments.
func settingsOnly(conf string) []string {
	var out []string
	for _, l := range strings.Split(conf, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

func same(t *testing.T, what string, chart, kust any) {
	t.Helper()
	if !reflect.DeepEqual(chart, kust) {
		a, _ := yaml.Marshal(chart)
		b, _ := yaml.Marshal(kust)
		t.Errorf("%s differs (lines only in one of the two):\n%s", what, lineDiff(string(a), string(b)))
	}
}

// lineDiff lists the lines of a not in b ("chart:") and of b not in a
// ("kustomize:"), counted as multisets: enough to find the field that differs.
func lineDiff(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(b, "\n") {
		count[l]++
	}
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if count[l] > 0 {
			count[l]--
			continue
		}
		out = append(out, "chart:     "+l)
	}
	for _, l := range strings.Split(b, "\n") {
		if count[l] > 0 {
			count[l]--
			out = append(out, "kustomize: "+l)
		}
	}
	return strings.Join(out, "\n")
}

// TestChartValues: the values a user sets do what values.yaml says, and bad
// ones are refused with a message that names the value.
func TestChartValues(t *testing.T) {
	t.Run("drain window drives the grace period", func(t *testing.T) {
		m := index(mustRender(t, "stagecast", values(t, defaultValues, map[string]any{"proxy": map[string]any{"drainWindowSeconds": 90, "preStopSeconds": 10}})).objs)
		if g := m.deps["proxy"].Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || *g != 125 {
			t.Errorf("grace %v, want 10 + 90 + 25 = 125", fmtSeconds(g))
		}
		if m.cfg.Data["STAGECAST_DRAIN_WINDOW"] != "90s" {
			t.Errorf("STAGECAST_DRAIN_WINDOW %q", m.cfg.Data["STAGECAST_DRAIN_WINDOW"])
		}
	})
	t.Run("PROXY protocol", func(t *testing.T) {
		m := index(mustRender(t, "stagecast", values(t, defaultValues, map[string]any{"proxy": map[string]any{"proxyProtocolFrom": []any{"10.0.0.0/16", "fd00::/8"}}})).objs)
		for _, c := range []string{"proxy", "prefetch"} {
			got := ""
			for _, e := range m.deps[c].Spec.Template.Spec.Containers[0].Env {
				if e.Name == "STAGECAST_PROXY_PROTOCOL_FROM" {
					got = e.Value
				}
			}
			if got != "10.0.0.0/16,fd00::/8" {
				t.Errorf("%s: STAGECAST_PROXY_PROTOCOL_FROM %q", c, got)
			}
		}
		for _, e := range m.deps["broadcaster"].Spec.Template.Spec.Containers[0].Env {
			if e.Name == "STAGECAST_PROXY_PROTOCOL_FROM" {
				t.Error("the broadcaster is given the PROXY protocol: producers do not come through the devices' balancer")
			}
		}
	})
	t.Run("external Redis", func(t *testing.T) {
		m := index(mustRender(t, "edge", values(t, defaultValues, map[string]any{"redis": map[string]any{"bundled": false, "addrs": "redis.example:6379"}})).objs)
		if len(m.statefuls) != 0 || len(m.netpols) != 0 {
			t.Errorf("an external Redis still renders %d StatefulSets and %d NetworkPolicies", len(m.statefuls), len(m.netpols))
		}
		if m.cfg.Data["STAGECAST_REDIS"] != "redis.example:6379" {
			t.Errorf("STAGECAST_REDIS %q", m.cfg.Data["STAGECAST_REDIS"])
		}
		if m.deps["proxy"].Name != "edge-stagecast-proxy" {
			t.Errorf("names carry the release: %q", m.deps["proxy"].Name)
		}
	})
	t.Run("bundled Redis names its nodes", func(t *testing.T) {
		m := index(mustRender(t, "stagecast", values(t, defaultValues, map[string]any{"redis": map[string]any{"nodes": 9, "replicasPerMaster": 2}})).objs)
		if n := strings.Count(m.cfg.Data["STAGECAST_REDIS"], ":6379"); n != 3 {
			t.Errorf("seeds %q: want the 3 masters' nodes", m.cfg.Data["STAGECAST_REDIS"])
		}
		if r := m.statefuls["redis-cluster"].Spec.Replicas; r == nil || *r != 9 {
			t.Errorf("redis replicas %v", r)
		}
	})
	t.Run("inline secrets", func(t *testing.T) {
		m := index(mustRender(t, "trial", values(t, defaultValues, map[string]any{"secrets": map[string]any{
			"redisPassword": map[string]any{"existingSecret": "", "value": "s3cret"},
		}})).objs)
		if len(m.secrets) != 1 || m.secrets[0].Name != "trial-stagecast-redis" || m.secrets[0].StringData["password"] != "s3cret" {
			t.Fatalf("secrets %+v", m.secrets)
		}
		for _, p := range m.pods {
			for _, v := range p.Volumes {
				if v.Name == "redis-auth" && v.Secret.SecretName != "trial-stagecast-redis" {
					t.Errorf("%s reads the Redis password from %q", p.Containers[0].Name, v.Secret.SecretName)
				}
			}
			for _, c := range p.Containers {
				for _, e := range c.Env {
					if e.Name == "REDISCLI_AUTH" && e.ValueFrom.SecretKeyRef.Name != "trial-stagecast-redis" {
						t.Errorf("%s reads REDISCLI_AUTH from %q", c.Name, e.ValueFrom.SecretKeyRef.Name)
					}
				}
			}
		}
	})
	t.Run("no replicas under an HPA, replicas without one", func(t *testing.T) {
		m := index(mustRender(t, "stagecast", values(t, defaultValues, map[string]any{"proxy": map[string]any{"autoscaling": map[string]any{"enabled": false}, "replicas": 7}})).objs)
		if r := m.deps["proxy"].Spec.Replicas; r == nil || *r != 7 || m.hpas["proxy"] != nil {
			t.Errorf("proxy replicas %v, HPA %v", r, m.hpas["proxy"] != nil)
		}
	})
	for _, tc := range []struct {
		name string
		vals map[string]any
		want string
	}{
		{"unknown key", map[string]any{"proxy": map[string]any{"replica": 3}}, "replica"},
		{"wrong type", map[string]any{"proxy": map[string]any{"drainWindowSeconds": "30s"}}, "drainWindowSeconds"},
		{"bad CIDR", map[string]any{"proxy": map[string]any{"proxyProtocolFrom": []any{"everyone"}}}, "proxyProtocolFrom"},
		{"no secret", map[string]any{"secrets": map[string]any{"deviceKeys": map[string]any{"existingSecret": ""}}}, "secrets.deviceKeys"},
		{"two secrets", map[string]any{"secrets": map[string]any{"producerTokens": map[string]any{"value": "{}"}}}, "secrets.producerTokens: set existingSecret or value, not both"},
		{"external Redis without addrs", map[string]any{"redis": map[string]any{"bundled": false}}, "redis.addrs"},
		{"too few Redis nodes", map[string]any{"redis": map[string]any{"nodes": 4}}, "redis.nodes"},
		{"not a setting", map[string]any{"config": map[string]any{"extra": map[string]any{"LOG": "x"}}}, "'LOG' does not match pattern"},
	} {
		t.Run("refuses "+tc.name, func(t *testing.T) {
			_, err := renderChart(t, "stagecast", values(t, defaultValues, tc.vals))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one naming %q", err, tc.want)
			}
		})
	}
}

// TestChartFilesListed: every template the chart has is rendered by some
// test above (a template added without a test would otherwise go unchecked).
func TestChartFilesListed(t *testing.T) {
	tpls, err := filepath.Glob(filepath.Join(chartDir, "templates", "*.yaml"))
	if err != nil || len(tpls) == 0 {
		t.Fatalf("templates: %v %v", tpls, err)
	}
	files, err := renderChart(t, "stagecast", values(t, productionValues))
	if err != nil {
		t.Fatal(err)
	}
	for _, tpl := range tpls {
		out := files["stagecast/templates/"+filepath.Base(tpl)]
		if strings.TrimSpace(out) == "" && filepath.Base(tpl) != "secrets.yaml" {
			t.Errorf("%s renders nothing with the production values", tpl)
		}
	}
}
