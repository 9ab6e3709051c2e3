package supplychain

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	cdx "github.com/CycloneDX/cyclonedx-go"
)

// root is the repository, from this package's directory.
const root = "../.."

// skipShort: these tests build bulwark and the SBOM tool, a minute or two
// on a cold cache: the integration tier runs them.
func skipShort(t *testing.T) {
	if testing.Short() {
		t.Skip("integration tier: builds bulwark and cyclonedx-gomod; run make test")
	}
}

func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// directRequires returns the modules go.mod requires directly, with
// their versions.
func directRequires(t *testing.T) map[string]string {
	var mod struct {
		Require []struct {
			Path, Version string
			Indirect      bool
		}
	}
	if err := json.Unmarshal([]byte(run(t, root, nil, "go", "mod", "edit", "-json")), &mod); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range mod.Require {
		if !r.Indirect {
			out[r.Path] = r.Version
		}
	}
	return out
}

// binaryModules returns the modules compiled into the binary at path, as
// go version -m reads them, with their versions.
func binaryModules(t *testing.T, path string) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(run(t, root, nil, "go", "version", "-m", path)))
	for sc.Scan() {
		f := strings.Split(strings.TrimSpace(sc.Text()), "\t")
		if len(f) >= 3 && f[0] == "dep" {
			out[f[1]] = f[2]
		}
	}
	return out
}

// mustHave are direct requirements the binary cannot be without: an SBOM
// or a version listing missing them is broken, whatever else it says.
var mustHave = []string{
	"github.com/envoyproxy/go-control-plane", "github.com/spiffe/go-spiffe/v2", "google.golang.org/grpc",
	"google.golang.org/protobuf", "k8s.io/client-go", "github.com/hashicorp/go-memdb", "go.yaml.in/yaml/v3",
}

// checkSBOM reads the SBOM at path strictly as CycloneDX 1.6 JSON (no
// field the format does not define) and checks what the format requires
// and what it must say of bin: the main component is bulwark at version,
// every component is a Go module with a package URL naming it, the
// dependencies name only components, and every module go.mod requires
// directly that the binary holds is there, at the version it holds.
func checkSBOM(t *testing.T, path, bin, version string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var bom cdx.BOM
	if err := dec.Decode(&bom); err != nil {
		t.Fatalf("%s is not CycloneDX JSON: %v", path, err)
	}
	if bom.BOMFormat != cdx.BOMFormat || bom.SpecVersion != cdx.SpecVersion1_6 || bom.Version < 1 ||
		!regexp.MustCompile(`^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`).MatchString(bom.SerialNumber) {
		t.Errorf("header: format %q, spec %v, version %d, serial %q", bom.BOMFormat, bom.SpecVersion, bom.Version, bom.SerialNumber)
	}
	if bom.Metadata == nil || bom.Metadata.Component == nil {
		t.Fatal("no metadata.component: the SBOM does not say what it describes")
	}
	main := bom.Metadata.Component
	if main.Type != cdx.ComponentTypeApplication || main.Name != "github.com/bulwarkmesh/bulwark" || main.Version != version ||
		!strings.HasPrefix(main.PackageURL, "pkg:golang/github.com/bulwarkmesh/bulwark@"+version) || main.BOMRef == "" {
		t.Errorf("main component: %+v", main)
	}
	var tools []string
	if tc := bom.Metadata.Tools; tc != nil {
		for _, c := range derefOr(tc.Components) {
			tools = append(tools, c.Name)
		}
		for _, c := range derefOr(tc.Tools) { // the form before CycloneDX 1.5, which the tool still writes
			tools = append(tools, c.Name)
		}
	}
	if !slices.Contains(tools, "cyclonedx-gomod") {
		t.Errorf("metadata.tools names %q, not cyclonedx-gomod", tools)
	}
	if bom.Components == nil {
		t.Fatal("no components")
	}
	refs := map[string]bool{main.BOMRef: true}
	listed := map[string]string{}
	for _, c := range *bom.Components {
		if c.Type != cdx.ComponentTypeLibrary || c.Name == "" || c.Version == "" || refs[c.BOMRef] ||
			!strings.HasPrefix(c.PackageURL, "pkg:golang/"+c.Name+"@"+c.Version) {
			t.Errorf("component: %+v", c)
		}
		refs[c.BOMRef] = true
		listed[c.Name] = c.Version
	}
	if bom.Dependencies != nil {
		for _, d := range *bom.Dependencies {
			if !refs[d.Ref] {
				t.Errorf("a dependency of %q, which is no component", d.Ref)
			}
			if d.Dependencies != nil {
				for _, on := range *d.Dependencies {
					if !refs[on] {
						t.Errorf("%s depends on %q, which is no component", d.Ref, on)
					}
				}
			}
		}
	}
	held := binaryModules(t, bin)
	if len(listed) != len(held) {
		t.Errorf("the SBOM lists %d modules, the binary holds %d", len(listed), len(held))
	}
	direct := directRequires(t)
	for _, m := range mustHave {
		if _, ok := direct[m]; !ok {
			t.Errorf("%s is no longer a direct requirement: update mustHave", m)
		}
		if _, ok := held[m]; !ok {
			t.Errorf("the binary does not hold %s", m)
		}
	}
	for m, v := range direct {
		if hv, ok := held[m]; ok && (listed[m] != hv || hv != v) {
			t.Errorf("direct requirement %s %s: the binary holds %q, the SBOM lists %q", m, v, hv, listed[m])
		}
	}
}

func derefOr[T any](p *[]T) []T {
	if p == nil {
		return nil
	}
	return *p
}

// TestMakeSBOM: make sbom writes a CycloneDX SBOM of the binary it builds,
// naming bulwark's direct dependencies at the versions it was built with;
// that binary's bulwark version prints the same modules.
func TestMakeSBOM(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	bin, sbom := filepath.Join(dir, "bulwark"), filepath.Join(dir, "bulwark.cdx.json")
	const version = "v0.0.0-sbom-test"
	run(t, root, nil, "make", "--no-print-directory", "sbom", "BIN="+bin, "SBOM="+sbom, "VERSION="+version)
	checkSBOM(t, sbom, bin, version)

	out := run(t, root, nil, bin, "version")
	if !strings.HasPrefix(out, "bulwark "+version+"\n") {
		t.Errorf("bulwark version begins %q", strings.SplitN(out, "\n", 2)[0])
	}
	for m, v := range binaryModules(t, bin) {
		if !regexp.MustCompile(`(?m)^dep\t` + regexp.QuoteMeta(m) + `\t` + regexp.QuoteMeta(v) + `\t`).MatchString(out) {
			t.Errorf("bulwark version does not print %s %s", m, v)
		}
	}
}

// TestKindImageRecordsItsSBOM: the build stage of examples/kind/Dockerfile
// writes the binary's SBOM beside it, and the image copies it to the
// documented path. There is no container engine here: the test runs the
// build stage's commands as the Dockerfile has them, in the source tree,
// with /out in a temporary directory.
func TestKindImageRecordsItsSBOM(t *testing.T) {
	skipShort(t)
	data, err := os.ReadFile(filepath.Join(root, "examples/kind/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	var stage int
	var build []string
	copied := false
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "FROM "):
			stage++
		case stage == 1 && strings.HasPrefix(line, "RUN "):
			build = append(build, strings.TrimPrefix(line, "RUN "))
		case stage == 2 && regexp.MustCompile(`^COPY --from=build /out/bulwark\.cdx\.json /usr/share/doc/bulwark/bulwark\.cdx\.json$`).MatchString(line):
			copied = true
		}
	}
	if !copied {
		t.Error("the image does not copy /out/bulwark.cdx.json to /usr/share/doc/bulwark/bulwark.cdx.json")
	}
	script := strings.Join(build, " && ")
	if !strings.Contains(script, "cyclonedx-gomod bin") {
		t.Fatalf("the build stage writes no SBOM: %s", script)
	}
	out := t.TempDir()
	script = strings.ReplaceAll(script, "/out/", out+"/")
	run(t, root, []string{"VERSION=dev"}, "sh", "-c", script)
	checkSBOM(t, filepath.Join(out, "bulwark.cdx.json"), filepath.Join(out, "bulwark"), "dev")
}
