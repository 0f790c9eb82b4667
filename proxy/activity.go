package proxy

import (
	"strconv"
	"sync"
	"time"

	"github.com/stagecast/stagecast/internal/wire"
)

// Activity is what a proxy's connections did between two delivery reports
// (Config.OnActivity, the analytics stream): connects, disconnects by close
// code and admissions refused by reason. The keys are fixed sets (the proxy's
// own close codes and refusal reasons), so they cannot grow with the devices.
type Activity struct {
	FromMS, ToMS int64
	// Connections is how many devices are connected at ToMS.
	Connections int
	Connects    uint64
	// Disconnects by the close code the proxy sent ("1012", "4003"), or
	// "closed" when the device or the network ended the connection.
	Disconnects map[string]uint64
	// Refused admissions by reason, as the rejected_connections_total metric.
	Refused map[string]uint64
	// Notes: notifications pushed to devices and acked, by type and priority
	// (the first 254 types the proxy sees by name, any later one as type
	// "(other)").
	Notes map[NoteClass]NoteTally
}

// activity gathers an Activity. Its methods are called once per connect,
// disconnect and refusal (never per delivery), under its own mutex.
type activity struct {
	mu  sync.Mutex
	cur Activity
}

func newActivity(now time.Time) *activity {
	return &activity{cur: Activity{FromMS: now.UnixMilli()}}
}

func (a *activity) connect() {
	a.mu.Lock()
	a.cur.Connects++
	a.mu.Unlock()
}

// disconnect counts one close: code 0 is the device's or the network's.
func (a *activity) disconnect(code wire.CloseCode) {
	key := "closed"
	if code != 0 {
		key = strconv.Itoa(int(code))
	}
	a.mu.Lock()
	if a.cur.Disconnects == nil {
		a.cur.Disconnects = map[string]uint64{}
	}
	a.cur.Disconnects[key]++
	a.mu.Unlock()
}

func (a *activity) refused(reason string) {
	a.mu.Lock()
	if a.cur.Refused == nil {
		a.cur.Refused = map[string]uint64{}
	}
	a.cur.Refused[reason]++
	a.mu.Unlock()
}

// take returns the counts since the last take and starts the next interval.
func (a *activity) take(now time.Time, connections int) Activity {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := a.cur
	out.ToMS, out.Connections = now.UnixMilli(), connections
	a.cur = Activity{FromMS: out.ToMS}
	return out
}
