package secagg

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"

	pb "github.com/fedtune/fedtune/protocol"
)

// context binds derived keys and sealed shares to one job, round and
// attempt: a share or mask of another round does not open or cancel here.
func (p Params) context(label string) string {
	var b [8]byte
	binary.BigEndian.PutUint32(b[:4], p.Round)
	binary.BigEndian.PutUint32(b[4:], p.Attempt)
	return "fedtune secagg " + label + "\x00" + p.Job + "\x00" + string(b[:])
}

// agree derives a 32-byte key from an X25519 exchange for one purpose.
func agree(p Params, label string, priv *ecdh.PrivateKey, peer []byte) ([]byte, error) {
	pub, err := ecdh.X25519().NewPublicKey(peer)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	shared, err := priv.ECDH(pub)
	if err != nil {
		return nil, fmt.Errorf("key agreement: %w", err)
	}
	return hkdf.Key(sha256.New, shared, nil, p.context(label), 32)
}

// seal encrypts a share for one neighbour (AES-256-GCM; the sender, the
// receiver, the job, round and attempt are authenticated data).
func seal(p Params, key []byte, from, to string, plain []byte, rng io.Reader) ([]byte, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := io.ReadFull(rng, nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, plain, []byte(p.context("share")+from+"\x00"+to)), nil
}

// open decrypts a share sealed by seal.
func open(p Params, key []byte, from, to string, box []byte) ([]byte, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	if len(box) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("share from %s: %d bytes, too short", from, len(box))
	}
	plain, err := aead.Open(nil, box[:aead.NonceSize()], box[aead.NonceSize():], []byte(p.context("share")+from+"\x00"+to))
	if err != nil {
		return nil, fmt.Errorf("share from %s does not open (tampered, or for another round): %w", from, err)
	}
	return plain, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// commit is the commitment to a worker's own seed.
func commit(p Params, worker string, seed []byte) []byte {
	h := sha256.New()
	h.Write([]byte(p.context("seed") + worker + "\x00"))
	h.Write(seed)
	return h.Sum(nil)
}

// addMask adds (or, negate, subtracts) the PRG stream of seed to v (mod
// 2^32): AES-256 in counter mode keyed by the seed from a zero IV, read as
// little-endian 32-bit words (AES-NI makes it 1.7× ChaCha8 here).
func addMask(v []uint32, seed []byte, negate bool) {
	block, err := aes.NewCipher(seed[:secretLen])
	if err != nil {
		panic(fmt.Sprintf("secagg: mask seed of %d bytes", len(seed))) // seeds are 32 bytes by construction
	}
	ctr := cipher.NewCTR(block, make([]byte, aes.BlockSize))
	const words = 2048
	var zero, buf [4 * words]byte
	for i := 0; i < len(v); i += words {
		end := min(i+words, len(v))
		b := buf[:4*(end-i)]
		ctr.XORKeyStream(b, zero[:len(b)])
		w := v[i:end]
		if negate {
			for j := range w {
				w[j] -= binary.LittleEndian.Uint32(b[4*j:])
			}
		} else {
			for j := range w {
				w[j] += binary.LittleEndian.Uint32(b[4*j:])
			}
		}
	}
}

// KeyAuth authenticates workers' keys: in secure mode a worker signs its
// keys with its certificate, and every worker checks the others' before
// sharing anything with them (a coordinator relaying keys could otherwise
// put its own in their place and open every share and mask).
type KeyAuth interface {
	// Sign sets keys' certificate and signature over msg.
	Sign(keys *pb.SecAggKeys, msg []byte) error
	// Verify checks that keys carry a certificate of a worker named
	// keys.Worker, issued by the cluster's CA, whose key signed msg.
	Verify(keys *pb.SecAggKeys, msg []byte) error
}

// SignedBytes is what a worker signs for its keys: the round's context,
// its name and its three public values.
func SignedBytes(p Params, k *pb.SecAggKeys) []byte {
	b := []byte(p.context("keys") + k.Worker + "\x00")
	b = append(b, k.CipherPub...)
	b = append(b, k.MaskPub...)
	return append(b, k.SeedCommit...)
}
