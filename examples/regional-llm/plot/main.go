// Command plot draws the regional-llm example's figure: each language
// job's federated held-out perplexity after every round, as the cluster
// committed it (fed_perplexity, from the workers' evaluations), with the
// centralised baselines as dashed lines.
//
//	go run ./examples/regional-llm/plot -coordinator 127.0.0.1:17170 -o perplexity.png \
//	    -ref 122.6 -ref 97.9 -ref 97.2 only-fr only-de only-es
package main

import (
	"context"
	"flag"
	"fmt"
	"image/color"
	"log"
	"os"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/fedtune/fedtune/internal/client"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

func main() {
	addr := flag.String("coordinator", "127.0.0.1:7070", "a coordinator's gRPC address")
	out := flag.String("o", "perplexity.png", "PNG to write")
	var refs refList
	flag.Var(&refs, "ref", "a centralised baseline's perplexity, one per job in order (repeatable)")
	flag.Parse()
	if flag.NArg() == 0 {
		log.Fatal("name the jobs to plot")
	}
	pool := client.NewPool()
	defer pool.Close()
	conn, err := pool.Conn(*addr)
	if err != nil {
		log.Fatal(err)
	}
	p := plot.New()
	p.Title.Text = "Federated LoRA: held-out perplexity per language"
	p.X.Label.Text = "round"
	p.Y.Label.Text = "perplexity (workers' held-out text)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.ConstantTicks([]plot.Tick{{Value: 50, Label: "50"}, {Value: 100, Label: "100"}, {Value: 200, Label: "200"},
		{Value: 500, Label: "500"}, {Value: 1000, Label: "1000"}, {Value: 2000, Label: "2000"}})
	colors := []color.Color{color.RGBA{0, 90, 181, 255}, color.RGBA{220, 50, 32, 255}, color.RGBA{26, 133, 0, 255}, color.RGBA{120, 60, 160, 255}}
	for i, name := range flag.Args() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		st, err := rpcpb.NewAdminClient(conn).JobStatus(ctx, &pb.JobStatusRequest{Name: name})
		cancel()
		if err != nil {
			log.Fatalf("job %s: %v", name, err)
		}
		var pts plotter.XYs
		if v, ok := st.Job.BaseMetrics["fed_perplexity"]; ok {
			pts = append(pts, plotter.XY{X: 0, Y: v})
		}
		for _, r := range st.Job.History {
			if v, ok := r.Metrics["fed_perplexity"]; ok {
				pts = append(pts, plotter.XY{X: float64(r.Number), Y: v})
			}
		}
		line, points, err := plotter.NewLinePoints(pts)
		if err != nil {
			log.Fatal(err)
		}
		line.Color, points.Color = colors[i%len(colors)], colors[i%len(colors)]
		p.Add(line, points)
		p.Legend.Add(name+" (federated)", line, points)
		if i < len(refs) && len(pts) > 0 {
			ref, err := plotter.NewLine(plotter.XYs{{X: 0, Y: refs[i]}, {X: pts[len(pts)-1].X, Y: refs[i]}})
			if err != nil {
				log.Fatal(err)
			}
			ref.Color, ref.Dashes = colors[i%len(colors)], []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(ref)
			p.Legend.Add(name+" centralised, same data", ref)
		}
		fmt.Fprintf(os.Stderr, "%s: %d points\n", name, len(pts))
	}
	p.Legend.Top = true
	if err := p.Save(7*vg.Inch, 4.5*vg.Inch, *out); err != nil {
		log.Fatal(err)
	}
}

// refList is the repeatable -ref flag.
type refList []float64

func (r *refList) String() string { return fmt.Sprint(*r) }

func (r *refList) Set(s string) error {
	var v float64
	if _, err := fmt.Sscan(s, &v); err != nil || !(v > 0) {
		return fmt.Errorf("-ref %q: want a positive perplexity", s)
	}
	*r = append(*r, v)
	return nil
}
