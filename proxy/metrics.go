package proxy

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stagecast/stagecast/internal/wire"
)

type metrics struct {
	connections         *prometheus.GaugeVec
	subscriptions       prometheus.Gauge
	topics              prometheus.Gauge
	broadcasts          prometheus.Counter
	deliveries          prometheus.Counter
	skipped             prometheus.Counter
	acks                prometheus.Counter
	sendLatency         prometheus.Histogram
	slowConsumerCloses  prometheus.Counter
	pingTimeouts        prometheus.Counter
	writeErrors         prometheus.Counter
	rejected            *prometheus.CounterVec
	badFrames           *prometheus.CounterVec
	engineErrors        prometheus.Counter
	engineReachable     prometheus.Gauge
	engineLost          prometheus.Counter
	inboxOverflow       prometheus.Counter
	catchupRereads      prometheus.Counter
	writersSpawned      prometheus.Counter
	draining            prometheus.Gauge
	tokenExpired        prometheus.Counter
	skippedEntries      prometheus.Counter
	versionConflicts    prometheus.Counter
	eventLimit          prometheus.Counter
	notePushes          prometheus.Counter
	notesSent           [wire.NumPriorities]prometheus.Counter
	notesShed           prometheus.Counter
	noteDuplicates      prometheus.Counter
	noteResyncs         prometheus.Counter
	noteGaps            prometheus.Counter
	drainTargetsRefused prometheus.Counter
	resyncs             prometheus.Counter
	registrations       prometheus.Counter
	backlogNotes        prometheus.Counter
	resumes             *prometheus.CounterVec
	armed               *prometheus.CounterVec
	pacedBroadcasts     prometheus.Counter
	pacedOffers         prometheus.Counter
	clockSkew           prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "stagecast", "proxy"
	m := &metrics{
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "connections",
			Help: "Connected devices, by platform (tv, mobile, web, console, unknown; any other counts as other)."}, []string{"platform"}),
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "subscriptions",
			Help: "Device subscriptions (device x event)."}),
		topics: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "events",
			Help: "Events with an engine subscription on this proxy."}),
		broadcasts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "broadcasts_total",
			Help: "Stage changes received from the engine and fanned out."}),
		deliveries: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "deliveries_total",
			Help: "Stage frames written to devices."}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "superseded_total",
			Help: "Pending stage frames replaced by a newer version before a slow device took them."}),
		acks: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "acks_total",
			Help: "Acks received from devices."}),
		sendLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "send_latency_seconds",
			Help:    "Time from the stage change (ts) to the write to the device.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}),
		slowConsumerCloses: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "slow_consumer_closes_total",
			Help: "Devices closed because a write exceeded the write timeout."}),
		pingTimeouts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "ping_timeouts_total",
			Help: "Devices closed because they did not answer a ping."}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "write_errors_total",
			Help: "Writes that failed for another reason than a timeout or a closed connection."}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "rejected_connections_total",
			Help: "Upgrades refused, by reason (rate, ip_rate, capacity, ip_capacity, draining, unauthorized, bad_request, handshake)."}, []string{"reason"}),
		badFrames: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "bad_frames_total",
			Help: "Device frames rejected, by code."}, []string{"code"}),
		engineErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "engine_errors_total",
			Help: "Failed engine calls (history re-reads, delivery reports)."}),
		inboxOverflow: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "inbox_overflow_total",
			Help: "Engine messages dropped because an event's inbox was full (a history re-read follows)."}),
		catchupRereads: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "history_rereads_total",
			Help: "Engine history re-reads that found stages this proxy had not seen (missed messages repaired)."}),
		writersSpawned: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "extra_writers_total",
			Help: "Extra writer goroutines started because writers were stuck on slow devices."}),
		draining: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "draining",
			Help: "1 while the proxy drains."}),
		skippedEntries: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "skipped_log_entries_total",
			Help: "Event log entries skipped because they did not decode (the rest of the history is used)."}),
		versionConflicts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "version_conflicts_total",
			Help: "Stages received with a version the proxy held for another stage (the event log's word wins)."}),
		tokenExpired: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "token_expired_total",
			Help: "Devices closed (4003) because their token's exp passed."}),
		eventLimit: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "event_limit_total",
			Help: "Subscriptions refused because the proxy held MaxEvents events."}),
	}
	m.notePushes = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "note_pushes_total",
		Help: "Notes pushed to this proxy by the engine (one per inbox held here)."})
	sent := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "notes_sent_total",
		Help: "Note frames written to devices, by priority."}, []string{"priority"})
	for p := range wire.NumPriorities {
		m.notesSent[p] = sent.WithLabelValues(wire.Priority(p).String())
	}
	m.notesShed = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "notes_shed_total",
		Help: "Low-priority note pushes shed under overload (they stay in the inbox; the device's resume cursor stays before them)."})
	m.noteDuplicates = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "note_duplicates_total",
		Help: "Pushed notes a connection already had (dropped)."})
	m.noteResyncs = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "note_resyncs_total",
		Help: "Push subscriptions re-established: the shard's registrations were written again and its inboxes re-read."})
	m.noteGaps = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "note_gaps_total",
		Help: "Pushes whose previous inbox entry the device had not seen (a lost registration or push): the backlog was read first."})
	m.drainTargetsRefused = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "drain_targets_refused_total",
		Help: "Published proxies a directed drain did not send devices to: outside --drain-targets, or ws from a wss proxy."})
	m.resyncs = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "inbox_resyncs_total",
		Help: "Connection inboxes re-read without a device request (after a gap or a resubscribe), each under the backlog-read bound."})
	m.registrations = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "inbox_registrations_total",
		Help: "Inboxes registered with the engine (first connection of an inbox on this proxy)."})
	m.backlogNotes = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "backlog_notes_total",
		Help: "Notes read from inboxes for resumes and resyncs."})
	m.resumes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "inbox_resumes_total",
		Help: "Inbox ops by result (ok, rate_limited, busy, no_inbox)."}, []string{"result"})
	m.armed = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "armed_stages_total",
		Help: "Armed stages by outcome here: armed, fired (locally, at their time), cancelled, not_armed_skew (clock off the engine's: the central fire delivers)."}, []string{"outcome"})
	m.clockSkew = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "clock_skew_seconds",
		Help: "This proxy's clock minus the engine's (Redis TIME), after half the round trip."})
	m.pacedBroadcasts = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "paced_broadcasts_total",
		Help: "Stage changes released in waves (paced)."})
	m.pacedOffers = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "paced_offers_total",
		Help: "Devices a paced change was released to."})
	m.engineReachable = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "engine_reachable",
		Help: "1 while the proxy's writes to the engine (Redis) succeed; 0 once every write failed for --engine-lost-after: /readyz fails, devices stay connected."})
	m.engineReachable.Set(1)
	m.engineLost = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "engine_lost_total",
		Help: "Times the proxy lost the engine (every write failing for --engine-lost-after)."})
	reg.MustRegister(m.armed, m.clockSkew, m.pacedBroadcasts, m.pacedOffers, m.engineReachable, m.engineLost)
	reg.MustRegister(m.notePushes, sent, m.notesShed, m.noteDuplicates, m.noteResyncs, m.noteGaps, m.resyncs, m.drainTargetsRefused, m.registrations, m.backlogNotes, m.resumes)
	reg.MustRegister(m.connections, m.subscriptions, m.topics, m.broadcasts, m.deliveries, m.skipped, m.acks,
		m.sendLatency, m.slowConsumerCloses, m.pingTimeouts, m.writeErrors, m.rejected, m.badFrames,
		m.engineErrors, m.inboxOverflow, m.catchupRereads, m.writersSpawned, m.draining, m.tokenExpired, m.eventLimit, m.skippedEntries, m.versionConflicts)
	return m
}
