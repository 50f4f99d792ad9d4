// Command openloop sends one HTTP request at a fixed rate, whatever the answers' pace (an
// open loop, unlike wrk's closed one: a proxy that answers slower is not sent fewer
// requests), for a fixed time, and prints what came back. docs/bench/openloop.sh uses it
// to compare proxies' CPU per request at one offered rate.
//
//	openloop -url URL -key KEY -body JSON -rate 4000 -duration 8s -conns 64
//
// Latency is counted from each request's scheduled time, so a queue behind a slow answer
// shows in it (no coordinated omission).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	url := flag.String("url", "", "the endpoint to POST to")
	key := flag.String("key", "none", "the bearer key")
	body := flag.String("body", "", "the JSON body")
	rate := flag.Int("rate", 1000, "requests a second")
	dur := flag.Duration("duration", 8*time.Second, "how long to send")
	conns := flag.Int("conns", 64, "connections (and requests in flight) at most")
	flag.Parse()
	if *url == "" || *rate <= 0 || *conns <= 0 {
		flag.Usage()
		os.Exit(2)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: *conns, MaxConnsPerHost: *conns, DisableCompression: true}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	total := int(float64(*rate) * dur.Seconds())
	jobs := make(chan time.Time, total)
	var ok, bad, errs atomic.Int64
	var mu sync.Mutex
	lat := make([]time.Duration, 0, total)
	var wg sync.WaitGroup
	b := []byte(*body)
	for range *conns {
		wg.Go(func() {
			var mine []time.Duration
			for at := range jobs {
				req, _ := http.NewRequest("POST", *url, bytes.NewReader(b))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+*key)
				resp, err := client.Do(req)
				if err != nil {
					errs.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 == 2 {
					ok.Add(1)
				} else {
					bad.Add(1)
				}
				mine = append(mine, time.Since(at))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	// Every millisecond, hand out the requests whose time has come.
	start := time.Now()
	interval := time.Duration(float64(time.Second) / float64(*rate))
	tick := time.NewTicker(time.Millisecond)
	sent := 0
	for sent < total {
		now := <-tick.C
		for sent < total {
			at := start.Add(time.Duration(sent) * interval)
			if at.After(now) {
				break
			}
			jobs <- at
			sent++
		}
	}
	tick.Stop()
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lat)
	q := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	fmt.Printf("openloop: sent %d ok %d non2xx %d errors %d in %.2fs (%.0f ok/s) p50 %v p99 %v\n",
		sent, ok.Load(), bad.Load(), errs.Load(), elapsed.Seconds(), float64(ok.Load())/elapsed.Seconds(),
		q(0.5).Round(10*time.Microsecond), q(0.99).Round(10*time.Microsecond))
}
