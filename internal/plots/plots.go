// Package plots draws the PNGs of `fedtune plot` from a `fedtune sim`
// results CSV with gonum/plot: accuracy and loss per round for every run,
// accuracy against bytes on the wire and against simulated time, and final
// accuracy by aggregator × attack.
package plots

import (
	"encoding/csv"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// series is one run's rows.
type series struct {
	label  string
	params map[string]string // swept key -> value
	round  []float64
	acc    []float64 // NaN-free: only evaluated rounds
	accX   []float64 // round of each acc value
	accMB  []float64 // cumulative MB at each acc value
	accT   []float64 // simulated time at each acc value (sim_time column, if any)
	loss   []float64
	final  float64
	// DP runs (an epsilon column): ε after each round, and at each acc
	// value; finalEps is ε after the last round (0: no DP)
	eps, accEps []float64
	finalEps    float64
	// averaged over seeds (averageSeeds): the 95% band of acc, the seeds,
	// the half-width of final's interval
	accLo, accHi []float64
	seeds        int
	finalCI      float64
}

// Results is a parsed results CSV.
type Results struct {
	Swept []string
	Runs  []*series
	timed bool // the CSV has simulated times
	dp    bool // the CSV has the ε spent by DP runs
}

// Read parses a results CSV written by fedtune sim.
func Read(r io.Reader) (*Results, error) {
	rows, err := csv.NewReader(r).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("results: %w", err)
	}
	if len(rows) < 2 {
		return nil, fmt.Errorf("results: no rows")
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	for _, need := range []string{"run", "round", "accuracy", "loss", "cum_bytes"} {
		if _, ok := col[need]; !ok {
			return nil, fmt.Errorf("results: no %q column (is this a fedtune sim results.csv?)", need)
		}
	}
	res := &Results{Swept: rows[0][1:col["round"]]}
	byRun := map[string]*series{}
	for n, row := range rows[1:] {
		if len(row) != len(rows[0]) {
			return nil, fmt.Errorf("results: row %d has %d fields, header %d", n+2, len(row), len(rows[0]))
		}
		s, ok := byRun[row[col["run"]]]
		if !ok {
			s = &series{params: map[string]string{}}
			var parts []string
			for i, k := range res.Swept {
				s.params[k] = row[1+i]
				parts = append(parts, k+"="+row[1+i])
			}
			s.label = strings.Join(parts, " ")
			if s.label == "" {
				s.label = "run " + row[col["run"]]
			}
			byRun[row[col["run"]]] = s
			res.Runs = append(res.Runs, s)
		}
		round, err := strconv.ParseFloat(row[col["round"]], 64)
		if err != nil {
			return nil, fmt.Errorf("results: row %d: round %q", n+2, row[col["round"]])
		}
		cum, _ := strconv.ParseFloat(row[col["cum_bytes"]], 64)
		var simT float64
		if i, ok := col["sim_time"]; ok {
			simT, _ = strconv.ParseFloat(row[i], 64)
			res.timed = res.timed || simT > 0
		}
		s.round = append(s.round, round)
		var eps float64
		if i, ok := col["epsilon"]; ok && row[i] != "" {
			if eps, err = strconv.ParseFloat(row[i], 64); err != nil {
				return nil, fmt.Errorf("results: row %d: epsilon %q", n+2, row[i])
			}
			res.dp = res.dp || eps > 0
			s.finalEps = eps
		}
		s.eps = append(s.eps, eps)
		if a := row[col["accuracy"]]; a != "" {
			v, err := strconv.ParseFloat(a, 64)
			if err != nil {
				return nil, fmt.Errorf("results: row %d: accuracy %q", n+2, a)
			}
			s.acc = append(s.acc, 100*v)
			s.accX = append(s.accX, round)
			s.accMB = append(s.accMB, cum/1e6)
			s.accT = append(s.accT, simT)
			s.accEps = append(s.accEps, eps)
			s.final = 100 * v
			l, _ := strconv.ParseFloat(row[col["loss"]], 64)
			s.loss = append(s.loss, l)
		}
	}
	return res, nil
}

// Plots lists the files Draw may write, for help texts.
const Plots = `accuracy.png and loss.png (per round, one line per run), accuracy_vs_bytes.png
(accuracy against cumulative bytes of updates received, bytes on a log axis),
accuracy_vs_time.png (against simulated time, when the results have it), and
final*.png (final accuracy, each bar labelled with its value: grouped by attack
and aggregator when both are swept, one chart per value of any other swept key;
one bar per run otherwise). When the runs sweep seed, runs that differ only in
their seed are averaged: lines show the mean with a 95% confidence band
(Student's t over the seeds), bars the mean with its interval. When runs are
DP-FedAvg (an epsilon column): epsilon.png (the privacy spent, ε per round),
accuracy_vs_epsilon.png (accuracy as ε is spent, one line per run) and
privacy_utility.png (final accuracy against final ε, a point per run, runs
without DP as a dashed line).`

// Draw writes the PNGs to dir and returns their paths (see Plots).
func Draw(res *Results, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	res = averageSeeds(res)
	var out []string
	save := func(p *plot.Plot, name string, w vg.Length) error {
		path := filepath.Join(dir, name)
		if err := p.Save(w, 5*vg.Inch, path); err != nil {
			return fmt.Errorf("plot %s: %w", name, err)
		}
		out = append(out, path)
		return nil
	}
	// With many runs, line charts get one panel per value of the first
	// swept key (legends stay readable), tiled in one image.
	groups := [][]*series{res.Runs}
	var groupKey string
	if len(res.Runs) > 10 && len(res.Swept) >= 2 {
		groupKey = res.Swept[0]
		groups = nil
		var vals []string
		for _, s := range res.Runs {
			vals = appendNew(vals, s.params[groupKey])
		}
		for _, v := range vals {
			var g []*series
			for _, s := range res.Runs {
				if s.params[groupKey] == v {
					g = append(g, s)
				}
			}
			groups = append(groups, g)
		}
	}
	label := func(s *series) string {
		if groupKey == "" {
			return s.label
		}
		var parts []string
		for _, k := range res.Swept[1:] {
			parts = append(parts, k+"="+s.params[k])
		}
		return strings.Join(parts, " ")
	}
	lines := func(title, xl, yl string, x func(*series) []float64, y func(*series) []float64, band func(*series) ([]float64, []float64), logX bool) []*plot.Plot {
		var out []*plot.Plot
		for _, g := range groups {
			p := plot.New()
			p.Title.Text, p.X.Label.Text, p.Y.Label.Text = title, xl, yl
			if logX {
				p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
			}
			if groupKey != "" {
				p.Title.Text = groupKey + "=" + g[0].params[groupKey]
			}
			p.Legend.Top, p.Legend.Left = false, false
			p.Legend.TextStyle.Font.Size = vg.Points(8)
			for i, s := range g {
				xs, ys := x(s), y(s)
				var pts plotter.XYs
				for j := range xs {
					if !logX || xs[j] > 0 { // a log axis has no place for 0
						pts = append(pts, plotter.XY{X: xs[j], Y: ys[j]})
					}
				}
				if band != nil {
					if lo, hi := band(s); len(lo) == len(xs) && len(lo) > 1 {
						var poly plotter.XYs
						for j := range xs {
							if !logX || xs[j] > 0 {
								poly = append(poly, plotter.XY{X: xs[j], Y: hi[j]})
							}
						}
						for j := len(xs) - 1; j >= 0; j-- {
							if !logX || xs[j] > 0 {
								poly = append(poly, plotter.XY{X: xs[j], Y: lo[j]})
							}
						}
						if pg, err := plotter.NewPolygon(poly); err == nil {
							r, gg, b, _ := plotutil.Color(i).RGBA()
							pg.Color = color.NRGBA{R: uint8(r >> 8), G: uint8(gg >> 8), B: uint8(b >> 8), A: 60}
							pg.LineStyle.Width = 0
							p.Add(pg)
						}
					}
				}
				l, err := plotter.NewLine(pts)
				if err != nil || len(pts) == 0 {
					continue
				}
				l.Color = plotutil.Color(i)
				l.Dashes = plotutil.Dashes(i / 7)
				l.Width = vg.Points(1.5)
				p.Add(l)
				p.Legend.Add(label(s), l)
			}
			p.Add(plotter.NewGrid())
			out = append(out, p)
		}
		return out
	}
	saveTiled := func(ps []*plot.Plot, name, title string) error {
		if len(ps) == 1 {
			ps[0].Title.Text = title
			return save(ps[0], name, 8*vg.Inch)
		}
		cols := min(3, len(ps))
		rows := (len(ps) + cols - 1) / cols
		w, h := vg.Length(cols)*5*vg.Inch, vg.Length(rows)*3.8*vg.Inch
		img := vgimg.New(w, h)
		dc := draw.New(img)
		grid := make([][]*plot.Plot, rows)
		for r := range grid {
			grid[r] = make([]*plot.Plot, cols)
			for c := range grid[r] {
				if i := r*cols + c; i < len(ps) {
					grid[r][c] = ps[i]
				}
			}
		}
		canvases := plot.Align(grid, draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
			PadTop: vg.Millimeter * 4, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}, dc)
		for r := range grid {
			for c, p := range grid[r] {
				if p != nil {
					p.Draw(canvases[r][c])
				}
			}
		}
		path := filepath.Join(dir, name)
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
			f.Close()
			return fmt.Errorf("plot %s: %w", name, err)
		}
		out = append(out, path)
		return f.Close()
	}
	accBand := func(s *series) ([]float64, []float64) { return s.accLo, s.accHi }
	if err := saveTiled(lines("Test accuracy per round", "round", "test accuracy (%)", func(s *series) []float64 { return s.accX }, func(s *series) []float64 { return s.acc }, accBand, false),
		"accuracy.png", "Test accuracy per round"); err != nil {
		return nil, err
	}
	if err := saveTiled(lines("Test loss per round", "round", "test loss", func(s *series) []float64 { return s.accX }, func(s *series) []float64 { return s.loss }, nil, false),
		"loss.png", "Test loss per round"); err != nil {
		return nil, err
	}
	if err := saveTiled(lines("Test accuracy against bytes on the wire", "updates received (MB, cumulative; log scale)", "test accuracy (%)",
		func(s *series) []float64 { return s.accMB }, func(s *series) []float64 { return s.acc }, accBand, true), "accuracy_vs_bytes.png", "Test accuracy against bytes on the wire"); err != nil {
		return nil, err
	}
	if res.timed {
		if err := saveTiled(lines("Test accuracy against simulated time", "simulated time (s)", "test accuracy (%)",
			func(s *series) []float64 { return s.accT }, func(s *series) []float64 { return s.acc }, accBand, false), "accuracy_vs_time.png", "Test accuracy against simulated time"); err != nil {
			return nil, err
		}
	}
	if res.dp {
		if err := saveTiled(lines("Privacy spent per round", "round", "ε (at the run's δ)", func(s *series) []float64 { return dpOnly(s, s.round) }, func(s *series) []float64 { return dpOnly(s, s.eps) }, nil, false),
			"epsilon.png", "Privacy spent per round (ε)"); err != nil {
			return nil, err
		}
		if err := saveTiled(lines("Test accuracy against privacy spent", "ε spent", "test accuracy (%)", func(s *series) []float64 { return dpOnly(s, s.accEps) }, func(s *series) []float64 { return dpOnly(s, s.acc) }, accBand, false),
			"accuracy_vs_epsilon.png", "Test accuracy against privacy spent"); err != nil {
			return nil, err
		}
		p, err := privacyUtility(res)
		if err != nil {
			return nil, err
		}
		if err := save(p, "privacy_utility.png", 8*vg.Inch); err != nil {
			return nil, err
		}
	}
	width := 8 * vg.Inch
	bars, err := finalBars(res)
	if err != nil {
		return nil, err
	}
	for name, p := range bars {
		if err := save(p, name, width); err != nil {
			return nil, err
		}
	}
	sort.Strings(out)
	return out, nil
}

// dpOnly is v for a DP run, nothing for a run without DP (its line is left
// out of the ε plots).
func dpOnly(s *series, v []float64) []float64 {
	if s.finalEps == 0 {
		return nil
	}
	return v
}

// privacyUtility draws each DP run's final accuracy against the ε it
// spent, a labelled point per run, and each run without DP as a dashed
// horizontal line at its final accuracy.
func privacyUtility(res *Results) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text, p.X.Label.Text, p.Y.Label.Text = "Privacy against utility", "ε spent (at the runs' δ)", "final test accuracy (%)"
	var pts plotter.XYs
	var labels []string
	var plain []*series
	for _, s := range res.Runs {
		if s.finalEps > 0 {
			pts = append(pts, plotter.XY{X: s.finalEps, Y: s.final})
			labels = append(labels, fmt.Sprintf("%s: %.1f%%", s.label, s.final))
		} else {
			plain = append(plain, s)
		}
	}
	sc, err := plotter.NewScatter(pts)
	if err != nil {
		return nil, fmt.Errorf("privacy-utility plot: %w", err)
	}
	sc.Shape, sc.Radius = draw.CircleGlyph{}, vg.Points(3.5)
	p.Add(sc)
	p.Legend.Add("DP-FedAvg runs", sc)
	if l, err := plotter.NewLabels(plotter.XYLabels{XYs: pts, Labels: labels}); err == nil {
		l.Offset = vg.Point{X: vg.Points(5), Y: vg.Points(-3)}
		for i := range l.TextStyle {
			l.TextStyle[i].Font.Size = vg.Points(8)
		}
		p.Add(l)
	}
	hi := 0.0
	for _, pt := range pts {
		hi = max(hi, pt.X)
	}
	p.X.Min, p.X.Max = 0, hi*1.35 // room for the labels
	for i, s := range plain {
		l, err := plotter.NewLine(plotter.XYs{{X: 0, Y: s.final}, {X: p.X.Max, Y: s.final}})
		if err != nil {
			return nil, err
		}
		l.Dashes, l.Color = []vg.Length{vg.Points(4), vg.Points(3)}, plotutil.Color(i+1)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("no DP (%s): %.1f%%", s.label, s.final), l)
	}
	p.Legend.Top, p.Legend.Left = false, true
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.Add(plotter.NewGrid())
	return p, nil
}

// finalBars draws final accuracy grouped by attack (groups) and aggregator
// (bars), one chart per combination of the other swept keys. Without both
// keys swept it draws one bar per run.
func finalBars(res *Results) (map[string]*plot.Plot, error) {
	out := map[string]*plot.Plot{}
	has := map[string]bool{}
	for _, k := range res.Swept {
		has[k] = true
	}
	if !has["aggregator"] || !has["attack"] {
		p := plot.New()
		p.Title.Text, p.Y.Label.Text = "Final test accuracy", "test accuracy (%)"
		vals := make(plotter.Values, len(res.Runs))
		names := make([]string, len(res.Runs))
		for i, s := range res.Runs {
			vals[i], names[i] = s.final, s.label
		}
		b, err := plotter.NewBarChart(vals, vg.Points(20))
		if err != nil {
			return nil, err
		}
		b.Color = plotutil.Color(0)
		p.Add(b)
		if err := addBarLabels(p, vals, res.Runs, 0); err != nil {
			return nil, err
		}
		p.NominalX(names...)
		p.X.Tick.Label.Rotation = 0.6
		p.X.Tick.Label.XAlign, p.X.Tick.Label.YAlign = -1, -0.5
		out["final.png"] = p
		return out, nil
	}
	// Panels: the other swept keys' combinations.
	panel := func(s *series) string {
		var parts []string
		for _, k := range res.Swept {
			if k != "aggregator" && k != "attack" {
				parts = append(parts, k+"="+s.params[k])
			}
		}
		return strings.Join(parts, " ")
	}
	var panels, aggs, attacks []string
	for _, s := range res.Runs {
		panels = appendNew(panels, panel(s))
		aggs = appendNew(aggs, s.params["aggregator"])
		attacks = appendNew(attacks, s.params["attack"])
	}
	for _, pn := range panels {
		p := plot.New()
		p.Title.Text = "Final test accuracy by attack and aggregator"
		if pn != "" {
			p.Title.Text += " (" + pn + ")"
		}
		p.Y.Label.Text = "test accuracy (%)"
		p.Y.Min, p.Y.Max = 0, 115 // room for the legend above the bars
		w := vg.Points(60 / float64(len(aggs)+1))
		for i, a := range aggs {
			vals := make(plotter.Values, len(attacks))
			for j, at := range attacks {
				for _, s := range res.Runs {
					if panel(s) == pn && s.params["aggregator"] == a && s.params["attack"] == at {
						vals[j] = s.final
					}
				}
			}
			b, err := plotter.NewBarChart(vals, w)
			if err != nil {
				return nil, err
			}
			b.Color = plotutil.Color(i)
			b.LineStyle.Width = 0
			b.Offset = w * vg.Length(float64(i)-float64(len(aggs)-1)/2)
			p.Add(b)
			p.Legend.Add(a, b)
			if err := addBarLabels(p, vals, nil, b.Offset); err != nil {
				return nil, err
			}
		}
		p.Legend.Top = true
		p.Legend.Left = false
		p.NominalX(attacks...)
		p.Add(plotter.NewGrid())
		name := "final.png"
		if pn != "" {
			name = "final_" + strings.NewReplacer(" ", "_", "=", "-", "/", "-").Replace(pn) + ".png"
		}
		out[name] = p
	}
	return out, nil
}

// addBarLabels writes each bar's value above it (with its confidence
// interval when the runs were averaged over seeds, and an error bar).
func addBarLabels(p *plot.Plot, vals plotter.Values, runs []*series, offset vg.Length) error {
	xys := make(plotter.XYs, len(vals))
	texts := make([]string, len(vals))
	var errs plotter.YErrors
	for i, v := range vals {
		xys[i] = plotter.XY{X: float64(i), Y: v}
		texts[i] = fmt.Sprintf("%.1f", v)
		if i < len(runs) && runs[i].seeds > 1 {
			texts[i] = fmt.Sprintf("%.1f±%.1f", v, runs[i].finalCI)
			errs = append(errs, struct{ Low, High float64 }{runs[i].finalCI, runs[i].finalCI})
		}
	}
	labels, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: texts})
	if err != nil {
		return err
	}
	labels.Offset = vg.Point{X: offset - vg.Points(8), Y: vg.Points(3)}
	for i := range labels.TextStyle {
		labels.TextStyle[i].Font.Size = vg.Points(7)
	}
	p.Add(labels)
	if len(errs) == len(vals) {
		eb, err := plotter.NewYErrorBars(struct {
			plotter.XYs
			plotter.YErrors
		}{xys, errs})
		if err != nil {
			return err
		}
		p.Add(eb)
	}
	return nil
}

// appendNew appends v unless list holds it (lists here are short).
func appendNew(list []string, v string) []string {
	for _, x := range list {
		if x == v {
			return list
		}
	}
	return append(list, v)
}
