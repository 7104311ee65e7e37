// Command plot draws the regional-llm example's figure: each language
// job's federated held-out perplexity after every round, as the cluster
// committed it (fed_perplexity, from the workers' evaluations).
//
//	go run ./examples/regional-llm/plot -coordinator 127.0.0.1:17170 -o perplexity.png only-fr only-de only-es
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
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
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
		p.Legend.Add(name, line, points)
		fmt.Fprintf(os.Stderr, "%s: %d points\n", name, len(pts))
	}
	p.Legend.Top = true
	if err := p.Save(7*vg.Inch, 4.5*vg.Inch, *out); err != nil {
		log.Fatal(err)
	}
}
