// Package dashboard serves a coordinator's read-only web dashboard: one
// page with no external assets (embedded here) that shows the cluster, the
// workers, the jobs with their rounds and accuracy/loss curves, and the
// contribution ledger, updated live over server-sent events.
package dashboard

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"net/http"
	"time"
)

//go:embed assets
var assets embed.FS

// Source is what the dashboard shows.
type Source interface {
	// State returns the node's view as JSON (see assets/app.js for the
	// fields the page reads).
	State() ([]byte, error)
	// Changed returns a channel closed at the next change of replicated
	// state.
	Changed() <-chan struct{}
}

// Refresh is how often the page gets the state even when no replicated
// state changed (Raft indexes, gossip liveness, the open round's clock).
const Refresh = 2 * time.Second

// minGap throttles events on busy clusters.
const minGap = 250 * time.Millisecond

// Handler serves the page at /, its assets, /api/state (JSON) and
// /api/events (the state as server-sent events, whenever it changes). It
// answers 404 for anything else, so it can sit at a mux's root.
//
// onStream, if set, is called when a client opens the event stream.
func Handler(src Source, done <-chan struct{}, onStream func()) http.Handler {
	static, _ := fs.Sub(assets, "assets")
	files := http.FileServerFS(static)
	mux := http.NewServeMux()
	page, _ := fs.ReadFile(static, "index.html")
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		// The page comes with the state inlined, so that it shows the
		// cluster at first paint; the event stream keeps it current.
		b, err := src.State()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(bytes.Replace(page, []byte("{{STATE}}"), inlineJSON(b), 1))
	})
	mux.HandleFunc("GET /app.js", func(w http.ResponseWriter, r *http.Request) { files.ServeHTTP(w, r) })
	mux.HandleFunc("GET /style.css", func(w http.ResponseWriter, r *http.Request) { files.ServeHTTP(w, r) })
	mux.HandleFunc("GET /api/state", func(w http.ResponseWriter, r *http.Request) {
		b, err := src.State()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(b)
	})
	mux.HandleFunc("GET /api/events", func(w http.ResponseWriter, r *http.Request) {
		if onStream != nil {
			onStream()
		}
		events(w, r, src, done)
	})
	return mux
}

// inlineJSON makes JSON safe inside a <script> element.
func inlineJSON(b []byte) []byte {
	b = bytes.ReplaceAll(b, []byte("<"), []byte(`\u003c`))
	return bytes.ReplaceAll(b, []byte(">"), []byte(`\u003e`))
}

// events streams the state whenever it differs from the last sent.
func events(w http.ResponseWriter, r *http.Request, src Source, done <-chan struct{}) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	tick := time.NewTicker(Refresh)
	defer tick.Stop()
	var last []byte
	for {
		changed := src.Changed()
		b, err := src.State()
		if err != nil {
			fmt.Fprintf(w, "event: error\ndata: %q\n\n", err.Error())
		} else if !bytes.Equal(b, last) {
			for line := range bytes.Lines(b) { // an event's data may not hold a bare newline
				fmt.Fprintf(w, "data: %s\n", bytes.TrimRight(line, "\r\n"))
			}
			fmt.Fprint(w, "\n")
			last = b
		}
		fl.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-done:
			return
		case <-changed:
		case <-tick.C:
		}
		select { // coalesce bursts of changes
		case <-r.Context().Done():
			return
		case <-time.After(minGap):
		}
	}
}
