package worker

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedtune/fedtune/internal/pki"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/secagg"
)

// secaggBudget bounds a worker's part in one SecAgg round after training.
const secaggBudget = 10 * time.Minute

// errRoundOver ends a worker's part in a SecAgg round: the round was
// committed, aborted or planned again, or refused this worker's message.
var errRoundOver = errors.New("secagg round over")

// secaggRound takes part in a secure-aggregation round with a trained
// delta: keys, shares, the masked update, then the shares of the others'
// secrets that the round's outcome needs. The plain update never leaves
// the worker.
func (w *Worker) secaggRound(ctx context.Context, t *pb.Task, res Result) error {
	log := w.log.With("job", t.Job, "round", t.Round, "attempt", t.Attempt)
	// Whatever happens, this attempt is over for this worker: its keys
	// and masks are for this attempt only.
	defer w.markDone(pb.AttemptKey(t.Job, t.Round, t.Attempt))
	ctx, cancel := context.WithTimeout(ctx, secaggBudget)
	defer cancel()
	sa := t.Secagg
	p := secagg.Params{Job: t.Job, Round: t.Round, Attempt: t.Attempt, Seed: sa.GraphSeed, Neighbors: int(sa.Neighbors), Threshold: sa.Threshold, FracBits: sa.FracBits, ClipRange: sa.ClipRange}
	var flat []float32
	for _, tn := range res.Delta.Tensors {
		flat = append(flat, tn.Data...)
	}
	plain := secagg.Encode(flat, sa.FracBits, sa.ClipRange)
	var auth secagg.KeyAuth
	if w.cfg.TLS != nil {
		auth = certAuth{w.cfg.TLS} // workers sign their keys and check each other's
	}
	client, keys, err := secagg.NewClient(p, w.cfg.ID, rand.Reader, auth)
	if err != nil {
		return err
	}
	req := func(phase, await uint32) *pb.SecAggRequest {
		return &pb.SecAggRequest{WorkerId: w.cfg.ID, Job: t.Job, Round: t.Round, Attempt: t.Attempt, Phase: phase, Await: await}
	}
	step := func(what string, r *pb.SecAggRequest) (*pb.SecAggResponse, error) {
		resp, err := w.secaggCall(ctx, r)
		if errors.Is(err, errRoundOver) {
			log.Info("secagg round over before "+what, "err", err)
		}
		return resp, err
	}
	r := req(round.PhaseKeys, round.PhaseShares)
	r.Keys = keys
	resp, err := step("shares", r)
	if err != nil {
		return ignoreOver(err)
	}
	shares, err := client.Shares(resp.Keys)
	if err != nil {
		log.Error("secagg shares", "err", err)
		return nil
	}
	r = req(round.PhaseShares, round.PhaseMasked)
	r.Shares = shares
	if resp, err = step("masking", r); err != nil {
		return ignoreOver(err)
	}
	masked, err := client.Mask(plain, resp.Shared, resp.Inbox)
	if err != nil {
		log.Error("secagg masking", "err", err)
		return nil
	}
	if hook := w.cfg.SecAggMasked; hook != nil && !hook(t.Job, t.Round, flat, plain, masked) {
		log.Info("secagg: dropping out after masking (test hook)")
		return nil
	}
	metrics, _ := pb.SanitizeMetrics(res.Metrics)
	w.pending = &pb.SubmitUpdateRequest{WorkerId: w.cfg.ID, Job: t.Job, Round: t.Round, BaseModel: t.Base.GetHash(),
		Codec: round.CodecSecAgg, Payload: secagg.EncodeMasked(masked), Samples: res.Samples, Metrics: metrics, Attempt: t.Attempt}
	for w.pending != nil {
		if err := w.submit(ctx); err != nil {
			w.rotate()
			select {
			case <-ctx.Done():
				w.pending = nil
				return nil
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	if resp, err = step("unmasking", req(0, round.PhaseUnmask)); err != nil {
		return ignoreOver(err)
	}
	reveals, err := client.Reveal(resp.Survivors)
	if err != nil {
		log.Error("secagg reveal refused", "err", err)
		return nil
	}
	r = req(round.PhaseUnmask, 0)
	r.Reveals = reveals
	if _, err := step("the end", r); err != nil {
		return ignoreOver(err)
	}
	log.Info("secagg: shares revealed", "survivors", len(resp.Survivors), "reveals", len(reveals))
	return nil
}

func ignoreOver(err error) error {
	if errors.Is(err, errRoundOver) || errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	return err
}

// secaggCall sends one SecAgg message (if r.Phase is set) and waits until
// the round reaches r.Await, following leader changes and retrying other
// coordinators; a message is sent until one is accepted.
func (w *Worker) secaggCall(ctx context.Context, r *pb.SecAggRequest) (*pb.SecAggResponse, error) {
	r.WaitSeconds = w.cfg.PollWait.Seconds()
	b := newBackoff()
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		conn, err := w.pool.Conn(w.target)
		if err == nil {
			cctx, cancel := w.callCtx(ctx, w.cfg.PollWait+10*time.Second)
			var resp *pb.SecAggResponse
			resp, err = rpcpb.NewWorkerClient(conn).SecAgg(cctx, r)
			err = callErr(cctx, err)
			cancel()
			switch code := status.Code(err); {
			case err == nil && resp.NotLeader:
				if ferr := w.follow(resp.LeaderAddr); ferr != nil {
					w.rotate()
				}
				continue
			case err == nil:
				r.Phase, r.Keys, r.Shares, r.Reveals = 0, nil, nil, nil // delivered
				if resp.Ended {
					return nil, fmt.Errorf("%w: committed, aborted or planned again", errRoundOver)
				}
				if resp.Phase >= r.Await {
					return resp, nil
				}
				b.reset()
				continue
			case code == codes.FailedPrecondition || code == codes.NotFound || code == codes.PermissionDenied || code == codes.InvalidArgument:
				return nil, fmt.Errorf("%w: %v", errRoundOver, err)
			}
		}
		w.log.Debug("secagg call failed; retrying", "target", w.target, "err", err)
		w.rotate()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(b.next()):
		}
	}
}

// certAuth signs this worker's SecAgg keys with its certificate's key and
// checks the other workers' signatures and certificates (secure mode).
type certAuth struct{ node *pki.Node }

func (a certAuth) Sign(keys *pb.SecAggKeys, msg []byte) error {
	signer, ok := a.node.Cert.PrivateKey.(crypto.Signer)
	if !ok {
		return fmt.Errorf("the certificate's key cannot sign")
	}
	digest := sha256.Sum256(msg)
	sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return err
	}
	keys.Certificate, keys.Signature = a.node.Cert.Certificate[0], sig
	return nil
}

func (a certAuth) Verify(keys *pb.SecAggKeys, msg []byte) error {
	if len(keys.Certificate) == 0 || len(keys.Signature) == 0 {
		return fmt.Errorf("not signed")
	}
	id, pub, err := a.node.VerifyCertificate(keys.Certificate)
	if err != nil {
		return err
	}
	if id.Role != pki.RoleWorker || id.Name != keys.Worker {
		return fmt.Errorf("signed with the certificate of %s %q", id.Role, id.Name)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("certificate key of type %T, want ECDSA", pub)
	}
	digest := sha256.Sum256(msg)
	if !ecdsa.VerifyASN1(ec, digest[:], keys.Signature) {
		return fmt.Errorf("bad signature")
	}
	return nil
}
