package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	grpcstatus "google.golang.org/grpc/status"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

func clusterCommand() *cli.Command {
	status := func(c *cli.Context) (st *pb.ClusterStatusResponse, err error) {
		err = withAdmin(c, func(a rpcpb.AdminClient) error {
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
				Flags: []cli.Flag{coordinatorFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					asJSON, err := wantJSON(c)
					if err != nil {
						return err
					}
					st, err := status(c)
					if err != nil {
						return err
					}
					if asJSON {
						return printJSON(c, st)
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "NAME\tROLE\tGOSSIP\tGRPC\tLABELS")
					for _, m := range st.Members {
						var ls []string
						for k, v := range m.Labels {
							ls = append(ls, k+"="+v)
						}
						sort.Strings(ls)
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", terminalSafe(m.Name), terminalSafe(m.Role), m.Addr, terminalSafe(dash(m.GrpcAddr)), terminalSafe(strings.Join(ls, ",")))
					}
					return tw.Flush()
				},
			},
			{
				Name:  "raft",
				Usage: "show the Raft configuration: leader, voters, indexes",
				Flags: []cli.Flag{coordinatorFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					asJSON, err := wantJSON(c)
					if err != nil {
						return err
					}
					st, err := status(c)
					if err != nil {
						return err
					}
					if asJSON {
						return printJSON(c, st)
					}
					fmt.Fprintf(c.App.Writer, "node %s: %s, term %d, last index %d, commit index %d, applied index %d, last snapshot %d\n",
						st.Node, st.State, st.Term, st.LastIndex, st.CommitIndex, st.AppliedIndex, st.LastSnapshotIndex)
					fmt.Fprintf(c.App.Writer, "leader: %s (%s)\n", dash(st.LeaderId), dash(st.LeaderGrpc))
					seen, voters := aliveVoters(st)
					fmt.Fprintf(c.App.Writer, "gossip: sees %d of %d voters, health score %d of 7\n", seen, voters, st.GossipHealth)
					switch {
					case seen >= voters/2+1:
					case st.LeaderId == "":
						fmt.Fprintf(c.App.Writer, "warning: no leader: %d of %d voters are alive as %s sees them, and electing one takes %d; start the others (reads from this node may be behind)\n",
							seen, voters, st.Node, voters/2+1)
					default:
						fmt.Fprintf(c.App.Writer, "warning: %s's gossip sees %d of %d voters while Raft has a leader: it is cut off from gossip (port blocked, other gossip key?)\n", st.Node, seen, voters)
					}
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
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", terminalSafe(s.Id), s.Suffrage, terminalSafe(s.Address), terminalSafe(dash(s.GrpcAddr)), gossip, leader)
					}
					return tw.Flush()
				},
			},
			{
				Name:  "transfer-leader",
				Usage: "hand leadership to another coordinator (before maintenance on the leader)",
				Description: "Asks the leader (found through --coordinator) to hand its leadership to the voter --to,\n" +
					"or without --to to the most up-to-date follower, and prints who leads then. Jobs go on:\n" +
					"the new leader resumes open rounds and async buffers from the replicated state.",
				Flags: []cli.Flag{coordinatorFlag(),
					&cli.StringFlag{Name: "to", Usage: "id of the voter to lead (fedtune cluster raft lists them); empty: the most up-to-date follower", EnvVars: []string{"FEDTUNE_TRANSFER_TO"}}},
				Action: func(c *cli.Context) error {
					pool, conn, err := dialLeader(c)
					if err != nil {
						return err
					}
					defer pool.Close()
					ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
					defer cancel()
					resp, err := rpcpb.NewAdminClient(conn).TransferLeadership(ctx, &pb.TransferLeadershipRequest{To: c.String("to")})
					if err != nil {
						return errors.New(grpcstatus.Convert(err).Message()) // the coordinator's words, without gRPC's wrapping
					}
					fmt.Fprintf(c.App.Writer, "leader: %s (%s)\n", resp.LeaderId, dash(resp.LeaderGrpc))
					return nil
				},
			},
		},
	}
}

// aliveVoters counts the voters of a node's Raft configuration that its
// gossip sees alive (itself included), and the voters.
func aliveVoters(st *pb.ClusterStatusResponse) (seen, voters int) {
	for _, s := range st.Servers {
		if s.Suffrage == "Voter" {
			voters++
			if s.Alive {
				seen++
			}
		}
	}
	return seen, voters
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
