package main

import (
	"errors"
	"fmt"
	"math"

	"github.com/urfave/cli/v2"

	"github.com/fedtune/fedtune/round"
)

// uint32Flags reads unsigned flags into the 32-bit fields of a job spec,
// recording the first value that does not fit instead of letting it wrap
// (--rounds 4294967296 would otherwise become 0).
type uint32Flags struct {
	c   *cli.Context
	err error
}

func (f *uint32Flags) get(name string) uint32 {
	v := f.c.Uint(name)
	if v > math.MaxUint32 && f.err == nil {
		f.err = fmt.Errorf("--%s %d: want at most %d", name, v, uint64(math.MaxUint32))
	}
	return uint32(v)
}

// checkExplicitFlags refuses values that a job spec would read as "use the
// default": a round timeout of zero or below, a batch size of zero.
func checkExplicitFlags(c *cli.Context) error {
	if d := c.Duration("round-timeout"); c.IsSet("round-timeout") && d <= 0 {
		return fmt.Errorf("--round-timeout %v: want a positive duration", d)
	}
	if c.IsSet("batch-size") && c.Uint("batch-size") == 0 {
		return errors.New("--batch-size 0: want at least 1")
	}
	return nil
}

// specFlags names the job submit flag of each JobSpec field that has one.
var specFlags = map[string]string{
	"name": "name", "model": "model", "dataset": "dataset", "rounds": "rounds", "clients_per_round": "clients",
	"min_updates": "min-updates", "round_timeout_seconds": "round-timeout", "over_select": "over-select",
	"max_update_norm": "max-update-norm", "max_update_ratio": "max-update-ratio", "allow": "allow", "aggregator": "aggregator",
	"codec": "codec", "aggregator_params.trim_fraction": "trim-fraction", "aggregator_params.clip_norm": "clip-norm",
	"aggregator_params.tau": "tau", "aggregator_params.f": "byzantine", "aggregator_params.m": "multi-krum-m",
	"aggregator_params.iterations": "agg-iterations", "server_optimizer": "server-optimizer", "server_optimizer.lr": "server-lr",
	"server_optimizer.beta1": "server-beta1", "server_optimizer.beta2": "server-beta2", "server_optimizer.epsilon": "server-epsilon",
	"train.batch_size": "batch-size", "train.local_epochs": "epochs", "train.local_steps": "steps", "train.learning_rate": "lr",
	"train.momentum": "momentum", "train.prox_mu": "prox-mu", "lora.alpha": "lora-alpha",
	"staleness": "staleness", "staleness_a": "staleness-a", "drift_correction": "drift-correction", "buffer_size": "buffer-size",
	"dp.noise_multiplier": "dp-noise", "dp.clip_norm": "dp-clip", "dp.delta": "dp-delta", "dp.epsilon": "dp-epsilon",
	"dp.adaptive_clip": "dp-adaptive-clip", "dp.target_quantile": "dp-target-quantile", "dp.clip_lr": "dp-clip-lr", "dp.count_noise": "dp-count-noise",
	"secagg.neighbors": "secagg-neighbors", "secagg.threshold": "secagg-threshold", "secagg.clip_range": "secagg-clip-range", "secagg.phase_timeout_seconds": "secagg-phase-timeout",
}

// specFlagError rewrites a spec field's error to name the flag that sets
// it: "--lr NaN: want …" rather than "train.learning_rate: NaN: want …".
func specFlagError(err error) error {
	if fe, ok := errors.AsType[*round.FieldError](err); ok {
		if flag, ok := specFlags[fe.Field]; ok {
			return fmt.Errorf("--%s %w", flag, fe.Err)
		}
	}
	if pe, ok := errors.AsType[*round.ParamError](err); ok {
		if flag, ok := specFlags[pe.Param]; ok {
			return fmt.Errorf("--%s %w", flag, pe.Err)
		}
	}
	return err
}
