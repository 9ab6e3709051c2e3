package main

import (
	"encoding/json"
	"fmt"
	"os"
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
	var figs []Figure
	for _, pt := range points {
		spec := gen.Spec{Services: pt.services, Endpoints: 5, Proxies: pt.proxies}
		fmt.Printf("\n== scale: %d proxies x %d services\n", pt.proxies, pt.services)
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
			label := fmt.Sprintf("%s, %d proxies x %d services x 5 endpoints", impl, pt.proxies, pt.services)
			figs = append(figs,
				figure(name+"_full_change", "s", label+": full change until every proxy ACKed", res.Full, nil, false),
				figure(name+"_storm", "s", label+": connect storm until all in sync", res.Storm, nil, false),
				figure(name+"_rss_per_proxy", "KiB", label+": RSS per connected proxy", []float64{res.RSSPerProxy / 1024}, nil, false),
				figure(name+"_rss", "MiB", label+": RSS after the run", []float64{float64(res.RSS) / (1 << 20)}, nil, false))
		}
	}
	if err := h.charts(figs); err != nil {
		return nil, err
	}
	return figs, nil
}

// charts draws convergence and memory against proxies, a line per
// implementation and service count, from the scale sweep's figures
// (so `-replot` can draw them again from a results.json).
func (h *harness) charts(figs []Figure) error {
	byName := map[string]Figure{}
	for _, f := range figs {
		byName[f.Name] = f
	}
	for _, chart := range []struct {
		file, title, y, suffix string
	}{
		{"convergence.png", "Full change: until every proxy ACKed", "seconds (median)", "_full_change"},
		{"memory.png", "Server RSS after the run", "MiB", "_rss"},
	} {
		p := plot.New()
		p.Title.Text = chart.title
		p.X.Label.Text = "connected proxies"
		p.Y.Label.Text = chart.y
		p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
		p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
		// The lines rise to the right: the legend goes below them.
		p.Legend.Top, p.Legend.Left = false, false
		var lines []any
		for _, impl := range []string{"bulwark", "baseline"} {
			for _, services := range []int{1000, 10000} {
				var xy plotter.XYs
				for _, proxies := range []int{100, 1000, 5000} {
					f, ok := byName[fmt.Sprintf("scale_%s_%dx%d%s", impl, proxies, services, chart.suffix)]
					if ok && f.Median > 0 {
						xy = append(xy, plotter.XY{X: float64(proxies), Y: f.Median})
					}
				}
				if len(xy) > 0 {
					lines = append(lines, fmt.Sprintf("%s, %d services", impl, services), xy)
				}
			}
		}
		if err := plotutil.AddLinePoints(p, lines...); err != nil {
			return err
		}
		path := filepath.Join(h.o.out, chart.file)
		if err := p.Save(6*vg.Inch, 4*vg.Inch, path); err != nil {
			return err
		}
		fmt.Printf("wrote %s\n", path)
	}
	return nil
}

// replot draws the charts again from a results.json.
func (h *harness) replot(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var r struct {
		Figures []Figure `json:"figures"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return h.charts(r.Figures)
}
