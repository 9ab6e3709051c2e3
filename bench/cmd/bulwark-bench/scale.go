package main

import (
	"fmt"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/bulwarkmesh/bulwark/bench/gen"
)

// scalePoint is one size of the scale sweep.
type scalePoint struct {
	proxies, services int
}

// Every sidecar of the generated mesh gets every service, so a point
// costs proxies x services resources per full change: about 2 KB each.
// Points past these budgets are recorded as not run, with the reason.
const (
	bulwarkBudget  = 10_000_000 // proxy-services: ~20 GB sent per full change
	baselineBudget = 1_000_000  // the baseline needs ~2 MB of RSS per proxy-service thousand, and ~20 s per change at this size
)

// scale measures convergence and memory against the number of proxies
// and services, and draws both.
func (h *harness) scale() ([]Figure, error) {
	points := []scalePoint{{100, 1000}, {1000, 1000}, {5000, 1000}, {100, 10000}, {1000, 10000}, {5000, 10000}}
	type row struct {
		point   scalePoint
		results map[string]*result
	}
	var rows []row
	var figs []Figure
	for _, pt := range points {
		spec := gen.Spec{Services: pt.services, Endpoints: 5, Proxies: pt.proxies}
		fmt.Printf("\n== scale: %d proxies x %d services\n", pt.proxies, pt.services)
		r := row{point: pt, results: map[string]*result{}}
		for _, impl := range []string{"bulwark", "baseline"} {
			budget := bulwarkBudget
			if impl == "baseline" {
				if !h.o.baseline {
					continue
				}
				budget = baselineBudget
			}
			name := fmt.Sprintf("scale_%s_%dx%d", impl, pt.proxies, pt.services)
			if pt.proxies*pt.services > budget {
				fmt.Printf("%s: not run (%d proxy-services is over this harness's budget of %d for it)\n", impl, pt.proxies*pt.services, budget)
				figs = append(figs, Figure{Name: name, Unit: "s", Note: fmt.Sprintf("not run: %d proxies x %d services is over the budget of %d proxy-services for %s on this machine", pt.proxies, pt.services, budget, impl)})
				continue
			}
			res, err := h.measure(impl, spec, 1, h.o.chartReps)
			if err != nil {
				fmt.Printf("%s: failed: %v\n", impl, err)
				figs = append(figs, Figure{Name: name, Unit: "s", Note: "failed: " + err.Error()})
				continue
			}
			report(impl, res)
			if res.Failed != "" {
				figs = append(figs, Figure{Name: name, Unit: "s", Note: "failed: " + res.Failed})
				continue
			}
			r.results[impl] = res
			label := fmt.Sprintf("%s, %d proxies x %d services x 5 endpoints", impl, pt.proxies, pt.services)
			figs = append(figs,
				figure(name+"_full_change", "s", label+": full change until every proxy ACKed", res.Full, nil, false),
				figure(name+"_storm", "s", label+": connect storm until all in sync", res.Storm, nil, false),
				figure(name+"_rss_per_proxy", "KiB", label+": RSS per connected proxy", []float64{res.RSSPerProxy / 1024}, nil, false),
				figure(name+"_rss", "MiB", label+": RSS after the run", []float64{float64(res.RSS) / (1 << 20)}, nil, false))
		}
		rows = append(rows, r)
	}
	// Charts: convergence and memory against proxies, a line per
	// implementation and service count.
	for _, chart := range []struct {
		file, title, y string
		value          func(*result) float64
	}{
		{"convergence.png", "Full change: all proxies ACKed", "seconds (median)", func(r *result) float64 { m, _, _ := summarize(r.Full); return m }},
		{"memory.png", "Server RSS after the run", "MiB", func(r *result) float64 { return float64(r.RSS) / (1 << 20) }},
	} {
		p := plot.New()
		p.Title.Text = chart.title
		p.X.Label.Text = "connected proxies"
		p.Y.Label.Text = chart.y
		p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
		p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
		p.Legend.Top, p.Legend.Left = true, true
		var lines []any
		for _, impl := range []string{"bulwark", "baseline"} {
			for _, services := range []int{1000, 10000} {
				var xy plotter.XYs
				for _, r := range rows {
					if res := r.results[impl]; res != nil && r.point.services == services {
						xy = append(xy, plotter.XY{X: float64(r.point.proxies), Y: chart.value(res)})
					}
				}
				if len(xy) > 0 {
					lines = append(lines, fmt.Sprintf("%s, %d services", impl, services), xy)
				}
			}
		}
		if err := plotutil.AddLinePoints(p, lines...); err != nil {
			return nil, err
		}
		path := filepath.Join(h.o.out, chart.file)
		if err := p.Save(6*vg.Inch, 4*vg.Inch, path); err != nil {
			return nil, err
		}
		fmt.Printf("wrote %s\n", path)
	}
	return figs, nil
}
