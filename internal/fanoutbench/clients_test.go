package fanoutbench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// The coder/websocket client must not allocate per message: at 10,000
// connections x 20 broadcasts, a fresh slice per message made the client
// process collect in the middle of a broadcast, and the bench blamed the
// proxy for it. ws.Read (io.ReadAll) costs at least 512 bytes a message.
func TestCoderClientReadsWithoutGarbagePerMessage(t *testing.T) {
	const n = 4000
	frames := make([][]byte, n)
	for i := range frames {
		frames[i] = []byte(`{"op":"stage","event":"e","key":"round-3","v":` + strconv.Itoa(i+1) + `,"ts":1767225600000}`)
	}
	start := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		<-start
		for _, f := range frames {
			if err := c.Write(context.Background(), websocket.MessageText, f); err != nil {
				return
			}
		}
		c.Close(websocket.StatusNormalClosure, "")
	}))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+srv.URL[len("http"):], nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()

	got := make([]uint64, 0, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	close(start)
	err = readVersions(ws, func(v uint64) { got = append(got, v) })
	runtime.ReadMemStats(&after)
	if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Fatalf("read ended with %v, want the server's normal closure", err)
	}
	if len(got) != n {
		t.Fatalf("read %d messages, want %d", len(got), n)
	}
	for i, v := range got {
		if v != uint64(i+1) {
			t.Fatalf("message %d has version %d, want %d", i, v, i+1)
		}
	}
	// Both ends run in this process, so the bound includes the server's
	// writes. Measured: 1 byte a message; ws.Read 513 (its ReadAll slice);
	// this reader under a cancellable context 457 (a context.AfterFunc per
	// frame read).
	per := (after.TotalAlloc - before.TotalAlloc) / n
	t.Logf("%d bytes allocated per message (client and server together)", per)
	if per > 64 {
		t.Fatalf("%d bytes allocated per message (client and server together), want <= 64", per)
	}
}
