package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Ops of device -> proxy frames.
const (
	OpSub   = "sub"
	OpUnsub = "unsub"
	OpAck   = "ack"
)

// Ops of proxy -> device frames.
const (
	OpStage     = "stage"
	OpReconnect = "reconnect"
	OpError     = "error"
)

// Code is a typed error code carried by {"op":"error"} frames. The proxy survives
// every one of them: the connection stays open.
type Code string

// Error codes of the contract, and stagecast's extensions (marked).
const (
	CodeBadRequest   Code = "bad_request"
	CodeUnknownEvent Code = "unknown_event"
	CodeUnauthorized Code = "unauthorized"
	CodeRateLimited  Code = "rate_limited"
	// CodeTooManySubscriptions (extension): a sub would exceed the per-connection limit.
	CodeTooManySubscriptions Code = "too_many_subscriptions"
	// CodeEventLimit (extension): the proxy holds as many events as it may; the
	// device should retry the sub later (or on another proxy).
	CodeEventLimit Code = "event_limit"
	// CodeUnavailable (extension): the proxy could not check the event now (the
	// engine is unreachable); retry the sub later.
	CodeUnavailable Code = "unavailable"
)

// CloseCode is a WebSocket close status the proxy sends (docs/protocol.md,
// "Close statuses"). 1000-1015 are RFC 6455; 4000-4999 are stagecast's own.
// Statuses below 4500 mean "reconnect with backoff"; 4500 and above mean "do
// not reconnect without a change" (bad credentials). Convert with
// websocket.StatusCode(code) where a library needs its own type.
type CloseCode int

// The close statuses of the protocol.
const (
	CloseNormal          CloseCode = 1000 // device or proxy shutting down cleanly
	CloseUnsupportedData CloseCode = 1003 // a binary frame: text frames only
	CloseInvalidFrame    CloseCode = 1007 // frame is not valid JSON / not UTF-8
	ClosePolicy          CloseCode = 1008 // protocol violation the proxy does not survive
	CloseTooBig          CloseCode = 1009 // frame larger than the read limit
	CloseServiceRestart  CloseCode = 1012 // proxy draining: reconnect after the hinted delay
	CloseTryAgainLater   CloseCode = 1013 // proxy overloaded: reconnect after the reason's delay
	CloseSlowConsumer    CloseCode = 4000 // device did not read fast enough; reconnect and catch up
	ClosePingTimeout     CloseCode = 4001 // device did not answer pings
	CloseTokenExpired    CloseCode = 4003 // the device token's exp passed: get a new token, reconnect
	CloseUnauthorized    CloseCode = 4500 // token refused (a browser's upgrade, which cannot read a 401): do not reconnect with the same token
)

// Reconnect reports whether a device closed with c should reconnect (with
// backoff) as it is; false means not without a change (a new token).
func (c CloseCode) Reconnect() bool { return c < 4500 }

// MaxDeviceFrame is the default read limit for device frames, in bytes.
const MaxDeviceFrame = 4096

// DeviceFrame is a decoded device -> proxy frame. Exactly one of the op-specific
// fields is meaningful, as Op says.
type DeviceFrame struct {
	Op string
	// Sub: event -> last version the device holds (0 = none).
	Sub map[string]uint64
	// Unsub: events to leave.
	Unsub []string
	// Ack: event and version applied.
	Event string
	V     uint64
	// Note ack (an ack with "note"): the note read. NoteAck tells the two acks apart.
	Note    Cursor
	NoteAck bool
	// Inbox: where to resume the device's inboxes.
	After After
}

// FrameError is a device frame the proxy rejects with an error frame. It wraps the
// cause and carries the code to send.
type FrameError struct {
	Code Code
	Msg  string
}

func (e *FrameError) Error() string { return string(e.Code) + ": " + e.Msg }

func badRequest(format string, args ...any) error {
	return &FrameError{Code: CodeBadRequest, Msg: fmt.Sprintf(format, args...)}
}

// ErrNotJSON marks a frame that is not a JSON object: the proxy closes with 1007.
var ErrNotJSON = errors.New("frame is not a JSON object")

type rawFrame struct {
	Op     string          `json:"op"`
	Events json.RawMessage `json:"events"`
	Event  string          `json:"event"`
	V      json.RawMessage `json:"v"`
	Note   *string         `json:"note"`
	After  *string         `json:"after"`
}

// ParseDeviceFrame decodes one device frame. It returns an error wrapping
// ErrNotJSON when the bytes are not a JSON object (close 1007), or a *FrameError
// for a well-formed frame the proxy answers with an error frame.
func ParseDeviceFrame(b []byte) (DeviceFrame, error) {
	b = bytes.TrimSpace(b)
	// Invalid UTF-8 is not JSON text (RFC 8259 section 8.1), though encoding/json
	// would accept it inside strings.
	if len(b) == 0 || b[0] != '{' || !utf8.Valid(b) || !json.Valid(b) {
		return DeviceFrame{}, ErrNotJSON
	}
	var raw rawFrame
	if err := json.Unmarshal(b, &raw); err != nil {
		// Valid JSON of the wrong shape ("op": 3, ...).
		return DeviceFrame{}, badRequest("malformed frame: %v", err)
	}
	f := DeviceFrame{Op: raw.Op}
	switch raw.Op {
	case OpSub:
		var events map[string]json.RawMessage
		if err := json.Unmarshal(raw.Events, &events); err != nil || len(raw.Events) == 0 || events == nil {
			return f, badRequest(`sub needs "events": {"<event>": <last version>}`)
		}
		if len(events) == 0 {
			return f, badRequest("sub names no event")
		}
		f.Sub = make(map[string]uint64, len(events))
		for ev, num := range events {
			if err := CheckID("event", ev); err != nil {
				return f, &FrameError{Code: CodeBadRequest, Msg: err.Error()}
			}
			v, err := parseVersion(num)
			if err != nil {
				return f, badRequest("event %s: %v", ev, err)
			}
			f.Sub[ev] = v
		}
	case OpUnsub:
		var events []string
		if err := json.Unmarshal(raw.Events, &events); err != nil || len(raw.Events) == 0 || events == nil {
			return f, badRequest(`unsub needs "events": ["<event>", ...]`)
		}
		for _, ev := range events {
			if err := CheckID("event", ev); err != nil {
				return f, &FrameError{Code: CodeBadRequest, Msg: err.Error()}
			}
		}
		f.Unsub = events
	case OpAck:
		if raw.Note != nil {
			c, err := ParseCursor(*raw.Note)
			if err != nil {
				return f, badRequest("ack: %v", err)
			}
			f.Note, f.NoteAck = c, true
			break
		}
		if err := CheckID("event", raw.Event); err != nil {
			return f, &FrameError{Code: CodeBadRequest, Msg: err.Error()}
		}
		if raw.V == nil {
			return f, badRequest(`ack needs "v"`)
		}
		v, err := parseVersion(raw.V)
		if err != nil || v == 0 {
			return f, badRequest("ack version must be an integer > 0")
		}
		f.Event, f.V = raw.Event, v
	case OpInbox:
		if raw.After == nil {
			return f, badRequest(`inbox needs "after": "<last note id>" ("" = from the oldest kept)`)
		}
		a, err := ParseAfter(*raw.After)
		if err != nil {
			return f, badRequest("inbox: %v", err)
		}
		f.After = a
	case "":
		return f, badRequest(`frame has no "op"`)
	default:
		return f, badRequest("unknown op %q", truncate(raw.Op, 32))
	}
	return f, nil
}

// parseVersion accepts a bare JSON integer >= 0 (no quotes, sign, fraction or exponent).
func parseVersion(n json.RawMessage) (uint64, error) {
	v, err := strconv.ParseUint(string(n), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("version %q is not an integer >= 0", truncate(string(n), 24))
	}
	return v, nil
}

// AppendStage appends the {"op":"stage"} frame for s to dst. Ids follow the id
// grammar, so no escaping is needed; s must have been validated.
func AppendStage(dst []byte, s *Stage) []byte {
	dst = append(dst, `{"op":"stage","event":"`...)
	dst = append(dst, s.Event...)
	dst = append(dst, `","key":"`...)
	dst = append(dst, s.Key...)
	dst = append(dst, `","v":`...)
	dst = strconv.AppendUint(dst, s.V, 10)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, s.TS, 10)
	if s.Priority != "" {
		dst = append(dst, `,"priority":"`...)
		dst = append(dst, s.Priority...)
		dst = append(dst, '"')
	}
	if s.Digest != "" {
		dst = append(dst, `,"d":"`...)
		dst = append(dst, s.Digest...)
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

// AppendReconnectTo appends {"op":"reconnect","after_ms":N,"to":"<url>"}: a
// directed drain's frame (extension); to is the proxy to reconnect to.
func AppendReconnectTo(dst []byte, afterMS int64, to string) []byte {
	dst = append(dst, `{"op":"reconnect","after_ms":`...)
	dst = strconv.AppendInt(dst, afterMS, 10)
	dst = append(dst, `,"to":`...)
	dst = strconv.AppendQuote(dst, to)
	return append(dst, '}')
}

// AppendReconnect appends {"op":"reconnect","after_ms":N}.
func AppendReconnect(dst []byte, afterMS int64) []byte {
	dst = append(dst, `{"op":"reconnect","after_ms":`...)
	dst = strconv.AppendInt(dst, afterMS, 10)
	return append(dst, '}')
}

// AppendError appends {"op":"error","code":...,"msg":...}.
func AppendError(dst []byte, code Code, msg string) []byte {
	m, _ := json.Marshal(msg) // a string always marshals
	dst = append(dst, `{"op":"error","code":"`...)
	dst = append(dst, code...)
	dst = append(dst, `","msg":`...)
	dst = append(dst, m...)
	return append(dst, '}')
}

// AppendEventError appends {"op":"error","code":...,"event":...,"msg":...}: an
// error about one event of a sub (unknown_event, unauthorized, ...). event must
// be a valid id.
func AppendEventError(dst []byte, code Code, event, msg string) []byte {
	m, _ := json.Marshal(msg)
	dst = append(dst, `{"op":"error","code":"`...)
	dst = append(dst, code...)
	dst = append(dst, `","event":"`...)
	dst = append(dst, event...)
	dst = append(dst, `","msg":`...)
	dst = append(dst, m...)
	return append(dst, '}')
}

// ProxyFrame is a decoded proxy -> device frame, as the device client sees it.
type ProxyFrame struct {
	Op      string `json:"op"`
	Event   string `json:"event,omitempty"`
	Key     string `json:"key,omitempty"`
	V       uint64 `json:"v,omitempty"`
	TS      int64  `json:"ts,omitempty"`
	AfterMS int64  `json:"after_ms,omitempty"`
	To      string `json:"to,omitempty"` // reconnect: the proxy to go to (directed drain, extension)
	Code    Code   `json:"code,omitempty"`
	Msg     string `json:"msg,omitempty"`
	// D is the payload digest on stage frames (extension).
	D string `json:"d,omitempty"`
	// Note frames (and Priority on stage frames of critical changes).
	ID       string          `json:"id,omitempty"`
	NID      string          `json:"nid,omitempty"`
	Type     string          `json:"type,omitempty"`
	Priority string          `json:"priority,omitempty"`
	Payload  json.RawMessage `json:"payload,omitempty"`
	Resume   string          `json:"resume,omitempty"`
}

// ParseProxyFrame decodes a proxy -> device frame (used by device clients).
func ParseProxyFrame(b []byte) (ProxyFrame, error) {
	var f ProxyFrame
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("decode proxy frame: %w", err)
	}
	switch f.Op {
	case OpStage:
		if !ValidID(f.Event) || !ValidID(f.Key) || f.V == 0 {
			return f, fmt.Errorf("decode proxy frame: invalid stage frame %q", truncate(string(b), 200))
		}
	case OpNote:
		if _, err := ParseCursor(f.ID); err != nil {
			return f, fmt.Errorf("decode proxy frame: note: %w", err)
		}
	case OpReconnect, OpError:
	default:
		return f, fmt.Errorf("decode proxy frame: unknown op %q", truncate(f.Op, 32))
	}
	return f, nil
}

// AppendSub appends a sub frame (device side).
func AppendSub(dst []byte, events map[string]uint64) []byte {
	dst = append(dst, `{"op":"sub","events":{`...)
	first := true
	for ev, v := range events {
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, '"')
		dst = append(dst, ev...)
		dst = append(dst, `":`...)
		dst = strconv.AppendUint(dst, v, 10)
	}
	return append(dst, "}}"...)
}

// AppendAck appends an ack frame (device side).
func AppendAck(dst []byte, event string, v uint64) []byte {
	dst = append(dst, `{"op":"ack","event":"`...)
	dst = append(dst, event...)
	dst = append(dst, `","v":`...)
	dst = strconv.AppendUint(dst, v, 10)
	return append(dst, '}')
}
