package broadcaster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// Stage maps and live windows.

// MapReply is producer.MapReply: the API's types are the public client's.
type MapReply = producer.MapReply

func (s *Server) putStageMap(r *http.Request) (any, error) {
	event := r.PathValue("event")
	raw, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, s.cfg.MaxMapBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errf(http.StatusRequestEntityTooLarge, "too_large", "stage map larger than %d bytes", s.cfg.MaxMapBytes)
		}
		return nil, errf(http.StatusBadRequest, "bad_request", "reading body: %v", err)
	}
	m, err := wire.ParseStageMap(raw)
	if err != nil {
		return nil, errf(http.StatusBadRequest, "bad_request", "%v", err)
	}
	now := s.cfg.Now().UnixMilli()
	v, err := call(s, s.breakers.maps, r, func(ctx context.Context) (uint64, error) { return s.eng.PutStageMap(ctx, event, raw, now) })
	if err != nil {
		return nil, err
	}
	s.audit(r, "put_stage_map", "version", v, "stages", len(m.Stages), "bytes", len(raw), "result", "stored")
	s.trail(r, engine.AuditEntry{Action: "put_stage_map", V: v, Result: "stored", Detail: fmt.Sprintf("%d stages, %d bytes", len(m.Stages), len(raw))})
	return MapReply{Event: event, Version: v, Stages: len(m.Stages), Bytes: len(raw), UpdatedMS: now}, nil
}

// StoredMap is producer.StoredMap: the API's types are the public client's.
type StoredMap = producer.StoredMap

func (s *Server) getStageMap(r *http.Request) (any, error) {
	event := r.PathValue("event")
	snap, err := call(s, s.breakers.reads, r, func(ctx context.Context) (engine.Snapshot, error) { return s.eng.Snapshot(ctx, event) })
	if err != nil {
		return nil, err
	}
	if snap.Map == nil {
		return nil, errf(http.StatusNotFound, "not_found", "event %s has no stage map", event)
	}
	return StoredMap{Event: event, Version: snap.Map.Version, UpdatedMS: snap.Map.UpdatedMS, Map: snap.Map.Raw}, nil
}

// WindowRequest is producer.WindowRequest: the API's types are the public client's.
type WindowRequest = producer.WindowRequest

func (s *Server) setWindow(r *http.Request) (any, error) {
	event := r.PathValue("event")
	var req WindowRequest
	if err := decodeJSON(r, 1024, &req); err != nil {
		return nil, err
	}
	if req.Live == nil {
		return nil, errf(http.StatusBadRequest, "bad_request", `body needs "live": true or false`)
	}
	if _, err := call(s, s.breakers.maps, r, func(ctx context.Context) (struct{}, error) { return struct{}{}, s.eng.SetLive(ctx, event, *req.Live) }); err != nil {
		return nil, err
	}
	s.audit(r, "set_window", "live", *req.Live, "result", "stored")
	s.trail(r, engine.AuditEntry{Action: "set_window", Result: "stored", Detail: fmt.Sprintf("live=%v", *req.Live)})
	return map[string]any{"event": event, "live": *req.Live}, nil
}
