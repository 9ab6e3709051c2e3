package meshfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// labelsMesh is a valid mesh whose one workload has n labels: YAML's own
// decoder compares every pair of keys of a mapping.
func labelsMesh(n int) string {
	var b strings.Builder
	b.WriteString(header + "  services:\n    - {name: api, namespace: demo, ports: [{name: http, port: 8080, protocol: http}]}\n")
	b.WriteString("  workloads:\n    - name: api-1\n      namespace: demo\n      address: 10.0.0.1\n      services: [api]\n      labels:\n")
	for i := range n {
		fmt.Fprintf(&b, "        label-%d: value-%d\n", i, i)
	}
	return b.String()
}

// selectorsMesh is a valid mesh of n workloads, each picked by an
// MTLSPolicy of its own: the overlap check compared every policy with
// every workload.
func selectorsMesh(n int) string {
	var b strings.Builder
	b.WriteString(header + "  services: []\n  workloads:\n")
	for i := range n {
		fmt.Fprintf(&b, "    - {name: w-%d, namespace: demo, address: 10.2.%d.%d, labels: {app: a-%d}}\n", i, i/256, i%256, i)
	}
	for i := range n {
		fmt.Fprintf(&b, "---\napiVersion: bulwark.dev/v1alpha1\nkind: MTLSPolicy\nmetadata: {name: p-%d, namespace: demo}\nspec:\n  selector: {matchLabels: {app: a-%d}}\n  mode: STRICT\n", i, i)
	}
	return b.String()
}

// bigMesh is a valid mesh of services and workloads of about size bytes.
func bigMesh(size int) string {
	var svcs, wls strings.Builder
	for i := 0; svcs.Len()+wls.Len() < size; i++ {
		fmt.Fprintf(&svcs, "    - name: svc-%d\n      namespace: bench\n      address: 10.96.%d.%d\n      ports:\n        - {name: http, port: 8080, protocol: http}\n", i, i/256%256, i%256)
		fmt.Fprintf(&wls, "    - name: w-%d\n      namespace: bench\n      serviceAccount: svc-%d\n      labels: {app: svc-%d}\n      address: 10.%d.%d.%d\n      capture: transparent\n      services: [svc-%d]\n",
			i, i, i, 2+i/65536, i/256%256, i%256, i)
	}
	return header + "  services:\n" + svcs.String() + "  workloads:\n" + wls.String()
}

// skipUnderRace skips a test of sizes and times under the race detector,
// which slows loading tenfold and has nothing to find there.
func skipUnderRace(t *testing.T) {
	if raceDetector {
		t.Skip("a test of sizes and times: make test runs it without the race detector")
	}
}

// loadTime returns the least CPU time (the process's, user and system)
// that one of runs loads of the file at path took, and the bytes the
// first one allocated. CPU time, unlike the time on the clock, does not
// count what other processes on the machine take from it.
func loadTime(t *testing.T, path string, runs int) (time.Duration, uint64) {
	t.Helper()
	best := time.Duration(1<<63 - 1)
	var alloc uint64
	for r := range runs {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := cpuTime(t)
		if _, err := Load(context.Background(), []string{path}); err != nil {
			t.Fatal(err)
		}
		best = min(best, cpuTime(t)-start)
		runtime.ReadMemStats(&after)
		if r == 0 {
			alloc = after.TotalAlloc - before.TotalAlloc
		}
	}
	return best, alloc
}

func cpuTime(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestLoadGrowsLinearly: loading a file ten times the size takes at most
// twenty times the CPU time and memory, measured against the smaller file
// in the same run, so the test checks the growth and not the machine.
// Before, 40,000 labels took 6 s (80,000: 25 s) and 5,000 MTLSPolicies
// with their workloads 4 s (16,000: 45 s), a hundred times what a tenth
// of them took.
func TestLoadGrowsLinearly(t *testing.T) {
	skipUnderRace(t)
	for _, tt := range []struct {
		name string
		mesh func(int) string
		n    int
	}{
		{"labels of one workload", labelsMesh, 4000},
		{"a policy per workload", selectorsMesh, 500},
	} {
		t.Run(tt.name, func(t *testing.T) {
			small, big := writeFile(t, tt.mesh(tt.n)), writeFile(t, tt.mesh(10*tt.n))
			smallTime, smallAlloc := loadTime(t, small, 3)
			bigTime, bigAlloc := loadTime(t, big, 2)
			t.Logf("%d: %v, %d KiB; %d: %v, %d KiB", tt.n, smallTime, smallAlloc>>10, 10*tt.n, bigTime, bigAlloc>>10)
			if bigTime > 30*smallTime {
				t.Errorf("10 times the input took %.0f times the CPU time (%v against %v): worse than linear", float64(bigTime)/float64(smallTime), bigTime, smallTime)
			}
			if bigAlloc > 30*smallAlloc {
				t.Errorf("10 times the input allocated %.0f times as much (%d KiB against %d KiB): worse than linear", float64(bigAlloc)/float64(smallAlloc), bigAlloc>>10, smallAlloc>>10)
			}
		})
	}
}

// TestLoadRefusesFilesOverTheLimits: a file over MaxFileSize, or files
// together over MaxTotalSize, are refused with the file and the limit,
// before they are parsed.
func TestLoadRefusesFilesOverTheLimits(t *testing.T) {
	skipUnderRace(t)
	comment := strings.Repeat("#"+strings.Repeat("x", 1023)+"\n", 1024) // 1 MiB of YAML comments
	t.Run("one file", func(t *testing.T) {
		big := writeFile(t, header+validSpec+strings.Repeat(comment, MaxFileSize>>20)) // just over
		start := time.Now()
		_, err := Load(context.Background(), []string{big})
		want := big + ": the file is larger than 8 MiB, the limit for one mesh file; split it into several (together they may hold 16 MiB)"
		if err == nil || err.Error() != want {
			t.Fatalf("got %v\nwant %s", err, want)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("refusing took %v: the file was read", d)
		}
	})
	t.Run("all files", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(header+validSpec), 0o644); err != nil {
			t.Fatal(err)
		}
		part := strings.Repeat(comment, 6) // 6 MiB: three are over 16 MiB
		for _, name := range []string{"b.yaml", "c.yaml", "d.yaml", "e.yaml"} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(part), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		_, err := Load(context.Background(), []string{dir})
		want := filepath.Join(dir, "d.yaml") + ": with this file the mesh files hold more than 16 MiB, the limit for all of them together"
		if err == nil || err.Error() != want {
			t.Fatalf("got %v\nwant %s", err, want)
		}
	})
	t.Run("the largest file that is not refused", func(t *testing.T) {
		body := header + validSpec
		pad := MaxFileSize - len(body)
		body += strings.Repeat(comment[:1024], pad/1024) + strings.Repeat("\n", pad%1024)
		if len(body) != MaxFileSize {
			t.Fatalf("the test file has %d bytes, want %d", len(body), MaxFileSize)
		}
		if _, err := Load(context.Background(), []string{writeFile(t, body)}); err != nil {
			t.Fatal(err)
		}
	})
}

// TestLoadStopsWhenCancelled: a load ends soon after its context, wherever
// it is (reading, parsing, checking); one that starts cancelled reads
// nothing.
func TestLoadStopsWhenCancelled(t *testing.T) {
	size := 3 << 20
	if raceDetector {
		size /= 10
	}
	path := writeFile(t, bigMesh(size))
	start := time.Now()
	if _, err := Load(context.Background(), []string{path}); err != nil {
		t.Fatal(err)
	}
	full := time.Since(start)
	for _, after := range []time.Duration{0, full / 10, full / 2} {
		ctx, cancel := context.WithCancel(context.Background())
		if after == 0 {
			cancel()
		} else {
			time.AfterFunc(after, cancel)
		}
		start := time.Now()
		_, err := Load(ctx, []string{path})
		took := time.Since(start)
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled after %v: got %v, want context.Canceled", after, err)
		}
		if late := took - after; late > 50*time.Millisecond+full/10 {
			t.Errorf("cancelled after %v of a load that takes %v: returned %v after that", after, full, late)
		}
	}
}

// TestAliasesCannotExpandAFile: YAML aliases let a few kilobytes name a
// node billions of times; the mesh files may stand for at most one node
// per byte (plus a margin), together. A 19 KiB file took 41 s and 1.1 GB
// to be refused.
func TestAliasesCannotExpandAFile(t *testing.T) {
	var b strings.Builder
	b.WriteString(header + "  services: []\n  workloads: []\n---\napiVersion: bulwark.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p, namespace: demo}\n")
	b.WriteString("spec:\n  selector: {service: a}\n  action: DENY\n  rules:\n    - &r\n      from:\n        - &f\n          serviceAccounts: &s [&a a" + strings.Repeat(", *a", 39) + "]\n")
	b.WriteString("          namespaces: *s\n          spiffeIDs: *s\n" + strings.Repeat("        - *f\n", 39) + strings.Repeat("    - *r\n", 200))
	path := writeFile(t, b.String())
	start := time.Now()
	_, err := Load(context.Background(), []string{path})
	want := fmt.Sprintf(": its aliases expand the mesh files past %d nodes (one per byte, plus 10000); write the repeated parts out", b.Len()+aliasAllowance)
	if err == nil || !strings.HasPrefix(err.Error(), path+":") || !strings.HasSuffix(err.Error(), want) {
		t.Fatalf("got %v\nwant %s:<line>%s", err, path, want)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("refusing took %v", d)
	}

	// The allowance is for all the files together: many small files, each
	// within it on its own, are refused too.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(header+validSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	small := "apiVersion: bulwark.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p%d, namespace: demo}\n" +
		"spec:\n  selector: {service: api}\n  action: DENY\n  rules:\n    - &r {from: [{serviceAccounts: [&a a" + strings.Repeat(", *a", 49) + "]}]}\n" +
		strings.Repeat("    - *r\n", 99)
	for i := range 50 { // each about 5,000 nodes from 1 KiB
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("p%02d.yaml", i)), []byte(fmt.Sprintf(small, i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Load(context.Background(), []string{dir}); err == nil || !strings.Contains(err.Error(), "its aliases expand the mesh files past") {
		t.Errorf("50 files of 5,000 nodes each from aliases: got %v", err)
	}

	// Aliases within the allowance are fine.
	ok := header + strings.Replace(validSpec, "      services: [api]\n", "      services: &svcs [api]\n", 1) +
		"    - {name: api-2, namespace: demo, address: 10.0.0.3, services: *svcs}\n"
	st, err := Load(context.Background(), []string{writeFile(t, ok)})
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Workloads[2].Services; len(got) != 1 || got[0] != "api" {
		t.Errorf("the aliased services are %v, want [api]", got)
	}
}

// TestLoadLimitsTheProblems: every problem of a file is reported, up to
// MaxProblems, and then how many more there are; each is printed or
// logged on a line of its own. Values from the file are clipped.
func TestLoadLimitsTheProblems(t *testing.T) {
	var b strings.Builder
	b.WriteString(header + "  services: []\n  workloads:\n")
	for i := range MaxProblems + 500 {
		fmt.Fprintf(&b, "    - {name: w-%d, namespace: demo, adress: 10.0.0.1}\n", i)
	}
	_, err := Load(context.Background(), []string{writeFile(t, b.String())})
	problems := Errors(err)
	if len(problems) != MaxProblems+1 {
		t.Fatalf("got %d problems, want %d", len(problems), MaxProblems+1)
	}
	if got := problems[MaxProblems].Error(); !regexp.MustCompile(`^\d+ more problems not shown; fix these first$`).MatchString(got) {
		t.Errorf("the last problem is %q, want how many more there are", got)
	}

	long := strings.Repeat("x", 100000)
	for _, body := range []string{
		header + validSpec + "  ? " + long + "\n  : 1\n", // an explicit key may be that long
		header + strings.Replace(validSpec, "port: 8080, protocol", "port: "+long+", protocol", 1),
		header + validSpec + "  ? \"\\e]0;pwned\\a\\e[2J" + long + "\"\n  : 1\n", // terminal escapes, escaped
	} {
		_, err = Load(context.Background(), []string{writeFile(t, body)})
		if err == nil || len(err.Error()) > 400 || !regexp.MustCompile(`\(\+\d+ bytes cut\)`).MatchString(err.Error()) {
			t.Errorf("a value of 100,000 characters is reported as %q", err)
		}
		if err != nil && strings.ContainsAny(err.Error(), "\x1b\x07") {
			t.Errorf("a raw escape in %q", err)
		}
	}
}
