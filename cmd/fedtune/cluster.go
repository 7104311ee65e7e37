package main

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	pb "github.com/fedtune/fedtune/protocol"
)

func clusterCommand() *cli.Command {
	status := func(c *cli.Context) (st *pb.ClusterStatusResponse, err error) {
		err = withAdmin(c, func(a pb.AdminClient) error {
			st, err = a.ClusterStatus(c.Context, &pb.ClusterStatusRequest{})
			return err
		})
		return st, err
	}
	return &cli.Command{
		Name:  "cluster",
		Usage: "show the coordinator cluster: gossip members and the Raft configuration",
		Subcommands: []*cli.Command{
			{
				Name:  "members",
				Usage: "list the gossip members (coordinators and workers) a coordinator sees alive",
				Flags: []cli.Flag{coordinatorFlag()},
				Action: func(c *cli.Context) error {
					st, err := status(c)
					if err != nil {
						return err
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "NAME\tROLE\tGOSSIP\tGRPC\tLABELS")
					for _, m := range st.Members {
						var ls []string
						for k, v := range m.Labels {
							ls = append(ls, k+"="+v)
						}
						sort.Strings(ls)
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.Name, m.Role, m.Addr, dash(m.GrpcAddr), strings.Join(ls, ","))
					}
					return tw.Flush()
				},
			},
			{
				Name:  "raft",
				Usage: "show the Raft configuration: leader, voters, indexes",
				Flags: []cli.Flag{coordinatorFlag()},
				Action: func(c *cli.Context) error {
					st, err := status(c)
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "node %s: %s, term %d, last index %d, commit index %d, applied index %d, last snapshot %d\n",
						st.Node, st.State, st.Term, st.LastIndex, st.CommitIndex, st.AppliedIndex, st.LastSnapshotIndex)
					fmt.Fprintf(c.App.Writer, "leader: %s (%s)\n", dash(st.LeaderId), dash(st.LeaderGrpc))
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "ID\tSUFFRAGE\tRAFT\tGRPC\tGOSSIP\tLEADER")
					for _, s := range st.Servers {
						gossip, leader := "dead", ""
						if s.Alive {
							gossip = "alive"
						}
						if s.Id == st.LeaderId {
							leader = "*"
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Id, s.Suffrage, s.Address, dash(s.GrpcAddr), gossip, leader)
					}
					return tw.Flush()
				},
			},
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
