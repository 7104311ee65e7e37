package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fedtune/fedtune/internal/gossip"
	"github.com/fedtune/fedtune/internal/pki"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

func certsCommand() *cli.Command {
	caDir := &cli.StringFlag{Name: "ca-dir", Value: filepath.Join("fedtune-data", "certs"), Usage: "directory of the cluster CA (ca.pem, ca-key.pem)", EnvVars: []string{"FEDTUNE_CA_DIR"}}
	return &cli.Command{
		Name:  "certs",
		Usage: "the cluster's certificate authority: mutual TLS identities for coordinators, workers and admins",
		Subcommands: []*cli.Command{
			{
				Name:  "init",
				Usage: "create the cluster CA (once per cluster; keep ca-key.pem offline)",
				Flags: []cli.Flag{
					caDir,
					&cli.StringFlag{Name: "name", Value: "fedtune CA", Usage: "the CA's common name", EnvVars: []string{"FEDTUNE_CA_NAME"}},
					&cli.DurationFlag{Name: "validity", Value: 10 * 365 * 24 * time.Hour, Usage: "how long the CA is valid", EnvVars: []string{"FEDTUNE_CA_VALIDITY"}},
				},
				Action: func(c *cli.Context) error {
					if err := pki.InitCA(c.String("ca-dir"), c.String("name"), c.Duration("validity")); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "created CA %q in %s (ca-key.pem is mode 0600: keep it safe)\n", c.String("name"), c.String("ca-dir"))
					return nil
				},
			},
			{
				Name:      "issue",
				Usage:     "issue a certificate naming a node and its role",
				ArgsUsage: "NAME",
				Flags: []cli.Flag{
					caDir,
					&cli.StringFlag{Name: "role", Required: true, Usage: "coordinator, worker or admin", EnvVars: []string{"FEDTUNE_CERT_ROLE"}},
					&cli.StringFlag{Name: "out", Usage: "directory for NAME.pem, NAME-key.pem and ca.pem (default: the CA directory)", EnvVars: []string{"FEDTUNE_CERT_OUT"}},
					&cli.DurationFlag{Name: "validity", Value: 365 * 24 * time.Hour, Usage: "how long the certificate is valid", EnvVars: []string{"FEDTUNE_CERT_VALIDITY"}},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("certs issue: give the node's name (its --id)")
					}
					name, out := c.Args().First(), c.String("out")
					if err := gossip.CheckName(name); err != nil {
						return fmt.Errorf("certs issue: %w", err) // the name is the node's --id and gossip name
					}
					if out == "" {
						out = c.String("ca-dir")
					}
					if err := pki.Issue(c.String("ca-dir"), out, c.String("role"), name, c.Duration("validity"), time.Time{}); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "issued %s certificate %q: %s, %s (key mode 0600)\n", c.String("role"), name,
						filepath.Join(out, name+".pem"), filepath.Join(out, name+"-key.pem"))
					return nil
				},
			},
		},
	}
}

func keyringCommand() *cli.Command {
	change := func(name string, op pb.Keyring_Op, usage string) *cli.Command {
		return &cli.Command{
			Name:      name,
			Usage:     usage,
			ArgsUsage: "KEY",
			Flags:     []cli.Flag{coordinatorFlag()},
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return fmt.Errorf("keyring %s: give the base64 key", name)
				}
				pool, conn, err := dialLeader(c)
				if err != nil {
					return err
				}
				defer pool.Close()
				resp, err := rpcpb.NewAdminClient(conn).Keyring(c.Context, &pb.KeyringRequest{Change: &pb.Keyring{Op: op, Key: c.Args().First()}})
				if err != nil {
					return fmt.Errorf("keyring %s: %w", name, err)
				}
				fmt.Fprintf(c.App.Writer, "gossip keyring now holds %d keys (the first encrypts); every node follows it\n", len(resp.Keys))
				return nil
			},
		}
	}
	return &cli.Command{
		Name:  "keyring",
		Usage: "gossip encryption keys: generate one, and rotate them on a running cluster",
		Description: `Rotation: generate a key, install it (every node then accepts it),
use it (every node encrypts with it), remove the old one. Changes are Raft log
entries: coordinators apply them, workers receive them with their next poll.
Nodes must have been started with --gossip-key.`,
		Subcommands: []*cli.Command{
			{
				Name:  "generate",
				Usage: "print a new random 32-byte gossip key (base64) for --gossip-key",
				Action: func(c *cli.Context) error {
					k, err := gossip.NewKey()
					if err != nil {
						return err
					}
					fmt.Fprintln(c.App.Writer, k)
					return nil
				},
			},
			{
				Name:  "list",
				Usage: "print the gossip keys the leader uses, the one that encrypts first (secrets: admin certificate only)",
				Flags: []cli.Flag{coordinatorFlag()},
				Action: func(c *cli.Context) error {
					pool, conn, err := dialLeader(c)
					if err != nil {
						return err
					}
					defer pool.Close()
					resp, err := rpcpb.NewAdminClient(conn).Keyring(c.Context, &pb.KeyringRequest{})
					if err != nil {
						return fmt.Errorf("keyring list: %w", err)
					}
					if len(resp.Keys) == 0 {
						fmt.Fprintln(c.App.Writer, "gossip is not encrypted (the cluster started without --gossip-key)")
						return nil
					}
					for i, k := range resp.Keys {
						role := "accepted"
						if i == 0 {
							role = "encrypts"
						}
						fmt.Fprintf(c.App.Writer, "%s  %s\n", k, role)
					}
					return nil
				},
			},
			change("install", pb.Keyring_OP_INSTALL, "add a key to every node's keyring"),
			change("use", pb.Keyring_OP_USE, "make an installed key the one every node encrypts with"),
			change("remove", pb.Keyring_OP_REMOVE, "remove a key that is no longer in use"),
		},
	}
}
