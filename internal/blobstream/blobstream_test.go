package blobstream

import (
	"bytes"
	"errors"
	"io"
	"testing"

	pb "github.com/fedtune/fedtune/protocol"
)

// chunks is an in-memory stream of chunks, both ends.
type chunks struct{ cs []*pb.BlobChunk }

func (c *chunks) Send(ch *pb.BlobChunk) error { c.cs = append(c.cs, ch); return nil }
func (c *chunks) Recv() (*pb.BlobChunk, error) {
	if len(c.cs) == 0 {
		return nil, io.EOF
	}
	ch := c.cs[0]
	c.cs = c.cs[1:]
	return ch, nil
}

func TestRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, ChunkSize, 2*ChunkSize + 5} {
		b := bytes.Repeat([]byte{7}, n)
		var s chunks
		if err := Send(&s, HashOf(b), b); err != nil {
			t.Fatal(err)
		}
		got, hash, err := Recv(&s, HashOf(b), int64(n))
		if err != nil || !bytes.Equal(got, b) || hash != HashOf(b) {
			t.Fatalf("n=%d: %v", n, err)
		}
	}
}

func TestRecvRefusesHostileStreams(t *testing.T) {
	data := []byte("hello world")
	h := HashOf(data)
	cases := []struct {
		name  string
		cs    []*pb.BlobChunk
		want  string
		limit int64
		err   error
	}{
		{"empty stream", nil, "", 100, nil},
		{"claims 2^60 bytes", []*pb.BlobChunk{{Hash: h, Size: 1 << 60}}, "", 1 << 62, ErrTooLarge},
		{"over the limit", []*pb.BlobChunk{{Hash: h, Size: 11, Data: data}}, "", 5, ErrTooLarge},
		{"more than declared", []*pb.BlobChunk{{Hash: h, Size: 3, Data: data[:3]}, {Data: data[3:]}}, "", 100, ErrTooLarge},
		{"fewer than declared", []*pb.BlobChunk{{Hash: h, Size: 20, Data: data}}, "", 100, nil},
		{"wrong hash", []*pb.BlobChunk{{Hash: HashOf([]byte("x")), Size: 11, Data: data}}, "", 100, ErrHashMismatch},
		{"other blob than asked", []*pb.BlobChunk{{Hash: h, Size: 11, Data: data}}, HashOf([]byte("x")), 100, ErrHashMismatch},
	}
	for _, c := range cases {
		_, _, err := Recv(&chunks{cs: c.cs}, c.want, c.limit)
		if err == nil {
			t.Errorf("%s: accepted", c.name)
		} else if c.err != nil && !errors.Is(err, c.err) {
			t.Errorf("%s: %v, want %v", c.name, err, c.err)
		}
	}
}
