package coordinator

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedtune/fedtune/internal/pki"
)

// access says which certificate roles may call each gRPC service: workers
// only poll, submit and fetch blobs (Blob.Get checks further that the blob
// is the base model of a round they are selected in); only coordinators
// and admins (the CLI) store blobs and use the admin service. A method not
// listed is refused.
var access = map[string][]string{
	"/fedtune.v1.Worker/":  {pki.RoleWorker},
	"/fedtune.v1.Blob/Get": {pki.RoleCoordinator, pki.RoleAdmin, pki.RoleWorker},
	"/fedtune.v1.Blob/Put": {pki.RoleCoordinator, pki.RoleAdmin},
	"/fedtune.v1.Admin/":   {pki.RoleCoordinator, pki.RoleAdmin},
}

// authorize checks the verified certificate of a call's peer against
// access. Without TLS (insecure mode) everything is allowed.
func (c *Coordinator) authorize(ctx context.Context, method string) (pki.Identity, error) {
	if c.cfg.TLS == nil {
		return pki.Identity{}, nil
	}
	id, err := pki.PeerIdentity(ctx)
	if err != nil {
		c.metrics.authRefused.WithLabelValues("no-identity").Inc()
		return id, status.Errorf(codes.Unauthenticated, "%v", err)
	}
	if reason, ok := c.fsm.Revoked(id.Name); ok && id.Role == pki.RoleWorker {
		c.metrics.authRefused.WithLabelValues("revoked").Inc()
		return id, status.Errorf(codes.PermissionDenied, "worker %q is revoked: %s", id.Name, reason)
	}
	for prefix, roles := range access {
		if method == prefix || (strings.HasSuffix(prefix, "/") && strings.HasPrefix(method, prefix)) {
			for _, r := range roles {
				if r == id.Role {
					return id, nil
				}
			}
		}
	}
	c.metrics.authRefused.WithLabelValues("role").Inc()
	return id, status.Errorf(codes.PermissionDenied, "%s %q may not call %s", id.Role, id.Name, method)
}

type identityKey struct{}

// callerIdentity is the identity authorize found for this call (zero in
// insecure mode).
func callerIdentity(ctx context.Context) pki.Identity {
	id, _ := ctx.Value(identityKey{}).(pki.Identity)
	return id
}

// checkWorkerID refuses a worker whose certificate names another worker
// than the request does (a worker's id comes from its certificate), and a
// revoked worker (in insecure mode too).
func (c *Coordinator) checkWorkerID(ctx context.Context, claimed string) error {
	if reason, ok := c.fsm.Revoked(claimed); ok {
		c.metrics.authRefused.WithLabelValues("revoked").Inc()
		return status.Errorf(codes.PermissionDenied, "worker %q is revoked: %s", claimed, reason)
	}
	id := callerIdentity(ctx)
	if c.cfg.TLS == nil || id.Role != pki.RoleWorker || id.Name == claimed {
		return nil
	}
	c.metrics.authRefused.WithLabelValues("impersonation").Inc()
	return status.Errorf(codes.PermissionDenied, "certificate names worker %q, request claims %q", id.Name, claimed)
}

func (c *Coordinator) unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	id, err := c.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return h(context.WithValue(ctx, identityKey{}, id), req)
}

type authStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s authStream) Context() context.Context { return s.ctx }

func (c *Coordinator) streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	id, err := c.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return h(srv, authStream{ss, context.WithValue(ss.Context(), identityKey{}, id)})
}

// workerMayFetch reports whether a worker may read blob hash: only the
// base model of an open round that selected it (and a LoRA job's frozen base).
func (c *Coordinator) workerMayFetch(worker, hash string) bool {
	for _, j := range c.fsm.RunningJobs() {
		for _, a := range j.Async.GetAssignments() {
			if a.Worker == worker && (a.BaseModel == hash || (j.Spec.Lora != nil && j.Spec.BaseModel == hash)) {
				return true
			}
		}
		r := j.OpenRound
		if r == nil || (r.BaseModel != hash && (j.Spec.Lora == nil || j.Spec.BaseModel != hash)) {
			continue
		}
		for _, w := range r.Selected {
			if w == worker {
				return true
			}
		}
	}
	return false
}
