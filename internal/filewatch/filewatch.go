// Package filewatch reloads a configuration file when it changes: key sets and
// token files that operators rotate without restarting servers (a Kubernetes
// Secret volume is updated in place).
package filewatch

import (
	"context"
	"log/slog"
	"os"
	"time"
)

// Watch notes path's state now, then, in a goroutine of its own until ctx ends,
// checks it every interval and, when its modification time or size changed,
// reads it and calls apply with the contents. An error from reading or from
// apply is logged and the previous configuration stays in force (apply must not
// half-apply).
func Watch(ctx context.Context, path string, every time.Duration, log *slog.Logger, apply func([]byte) error) {
	last := stamp(path)
	go poll(ctx, path, every, log, apply, last)
}

func poll(ctx context.Context, path string, every time.Duration, log *slog.Logger, apply func([]byte) error, last fileStamp) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := stamp(path)
		if now == last {
			continue
		}
		last = now
		b, err := os.ReadFile(path)
		if err == nil {
			err = apply(b)
		}
		if err != nil {
			log.Error("file not reloaded; keeping the previous configuration", "file", path, "err", err)
			continue
		}
		log.Info("file reloaded", "file", path)
	}
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func stamp(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{fi.ModTime(), fi.Size()}
}
