package main

import (
	"strings"
	"testing"
)

// TestEveryCommandAnswersHelp: every command and subcommand prints its
// usage to stdout and exits 0 when asked with -h or --help, and still
// exits 2, saying so on stderr, on a flag it does not know.
func TestEveryCommandAnswersHelp(t *testing.T) {
	var cmds [][]string
	for _, c := range commands() {
		cmds = append(cmds, []string{c.name})
	}
	cmds = append(cmds,
		[]string{"ca", "init"}, []string{"ca", "issue"}, []string{"ca", "status"}, []string{"ca", "prepare"},
		[]string{"ca", "activate"}, []string{"ca", "retire"}, []string{"ca", "remove"}, []string{"ca", "rotate"},
		[]string{"ca", "revoke"}, []string{"ca", "unrevoke"}, []string{"ca", "crl"}, []string{"ca", "crl", "import"},
		[]string{"ca", "crl", "clear"},
		[]string{"token", "create"},
		[]string{"policy", "check"}, []string{"policy", "explain"}, []string{"policy", "matrix"},
		[]string{"mtls", "exceptions"},
	)
	for _, cmd := range cmds {
		name := strings.Join(cmd, " ")
		t.Run(name, func(t *testing.T) {
			for _, help := range []string{"-h", "--help"} {
				code, out, errOut := runCLI(t, append(cmd, help)...)
				if code != 0 || errOut != "" {
					t.Errorf("%s %s: exit %d, stderr %q; want 0 and nothing on stderr", name, help, code, errOut)
				}
				if want := "Usage: bulwark " + name; !strings.HasPrefix(out, want) {
					t.Errorf("%s %s: stdout %q does not start with %q", name, help, out, want)
				}
			}
			code, out, errOut := runCLI(t, append(cmd, "--no-such-flag")...)
			if code != 2 || out != "" || errOut == "" {
				t.Errorf("%s --no-such-flag: exit %d, stdout %q, stderr %q; want 2 and the problem on stderr only", name, code, out, errOut)
			}
		})
	}
}

func TestTopLevelHelp(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		onStdout bool
	}{
		{"no command", nil, 2, false},
		{"-h", []string{"-h"}, 0, true},
		{"--help", []string{"--help"}, 0, true},
		{"help", []string{"help"}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, tc.args...)
			got, other := errOut, out
			if tc.onStdout {
				got, other = out, errOut
			}
			if code != tc.code || !strings.Contains(got, "Usage: bulwark <command>") || other != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d and the usage on one stream only", code, out, errOut, tc.code)
			}
		})
	}
}
