package plots

import (
	"math"
	"slices"
	"strings"

	"gonum.org/v1/gonum/stat"
	"gonum.org/v1/gonum/stat/distuv"
)

// averageSeeds folds runs that differ only in their seed into one series:
// the mean at each evaluated round, with a 95% confidence band (Student's
// t over the seeds), and the mean final accuracy with its interval. It
// returns res unchanged when seed is not swept or no configuration has two
// seeds.
func averageSeeds(res *Results) *Results {
	if !slices.Contains(res.Swept, "seed") {
		return res
	}
	swept := slices.DeleteFunc(slices.Clone(res.Swept), func(k string) bool { return k == "seed" })
	key := func(s *series) string {
		var parts []string
		for _, k := range swept {
			parts = append(parts, k+"="+s.params[k])
		}
		return strings.Join(parts, " ")
	}
	var order []string
	groups := map[string][]*series{}
	for _, s := range res.Runs {
		k := key(s)
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], s)
	}
	if len(order) == len(res.Runs) {
		return res // one seed each: nothing to average
	}
	out := &Results{Swept: swept, timed: res.timed, dp: res.dp}
	for _, k := range order {
		g := groups[k]
		m := &series{label: k, params: map[string]string{}, seeds: len(g)}
		if m.label == "" {
			m.label = "all runs"
		}
		for kk, v := range g[0].params {
			if kk != "seed" {
				m.params[kk] = v
			}
		}
		m.label += " (" + itoa(len(g)) + " seeds)"
		// rounds every seed evaluated, in order
		n := len(g[0].accX)
		for _, s := range g[1:] {
			n = min(n, len(s.accX))
		}
		for i := 0; i < n; i++ {
			acc, loss, mb, tm := make([]float64, len(g)), make([]float64, len(g)), make([]float64, len(g)), make([]float64, len(g))
			for j, s := range g {
				acc[j], loss[j], mb[j], tm[j] = s.acc[i], s.loss[i], s.accMB[i], s.accT[i]
			}
			mean, half := meanCI(acc)
			m.accX = append(m.accX, g[0].accX[i])
			m.acc = append(m.acc, mean)
			m.accLo, m.accHi = append(m.accLo, mean-half), append(m.accHi, mean+half)
			m.loss = append(m.loss, stat.Mean(loss, nil))
			m.accMB = append(m.accMB, stat.Mean(mb, nil))
			m.accT = append(m.accT, stat.Mean(tm, nil))
			m.accEps = append(m.accEps, g[0].accEps[i]) // the same sampling, the same ε, whatever the seed
		}
		m.eps, m.finalEps = g[0].eps, g[0].finalEps
		finals := make([]float64, len(g))
		for j, s := range g {
			finals[j] = s.final
		}
		m.final, m.finalCI = meanCI(finals)
		m.round = g[0].round
		out.Runs = append(out.Runs, m)
	}
	return out
}

// meanCI returns the mean of v and the half-width of its 95% confidence
// interval (Student's t with len(v)-1 degrees of freedom; 0 for one value).
func meanCI(v []float64) (mean, half float64) {
	mean = stat.Mean(v, nil)
	if len(v) < 2 {
		return mean, 0
	}
	sd := stat.StdDev(v, nil)
	t := distuv.StudentsT{Mu: 0, Sigma: 1, Nu: float64(len(v) - 1)}.Quantile(0.975)
	return mean, t * sd / math.Sqrt(float64(len(v)))
}

func itoa(n int) string {
	const digits = "0123456789"
	if n < 10 {
		return digits[n : n+1]
	}
	return itoa(n/10) + digits[n%10:n%10+1]
}
