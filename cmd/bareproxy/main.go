// Command bareproxy is the baseline of the gateway load recipe (scripts/bench-gateway): a
// bare httputil.ReverseProxy with a tuned transport and nothing else.
package main

import (
	"flag"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

func main() {
	upstream := flag.String("upstream", "http://127.0.0.1:8090", "upstream base URL")
	listen := flag.String("listen", "127.0.0.1:8092", "address")
	flag.Parse()
	u, err := url.Parse(*upstream)
	if err != nil {
		log.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second}
	log.Fatal((&http.Server{Addr: *listen, Handler: rp, ReadHeaderTimeout: 10 * time.Second}).ListenAndServe())
}
