// Package protocol holds fedtune's wire messages, gRPC services and the Raft
// command envelope, generated from the .proto files beside this file.
// Regenerate with `make proto`.
package protocol

//go:generate make -C .. proto
