package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/stagecast/stagecast/loadgen"
)

const fleetUsage = `Usage: stagecast fleet --control DIR/control.json <command>
  list                         members, their state, restarts, Redis roles
  kill|drain|pause|resume|restart NAME   one member (pause --for 10s resumes by itself)
  fault ACTION [--target random|N] [--duration D]
                               proxy-kill, proxy-drain, broadcaster-kill,
                               redis-master-kill, redis-pause (--duration)
  fault NETWORK-ACTION [--member proxy|proxy-2|broadcaster|prefetch] [--target N]
        [--link redis|shard:I|devices|all] [--direction both|out|in] [--duration D]
        [--latency 300ms --jitter 100ms] [--rate-kbps 64]
                               partition, blackhole, delay, bandwidth, reset: on the
                               member's links, healed after --duration (default: at heal)
  heal [--member NAME]         remove every network fault (of one member)
The control file is in the log folder 'make cluster' prints.
`

func runFleet(args []string) error {
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	control := fs.String("control", "", "the fleet's control.json (required)")
	forD := fs.Duration("for", 0, "pause: resume after this long")
	target := fs.String("target", "random", "fault: random, or the index of the member among those it applies to")
	dur := fs.Duration("duration", 0, "fault: how long (redis-pause; a network fault heals after it)")
	var nf loadgen.FleetFault
	fs.StringVar(&nf.Member, "member", "", "network fault: the member (a name from list, or a kind: proxy, broadcaster, prefetch; --target picks one)")
	fs.StringVar(&nf.Link, "link", "", "network fault: redis (default), shard:I, devices or all")
	fs.StringVar(&nf.Direction, "direction", "", "network fault: both (default), out (what the member sends), in (what it receives)")
	fs.StringVar(&nf.Latency, "latency", "", "delay: added latency each way (e.g. 300ms)")
	fs.StringVar(&nf.Jitter, "jitter", "", "delay: +/- jitter (e.g. 100ms)")
	fs.Int64Var(&nf.RateKBps, "rate-kbps", 0, "bandwidth: cap in KB/s")
	if err := parse(fs, args); err != nil {
		return err
	}
	pos := positional(fs)
	if *control == "" || len(pos) == 0 {
		fmt.Fprint(os.Stderr, fleetUsage)
		return errors.New("fleet: need --control and a command")
	}
	f, err := loadgen.OpenFleetControl(*control)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	switch cmd := pos[0]; cmd {
	case "list":
		ms, err := f.Members(ctx)
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tKIND\tADDR\tPID\tSTATE\tREADY\tROLE\tRESTARTS\tNETWORK FAULTS\tLAST EXIT")
		for _, m := range ms {
			ready := ""
			if m.Ready != nil {
				ready = fmt.Sprint(*m.Ready)
			}
			var faults []string
			for _, l := range m.Links {
				for _, f := range l.Faults {
					faults = append(faults, f+" "+l.Name)
				}
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\n", m.Name, m.Kind, m.Addr, m.PID, m.State, ready, m.Role, m.Restarts, strings.Join(faults, "; "), m.LastExit)
		}
		return w.Flush()
	case "kill", "drain", "pause", "resume", "restart":
		if len(pos) != 2 {
			return fmt.Errorf("fleet %s: name a member (see fleet list)", cmd)
		}
		m, err := f.Act(ctx, pos[1], cmd, *forD)
		if err != nil {
			return err
		}
		fmt.Printf("%s: %s (%s)\n", m.Name, cmd, m.State)
		return nil
	case "fault":
		if len(pos) != 2 {
			return errors.New("fleet fault: name an action")
		}
		nf.Action, nf.Target = pos[1], *target
		if *dur > 0 {
			nf.Duration = dur.String()
		}
		r, err := f.InjectFault(ctx, nf)
		if err != nil {
			return err
		}
		fmt.Printf("%s: %s at %s", r.Action, r.Member, time.UnixMilli(r.AtMS).Format("15:04:05.000"))
		if len(r.Links) > 0 {
			fmt.Printf(" on %s", strings.Join(r.Links, ", "))
		}
		if r.HealAtMS > 0 {
			fmt.Printf(", heals at %s", time.UnixMilli(r.HealAtMS).Format("15:04:05.000"))
		}
		fmt.Println()
		return nil
	case "heal":
		r, err := f.InjectFault(ctx, loadgen.FleetFault{Action: "heal", Member: nf.Member})
		if err != nil {
			return err
		}
		fmt.Printf("healed %d links\n", len(r.Links))
		return nil
	}
	fmt.Fprint(os.Stderr, fleetUsage)
	return fmt.Errorf("fleet: unknown command %q", pos[0])
}
