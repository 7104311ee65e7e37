// Package round is the start of fedtune's round core: the pure logic of a
// job's rounds and async versions that the coordinator's FSM and leader
// and the simulator share, with no I/O, no clock (time comes in as an
// argument), no Raft and no gRPC — in the spirit of etcd-io/raft's RawNode.
//
// It holds round planning and deciding (PlanRound, DecideRound), async
// mode's parameters, staleness weights, concurrency schedule and
// assignment planning (NormalizeAsync, StalenessWeight, ConcurrencyAt,
// PlanAssignments), drift correction (Drift, Drifts), and the conversions
// of a job spec's rule and server-optimizer parameters (RuleParams,
// NewOptimizer). The simulator imports it instead of the coordinator, so it
// no longer pulls in Raft, gossip or Prometheus.
package round
