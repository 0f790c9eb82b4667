package deploy_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/internal/waitfor"
	"github.com/stagecast/stagecast/internal/wire"
)

// podman runs podman as these machines allow (../shared/libraries.md): runc,
// cgroupfs, the containers.conf without default ulimits.
func podman(t *testing.T, args ...string) (string, error) {
	t.Helper()
	conf, _ := filepath.Abs("image/containers.conf")
	cmd := exec.Command("podman", append([]string{"--runtime", "runc", "--cgroup-manager", "cgroupfs"}, args...)...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+conf)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestImageServesADevice (issue 23, item 1): the image `make image` builds
// (the same steps: a static binary without the plotting code, a scratch
// image, user 65532) runs the broadcaster and a proxy against a real
// redis-server, read-only and as that user, and a device on the proxy gets a
// stage change made through the broadcaster. The image stays under 40 MB.
func TestImageServesADevice(t *testing.T) {
	if _, err := exec.LookPath("podman"); err != nil {
		t.Skip("podman is not installed: `make test` installs it (and runc) with apt-get; no container can run here without it")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc is not installed: `make test` installs it with apt-get")
	}
	dir := t.TempDir()
	build := exec.Command("go", "build", "-tags", "nocharts", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, "stagecast"), "../cmd/stagecast")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, f := range []string{"/etc/ssl/certs/ca-certificates.crt", "image/passwd", "image/group", "image/Containerfile"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tag := fmt.Sprintf("stagecast:imagetest-%d", os.Getpid())
	if out, err := podman(t, "build", "-q", "-t", tag, "-f", filepath.Join(dir, "Containerfile"), dir); err != nil {
		t.Fatalf("podman build: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = podman(t, "rmi", "-f", tag) })
	info, err := podman(t, "image", "inspect", "--format", "{{.Size}} {{.Config.User}}", tag)
	if err != nil {
		t.Fatal(err)
	}
	var size int64
	var user string
	if _, err := fmt.Sscan(info, &size, &user); err != nil {
		t.Fatalf("inspect %q: %v", info, err)
	}
	t.Logf("image %s: %.1f MB, user %s", tag, float64(size)/1e6, user)
	if size > 40e6 || user != "65532:65532" {
		t.Fatalf("image %d bytes (at most 40 MB), user %q (want 65532:65532)", size, user)
	}

	redis := redistest.Start(t, redistest.Options{})
	const token = "image-test-producer-token-0123456789"
	bAddr, pAddr := freeAddr(t), freeAddr(t)
	run := func(name string, args ...string) {
		t.Helper()
		cname := fmt.Sprintf("sc-imagetest-%s-%d", name, os.Getpid())
		out, err := podman(t, append([]string{"run", "-d", "--rm", "--name", cname, "--network", "host", "--read-only", "--user", "65532:65532",
			"-e", "STAGECAST_PRODUCER_TOKEN=" + token, "-e", "STAGECAST_REDIS=" + redis.Addr(), tag}, args...)...)
		if err != nil {
			t.Fatalf("podman run %s: %v\n%s", name, err, out)
		}
		t.Cleanup(func() {
			if t.Failed() {
				logs, _ := podman(t, "logs", cname)
				t.Logf("%s logs:\n%s", name, logs)
			}
			_, _ = podman(t, "rm", "-f", "-t", "2", cname)
		})
	}
	run("broadcaster", "broadcaster", "--addr", bAddr)
	run("proxy", "proxy", "--addr", pAddr)
	for _, a := range []string{bAddr, pAddr} {
		waitfor.True(t, 30*time.Second, "the container on "+a+" ready", func() bool {
			resp, err := http.Get("http://" + a + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bc := &producer.Client{BaseURL: "http://" + bAddr, Token: token}
	if _, err := bc.SetStage(ctx, "img", "pre-show", nil, ""); err != nil {
		t.Fatal(err)
	}
	var got atomic.Value
	d, err := device.New(device.Config{URLs: []string{"ws://" + pAddr + "/v1/ws"}, Device: "img-1", Events: map[string]uint64{"img": 0},
		OnStage: func(f wire.ProxyFrame, _ time.Time) { got.Store(f.Key) }})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = d.Run(ctx) }()
	waitfor.True(t, 15*time.Second, "the device on pre-show", func() bool { k, _ := got.Load().(string); return k == "pre-show" })
	if _, err := bc.SetStage(ctx, "img", "round-3", nil, ""); err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, 15*time.Second, "the device on round-3, through the image's broadcaster, Redis and proxy", func() bool {
		k, _ := got.Load().(string)
		return k == "round-3"
	})
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}
