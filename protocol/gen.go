// Package protocol holds fedtune's wire messages, gRPC services and the Raft
// command envelope, generated from the .proto files beside this file.
// Regenerate with `make proto`.
package protocol

//go:generate protoc -I . --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative fedtune.proto service.proto
