// Package demo serves the dev server's home-screen demo (/demo/): a page built
// on the TypeScript SDK's IIFE (assets/stagecast.iife.js, copied there by the
// SDK's build and checked by its tests) that shows the rows of the current
// stage from the prefetched map, switches live, toasts notifications and shows
// the connection state. It is for `make run` only.
package demo

import (
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
)

//go:embed assets
var assets embed.FS

// Config is what the page needs to connect: the proxy's WebSocket URL and the
// prefetch API's GraphQL path (on the origin the page comes from).
type Config struct {
	Proxy   string `json:"proxy"`
	GraphQL string `json:"graphql"`
}

// Handler serves the page under /demo/ and its config at /demo/config.json.
func Handler(cfg Config) http.Handler {
	sub, _ := fs.Sub(assets, "assets")
	files := http.StripPrefix("/demo/", http.FileServer(http.FS(sub)))
	body, _ := json.Marshal(cfg)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/demo/config.json" {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "no-store")
			_, _ = w.Write(body)
			return
		}
		w.Header().Set("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'")
		files.ServeHTTP(w, r)
	})
}
