package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
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
The control file is in the log folder 'make cluster' prints.
`

func runFleet(args []string) error {
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	control := fs.String("control", "", "the fleet's control.json (required)")
	forD := fs.Duration("for", 0, "pause: resume after this long")
	target := fs.String("target", "random", "fault: random, or the index of the member among those it applies to")
	dur := fs.Duration("duration", 0, "fault redis-pause: how long")
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
		fmt.Fprintln(w, "NAME\tKIND\tADDR\tPID\tSTATE\tROLE\tRESTARTS\tLAST EXIT")
		for _, m := range ms {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\n", m.Name, m.Kind, m.Addr, m.PID, m.State, m.Role, m.Restarts, m.LastExit)
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
		r, err := f.Inject(ctx, pos[1], *target, *dur)
		if err != nil {
			return err
		}
		fmt.Printf("%s: %s at %s\n", r.Action, r.Member, time.UnixMilli(r.AtMS).Format("15:04:05.000"))
		return nil
	}
	fmt.Fprint(os.Stderr, fleetUsage)
	return fmt.Errorf("fleet: unknown command %q", pos[0])
}
