package coordinator

import (
	"context"
	"log/slog"
	"time"

	"github.com/fedtune/fedtune/coordinator/roster"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/hashicorp/raft"
)

// leaderLoop is the leader's own work (the shape of Consul's leader.go):
// after a barrier, so the FSM holds every entry earlier leaders committed,
// it reconciles gossip into the roster and drives each running job's rounds.
// It stops the moment ctx is cancelled (leadership lost).
func (c *Coordinator) leaderLoop(ctx context.Context) {
	// Every line of this leadership carries its term, so that a commit
	// logged after "leadership lost" on the same node is told apart.
	log := c.log.With("role", "leader", "term", c.raft.CurrentTerm())
	if err := c.raft.Barrier(30 * time.Second).Error(); err != nil {
		log.Error("barrier failed; not scheduling", "err", err)
		return
	}
	c.mu.Lock()
	lost := c.leaderLostAt
	c.leaderLostAt = time.Time{}
	c.mu.Unlock()
	if !lost.IsZero() {
		c.metrics.failover.Observe(time.Since(lost).Seconds())
		// Since this node last heard from a leader: the failover when the
		// old leader just died; longer when this node was cut off.
		log.Info("leading: scheduler started", "since_last_leader", time.Since(lost).Round(time.Millisecond))
	} else {
		log.Info("leading: scheduler started")
	}
	s := &scheduler{c: c, log: log, attempts: map[string]uint32{}, waitLogged: map[string]bool{}, roster: roster.New(c.cfg.WorkerGrace)}
	// The autopilot runs beside the scheduler, never in its way: a Raft
	// configuration change waits for its commit, which a cluster that has
	// just lost a node may not give for a long while, and rounds must go
	// on meanwhile.
	servers := &serverReconciler{c: c, log: log, goneSince: map[string]time.Time{}, caughtUp: map[string]int{}}
	go servers.run(ctx)
	t := time.NewTicker(c.cfg.TickInterval)
	defer t.Stop()
	for {
		s.tick(ctx)
		select {
		case <-ctx.Done():
			log.Info("leadership lost: scheduler stopped")
			return
		case <-t.C:
		case <-c.fsm.Changed():
		}
	}
}

// scheduler holds the leader's in-memory bookkeeping; none of it is needed
// for correctness after a failover (a new leader starts afresh).
type scheduler struct {
	c          *Coordinator
	log        *slog.Logger
	attempts   map[string]uint32 // job -> aborted attempts of its current round
	waitLogged map[string]bool
	roster     *roster.Reconciler // workers: gossip -> roster commands
	load       load               // who trains for which job, this tick
}

func (s *scheduler) tick(ctx context.Context) {
	s.schedule(ctx, s.reconcile())
}

// schedule steps every running job once, with the live workers: one read
// of the running jobs (their histories shared, not copied) per tick.
func (s *scheduler) schedule(ctx context.Context, alive map[string]*pb.WorkerInfo) {
	jobs := s.c.fsm.RunningJobs()
	s.load = newLoad(jobs)
	for _, j := range jobs {
		if ctx.Err() != nil {
			return
		}
		if err := s.step(ctx, j, alive); err != nil && ctx.Err() == nil {
			s.log.Error("scheduling failed", "job", j.Spec.Name, "err", err)
		}
	}
}

// observeLeadership counts leader changes seen by this node and remembers
// when it last heard from a leader that is gone, to measure failover.
func (c *Coordinator) observeLeadership() {
	defer c.wg.Done()
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	c.raft.RegisterObserver(obs)
	defer c.raft.DeregisterObserver(obs)
	var last raft.ServerID
	for {
		select {
		case <-c.done:
			return
		case o := <-ch:
			lo := o.Data.(raft.LeaderObservation)
			if lo.LeaderID == "" {
				// The leader was gone since this node last heard from it;
				// its heartbeat timeout only noticed it now.
				lost := c.raft.LastContact()
				if lost.IsZero() {
					lost = time.Now()
				}
				c.mu.Lock()
				if c.leaderLostAt.IsZero() {
					c.leaderLostAt = lost
				}
				c.mu.Unlock()
				continue
			}
			if lo.LeaderID != last {
				c.metrics.leaderChanges.Inc()
				last = lo.LeaderID
			}
		}
	}
}
