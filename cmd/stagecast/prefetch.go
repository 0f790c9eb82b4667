package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sort"
	"time"

	"github.com/stagecast/stagecast/internal/device"
)

func runPrefetchGet(args []string) error {
	fs := flag.NewFlagSet("prefetch-get", flag.ContinueOnError)
	url := fs.String("graphql", "http://127.0.0.1:8082/graphql", "prefetch API URL")
	segment := fs.String("segment", "", "device segment")
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(positional(fs)) != 1 {
		return errors.New("usage: stagecast prefetch-get [flags] EVENT")
	}
	p, err := device.NewPrefetcher(device.PrefetchConfig{URL: *url, Event: positional(fs)[0], Segment: *segment})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	refresh, err := p.Fetch(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("%d stages; refresh after %v\n", p.Len(), refresh)
	return printPayloads(p)
}

func printPayloads(p *device.Prefetcher) error {
	keys := p.Keys()
	sort.Strings(keys)
	for _, k := range keys {
		v, _ := p.Lookup(k)
		fmt.Printf("  %-24s %s\n", k, v)
	}
	return nil
}
