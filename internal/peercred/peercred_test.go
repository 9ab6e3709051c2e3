package peercred

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestListenerAcceptsOwnUIDAndRefusesOthers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	base, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	refused := make(chan Cred, 1)
	for _, tc := range []struct {
		name    string
		allowed []uint32
		want    bool
	}{
		{"own uid", Allowed(nil), true},
		{"another uid only", []uint32{uint32(os.Getuid()) + 1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := Listener{Listener: base, Allowed: tc.allowed, Refused: func(c Cred, err error) {
				if err != nil {
					t.Errorf("refused: %v", err)
				}
				refused <- c
			}}
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := l.Accept()
				if err == nil {
					accepted <- c
				}
			}()
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			select {
			case got := <-accepted:
				if !tc.want {
					t.Fatal("accepted a peer whose uid is not allowed")
				}
				if cred := got.(*Conn).Cred; cred.UID != uint32(os.Getuid()) || cred.PID != int32(os.Getpid()) {
					t.Errorf("cred = %+v, want uid %d pid %d", cred, os.Getuid(), os.Getpid())
				}
				got.Close()
			case cred := <-refused:
				if tc.want {
					t.Fatal("refused a peer whose uid is allowed")
				}
				if cred.UID != uint32(os.Getuid()) {
					t.Errorf("refused cred uid = %d, want %d", cred.UID, os.Getuid())
				}
				// Unblock the Accept loop for the next case.
				base.Close()
			}
		})
	}
}

func TestDescribe(t *testing.T) {
	if got := Describe(0); got != "uid 0 (root)" {
		t.Errorf("Describe(0) = %q", got)
	}
}
