// Package pki is fedtune's small certificate authority: it creates a
// cluster CA and issues certificates that carry a node's role and name, and
// builds the mutual-TLS configurations every gRPC service and the Raft
// transport use. A node's identity is read from its verified certificate,
// never from a request body.
//
// A certificate names its node in the Subject common name and its role in
// the organizational unit. Every coordinator certificate also carries the
// DNS name CoordinatorServerName, which clients verify (as Consul verifies
// server.<dc>.consul), so that coordinators can be reached at any address
// and a worker certificate can never pass for a coordinator's.
package pki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Roles a certificate can carry.
const (
	RoleCoordinator = "coordinator" // serves and calls every service, Raft included
	RoleWorker      = "worker"      // polls tasks, fetches models, submits its own updates
	RoleAdmin       = "admin"       // the CLI: submits and inspects jobs
)

// CoordinatorServerName is the DNS name every coordinator certificate
// holds and every client verifies.
const CoordinatorServerName = "coordinator.fedtune"

// Files in a certificate directory.
const (
	CAFile    = "ca.pem"
	CAKeyFile = "ca-key.pem"
)

// ErrNoIdentity is returned for a connection without a verified client
// certificate of a known role.
var ErrNoIdentity = errors.New("no verified fedtune certificate")

// InitCA creates a CA (ca.pem, ca-key.pem) in dir, refusing to overwrite one.
func InitCA(dir, name string, validity time.Duration) error {
	if _, err := os.Stat(filepath.Join(dir, CAFile)); err == nil {
		return fmt.Errorf("pki: %s already holds a CA", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"fedtune"}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	return writePair(dir, CAFile, CAKeyFile, der, key)
}

// Issue signs a certificate for a node of role named name with the CA in
// caDir, writing <name>.pem and <name>-key.pem (0600) to outDir.
// notBefore lets tests issue certificates that are already expired.
func Issue(caDir, outDir, role, name string, validity time.Duration, notBefore time.Time) error {
	if role != RoleCoordinator && role != RoleWorker && role != RoleAdmin {
		return fmt.Errorf("pki: unknown role %q (want coordinator, worker or admin)", role)
	}
	if name == "" {
		return errors.New("pki: a certificate needs a name")
	}
	caCert, caKey, err := loadCA(caDir)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-time.Minute)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name, OrganizationalUnit: []string{role}, Organization: []string{"fedtune"}},
		NotBefore:    notBefore,
		NotAfter:     notBefore.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if role == RoleCoordinator {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		tmpl.DNSNames = []string{CoordinatorServerName}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return err
	}
	if err := writePair(outDir, name+".pem", name+"-key.pem", der, key); err != nil {
		return err
	}
	// Each node's directory holds the CA certificate it verifies peers with.
	if outDir != caDir {
		b, err := os.ReadFile(filepath.Join(caDir, CAFile))
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(outDir, CAFile), b, 0o644)
	}
	return nil
}

// Identity is a node as its certificate names it.
type Identity struct {
	Role, Name string
}

// Node holds what a node needs for mutual TLS: its certificate and the CA
// pool it verifies peers against.
type Node struct {
	Cert tls.Certificate
	Pool *x509.CertPool
	ID   Identity
}

// Load reads dir/ca.pem and dir/<name>.pem + key.
func Load(dir, name string) (*Node, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem"))
	if err != nil {
		return nil, fmt.Errorf("pki: certificate %q in %s: %w (create one with fedtune certs issue)", name, dir, err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("pki: %s holds no certificate", filepath.Join(dir, CAFile))
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, err
	}
	id, err := identityOf(leaf)
	if err != nil {
		return nil, err
	}
	cert.Leaf = leaf
	return &Node{Cert: cert, Pool: pool, ID: id}, nil
}

// ServerTLS is the configuration of a coordinator's listeners: TLS 1.3,
// client certificates required and verified against the CA.
func (n *Node) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{n.Cert},
		ClientCAs:    n.Pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
}

// ClientTLS is the configuration for dialling a coordinator: its
// certificate must be signed by the CA and name CoordinatorServerName.
func (n *Node) ClientTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{n.Cert},
		RootCAs:      n.Pool,
		ServerName:   CoordinatorServerName,
	}
}

// PeerIdentity returns the verified identity of a gRPC call's peer.
func PeerIdentity(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, ErrNoIdentity
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Identity{}, ErrNoIdentity
	}
	return identityOf(info.State.VerifiedChains[0][0])
}

// ConnIdentity returns the verified identity of a TLS connection's peer
// (the Raft transport's).
func ConnIdentity(c *tls.Conn) (Identity, error) {
	st := c.ConnectionState()
	if len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return Identity{}, ErrNoIdentity
	}
	return identityOf(st.VerifiedChains[0][0])
}

func identityOf(c *x509.Certificate) (Identity, error) {
	if len(c.Subject.OrganizationalUnit) != 1 || c.Subject.CommonName == "" {
		return Identity{}, fmt.Errorf("%w: certificate %q carries no single role", ErrNoIdentity, c.Subject.CommonName)
	}
	id := Identity{Role: c.Subject.OrganizationalUnit[0], Name: c.Subject.CommonName}
	switch id.Role {
	case RoleCoordinator, RoleWorker, RoleAdmin:
		return id, nil
	}
	return Identity{}, fmt.Errorf("%w: unknown role %q", ErrNoIdentity, id.Role)
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, nil, fmt.Errorf("pki: no CA in %s (fedtune certs init): %w", dir, err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("pki: no CA key in %s: %w", dir, err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, fmt.Errorf("pki: %s: not PEM", dir)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func writePair(dir, certName, keyName string, der []byte, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, keyName), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, certName), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// VerifyCertificate checks a certificate (DER) against the node's CA pool
// and returns the identity it names and its public key: how a worker
// checks another worker's signed message that reached it through the
// coordinators.
func (n *Node) VerifyCertificate(der []byte) (Identity, crypto.PublicKey, error) {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return Identity{}, nil, fmt.Errorf("pki: certificate: %w", err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: n.Pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return Identity{}, nil, fmt.Errorf("pki: certificate of %q: %w", c.Subject.CommonName, err)
	}
	id, err := identityOf(c)
	if err != nil {
		return Identity{}, nil, err
	}
	return id, c.PublicKey, nil
}
