package worker

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/tensor"
)

// blob fetches a blob from the cluster, hash-checked.
func (w *Worker) blob(ctx context.Context, hash string) ([]byte, error) {
	conn, err := w.pool.Conn(w.target)
	if err != nil {
		return nil, err
	}
	gctx, cancel := w.callCtx(ctx, time.Hour) // a model may be large; gossip or keepalive end a stalled download
	defer cancel()
	b, err := client.GetBlob(gctx, conn, hash, client.MaxMessage)
	if err != nil {
		return nil, fmt.Errorf("blob %.12s from %s: %w", hash, w.target, callErr(gctx, err))
	}
	return b, nil
}

// model returns the model (or adapters) with this hash, from cache or the
// cluster.
func (w *Worker) model(ctx context.Context, hash string) (tensor.Set, error) {
	if s, ok := w.models[hash]; ok {
		w.touch(hash)
		return s, nil
	}
	b, err := w.blob(ctx, hash)
	if err != nil {
		return tensor.Set{}, fmt.Errorf("model: %w", err)
	}
	s, err := tensor.Unmarshal(b)
	if err != nil {
		return tensor.Set{}, fmt.Errorf("model %.12s: %w", hash, err)
	}
	// Keep the few most recently used: a LoRA job's frozen base is used
	// every round beside its newest adapters.
	for len(w.modelOrder) >= 3 {
		delete(w.models, w.modelOrder[0])
		w.modelOrder = w.modelOrder[1:]
	}
	w.models[hash] = s
	w.touch(hash)
	return s, nil
}

// touch makes hash the most recently used model.
func (w *Worker) touch(hash string) {
	w.modelOrder = append(slices.DeleteFunc(w.modelOrder, func(h string) bool { return h == hash }), hash)
}
