package pki

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func issue(t *testing.T, ca, role, name string, notBefore time.Time) *Node {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := Issue(ca, dir, role, name, 24*time.Hour, notBefore); err != nil {
		t.Fatal(err)
	}
	n, err := Load(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// handshake runs a TLS handshake between a coordinator server and a
// client over loopback TCP.
func handshake(server, client *Node) (Identity, error) {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server.ServerTLS())
	if err != nil {
		return Identity{}, err
	}
	defer ln.Close()
	type result struct {
		id  Identity
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		id, err := ConnIdentity(tc)
		done <- result{id, err}
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), client.ClientTLS())
	if err == nil {
		// TLS 1.3 reports a refused client certificate on the first read.
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		c.Read(make([]byte, 1))
		c.Close()
	}
	r := <-done
	if err != nil {
		return Identity{}, err
	}
	return r.id, r.err
}

func TestMutualTLS(t *testing.T) {
	ca := t.TempDir()
	if err := InitCA(ca, "test-ca", time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := InitCA(ca, "again", time.Hour); err == nil {
		t.Error("a second CA over the first was accepted")
	}
	if st, _ := os.Stat(filepath.Join(ca, CAKeyFile)); st.Mode().Perm() != 0o600 {
		t.Errorf("CA key mode %v, want 0600", st.Mode().Perm())
	}
	coord := issue(t, ca, RoleCoordinator, "c1", time.Time{})
	w := issue(t, ca, RoleWorker, "w1", time.Time{})
	if coord.ID != (Identity{RoleCoordinator, "c1"}) || w.ID != (Identity{RoleWorker, "w1"}) {
		t.Fatalf("identities %+v %+v", coord.ID, w.ID)
	}
	if id, err := handshake(coord, w); err != nil || id != w.ID {
		t.Fatalf("worker to coordinator: %v, %+v", err, id)
	}

	other := t.TempDir()
	InitCA(other, "other-ca", time.Hour)
	stranger := issue(t, other, RoleWorker, "w1", time.Time{})
	if _, err := handshake(coord, stranger); err == nil {
		t.Error("a certificate of another CA was accepted")
	}
	expired := issue(t, ca, RoleWorker, "old", time.Now().Add(-48*time.Hour))
	if _, err := handshake(coord, expired); err == nil {
		t.Error("an expired certificate was accepted")
	}
	// A worker certificate cannot serve as a coordinator: it lacks the
	// coordinator server name (and server auth usage).
	if _, err := handshake(w, coord); err == nil {
		t.Error("a worker certificate passed for a coordinator")
	}
	if err := Issue(ca, t.TempDir(), "root", "x", time.Hour, time.Time{}); err == nil {
		t.Error("unknown role accepted")
	}
}
