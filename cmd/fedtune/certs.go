package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fedtune/fedtune/internal/gossip"
	"github.com/fedtune/fedtune/internal/pki"
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
	return &cli.Command{
		Name:  "keyring",
		Usage: "gossip encryption keys",
		Subcommands: []*cli.Command{{
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
		}},
	}
}
