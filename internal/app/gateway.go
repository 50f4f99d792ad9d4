package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/strongroom/strongroom/internal/netguard"
	"github.com/strongroom/strongroom/internal/redact"
	"github.com/strongroom/strongroom/internal/respguard"
	"github.com/strongroom/strongroom/internal/tlsclient"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/detect"
	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/gateway"
	"github.com/strongroom/strongroom/internal/geo"
	"github.com/strongroom/strongroom/internal/limits"
	"github.com/strongroom/strongroom/internal/policy"
	"github.com/strongroom/strongroom/internal/screening"
	"github.com/strongroom/strongroom/internal/store"
)

// Keys is the API key manager over this data directory's store.
// APIKeys is the process's one key manager (built once), so that a key revoked through
// this process stops working here at once; other processes' revocations arrive through
// its Watch (started with the gateway).
func (a *App) APIKeys() *authn.Keys {
	a.keysOnce.Do(func() { a.keys = authn.NewKeys(a.Store, nil, 5*time.Second) })
	return a.keys
}

// Authenticator is the process's one authentication chain — API keys (APIKeys) and, with
// gateway.oidc, JWTs from that issuer — shared by the gateway and the control API.
func (a *App) Authenticator() (authn.Chain, error) {
	a.authOnce.Do(func() {
		a.auth = authn.Chain{Keys: a.APIKeys()}
		if o := a.Config.Gateway.OIDC; o != nil {
			a.auth.OIDC, a.authErr = authn.NewOIDC(a.bg, authn.OIDCConfig(*o), a.Store, nil)
		}
	})
	return a.auth, a.authErr
}

// GatewayOptions are what a command adds to the configured gateway.
type GatewayOptions struct {
	Routes []gateway.Route  // beyond the config's (dev's runtime)
	Trace  gateway.Detector // also receives every request (serve --record-trace)
}

// OpenGateway builds the data plane from the config and o. The policy engine reloads the
// policy directory until ctx ends.
func (a *App) OpenGateway(ctx context.Context, o GatewayOptions) (*gateway.Gateway, error) {
	if _, err := a.MigrateRoutes(ctx); err != nil {
		return nil, err
	}
	models, err := a.ModelRecords(ctx)
	if err != nil {
		return nil, err
	}
	gc := a.Config.Gateway
	tracer, err := a.Tracer()
	if err != nil {
		return nil, err
	}
	eng, err := a.Policy(ctx)
	if err != nil {
		return nil, err
	}
	proxies, err := trustedProxies(gc.TrustedProxies)
	if err != nil {
		return nil, err
	}
	var timeout time.Duration
	if gc.UpstreamTimeout != "" {
		if timeout, err = time.ParseDuration(gc.UpstreamTimeout); err != nil {
			return nil, fmt.Errorf("gateway.upstream_timeout: %w", err)
		}
	}
	var loc gateway.Geo
	switch {
	case gc.GeoMMDB != "":
		m, err := geo.OpenMMDB(gc.GeoMMDB)
		if err != nil {
			return nil, err
		}
		loc = m
	default:
		if r, err := geo.OpenTor(geo.TorGeoIP4, geo.TorGeoIP6); err == nil {
			loc = r
		} else {
			if gc.InternalCountry == "" {
				a.Log.Warn("no geolocation: every client country is unknown, so only public models are served", "err", err)
			} else {
				a.Log.Warn("no geolocation: clients outside the internal networks are of unknown country, so only public models are served to them", "err", err)
			}
		}
	}
	if gc.InternalCountry != "" {
		loc = geo.Internal{Home: gc.InternalCountry, Next: loc}
	}
	var lim, fallback limits.Limiter = limits.NewLocal(nil), nil
	if gc.RedisURL != "" {
		rdb, err := a.Redis()
		if err != nil {
			return nil, err
		}
		rl := limits.NewRedis(rdb, a.redisPrefix()+"limits:", nil)
		if a.limitsKey == nil {
			return nil, errors.New("gateway.redis_url: the shared limiter needs the audit HMAC key (its scopes' names in Redis are keyed digests)")
		}
		rl.HideNames(a.limitsKey)
		rl.Log = a.Log
		go rl.Run(ctx) // renews this replica's concurrency slots: a dead one's lapse
		lim = rl
		if gc.LocalFallbackPublic {
			fallback = limits.NewLocal(nil)
		}
	}
	auth, err := a.Authenticator()
	if err != nil {
		return nil, err
	}
	go auth.Keys.Watch(ctx, a.keyWatchInterval())
	if gc.RedisURL != "" {
		go a.followRevocations(ctx, auth.Keys)
	}
	// Detectors watch every request; with gateway.redis_url they see every replica's
	// requests (detect.Bus), and sanctions are shared through the store.
	resp, err := a.Responder(ctx)
	if err != nil {
		return nil, err
	}
	var certs gateway.CertAuthenticator
	if gc.TLS != nil && gc.TLS.ClientCAFile != "" {
		certs = authn.Certs{St: a.Store}
	}
	var det gateway.Detector = resp
	if o.Trace != nil {
		det = detect.Tee{resp, o.Trace}
	}
	gw, err := gateway.New(gateway.Config{
		Certs:           certs,
		Detector:        det,
		Sanctions:       resp,
		Geo:             loc,
		FallbackLimiter: fallback,
		Routes:          append(gatewayRoutes(gc.Routes), o.Routes...),
		Models:          models,
		Auth:            auth, Policy: eng, Limiter: lim,
		KeyLimits: limits.Limits(gc.KeyLimits), TenantLimits: limits.Limits(gc.TenantLimits),
		Audit: a.AuditLog, Health: a.StoreHealthy, Redactor: a.Redactor, TrustedProxies: proxies,
		MaxBody: gc.MaxBodyBytes, UpstreamTimeout: timeout, Logger: a.Log,
		Records: a.RequestRecords(), RecordAnswers: !a.Config.Audit.AsyncRequestRecords, Tracer: tracer,
	})
	if err != nil {
		return nil, err
	}
	if err := a.Metrics.Register(gw.Collector()); err != nil {
		return nil, err
	}
	go gw.HealthCheck(ctx, 10*time.Second)
	go gw.SummarizeRefusals(ctx, 10*time.Second)
	a.gateways = append(a.gateways, gw) // Close records their last refusal summaries
	return gw, nil
}

// Screening is the deployment's denied-party screening of principals.
func (a *App) Screening() *screening.Screener {
	return &screening.Screener{List: a.Config.Gateway.ScreeningList, Store: a.Store, Audit: a, Now: time.Now}
}

// Rescreen checks every principal against the (reloaded) list; it returns those blocked now.
func (a *App) Rescreen(ctx context.Context) ([]string, error) { return a.Screening().Rescreen(ctx) }

// AddPrincipal creates or updates a principal, screened and on the record.
func (a *App) AddPrincipal(ctx context.Context, p store.Principal) error {
	return a.Screening().Put(ctx, p)
}

// CreateKey issues an API key, on the record (the secret never is).
func (a *App) CreateKey(ctx context.Context, principal string, ttl time.Duration, models []string) (string, store.APIKey, error) {
	tok, rec, err := a.APIKeys().Create(ctx, principal, ttl, models)
	if err != nil {
		return "", rec, err
	}
	return tok, rec, a.Audit(ctx, audit.Event{Kind: audit.KindKeyCreate, Decision: audit.Allow, Subject: map[string]string{"principal": principal, "key_id": rec.ID}, Fields: map[string]string{"models": fmt.Sprint(models), "expires": rec.ExpiresAt.Format(time.RFC3339)}})
}

// RotateKey issues a successor key; the old one lives for overlap more.
func (a *App) RotateKey(ctx context.Context, id string, overlap time.Duration) (string, store.APIKey, error) {
	id = authn.KeyID(id) // a key given whole: its id, the secret nowhere
	tok, rec, err := a.APIKeys().Rotate(ctx, id, overlap)
	if err != nil {
		return "", rec, err
	}
	a.announceRevocation(ctx, id) // its expiry moved
	return tok, rec, a.Audit(ctx, audit.Event{Kind: audit.KindKeyRotate, Decision: audit.Allow, Subject: map[string]string{"principal": rec.Principal, "key_id": id}, Fields: map[string]string{"new_key_id": rec.ID, "overlap": overlap.String()}})
}

// RevokeKey ends a key now.
func (a *App) RevokeKey(ctx context.Context, id string) error {
	id = authn.KeyID(id) // a key given whole (one found leaked): its id, the secret nowhere
	if err := a.Audit(ctx, audit.Event{Kind: audit.KindKeyRevoke, Decision: audit.Allow, Subject: map[string]string{"key_id": id}}); err != nil {
		return err
	}
	if err := a.APIKeys().Revoke(ctx, id); err != nil {
		return err
	}
	a.announceRevocation(ctx, id)
	return nil
}

// GatewayTLS is the gateway listener's TLS configuration, nil for plain HTTP.
func (a *App) GatewayTLS() (*tls.Config, error) {
	t := a.Config.Gateway.TLS
	if t == nil {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("gateway.tls: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if t.ClientCAFile != "" {
		pool, err := tlsclient.CAPool(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("gateway.tls.client_ca_file: %w", err)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

// Responder builds the detectors' responder from config: incidents in the store, the
// webhook, the sanction duration; hydra clustering runs every 10 seconds until ctx ends.
func (a *App) Responder(ctx context.Context) (*detect.Responder, error) {
	ac := a.Config.Alerts
	var secret []byte
	if ac.Webhook != "" {
		if ac.WebhookSecretFile == "" {
			return nil, fmt.Errorf("alerts.webhook needs alerts.webhook_secret_file")
		}
		s, err := fsutil.ReadPrivate(ac.WebhookSecretFile)
		if err != nil {
			return nil, fmt.Errorf("alerts.webhook_secret_file: %w", err)
		}
		secret = bytes.TrimSpace(s)
	}
	var bus detect.Bus
	if a.Config.Gateway.RedisURL != "" {
		rdb, err := a.Redis()
		if err != nil {
			return nil, err
		}
		if bus, err = detect.NewRedisBus(rdb, a.redisPrefix()+"detect:", a.busKey, a.Log); err != nil {
			return nil, err
		}
	}
	r := detect.NewResponder(detect.New(a.Detect), detect.ResponderConfig{Audit: a.AuditLog, Incidents: a.Store,
		// Another replica's request record reaches the log when its journal folds it: up to
		// FoldEvery after it was written, and the fold's own time after that. A delay of one
		// FoldEvery missed the other replica's requests under the suite's load (redis_detect:
		// 4 entries of evidence, not 6; forty-first session); two leave a fold's time.
		Records: a.RequestRecords(), RecordsDelay: max(2*audit.DefaultFoldEvery, 3*a.requestBatchDelay()), LogSize: a.AuditLog.IntegratedSize,
		Webhook: ac.Webhook, WebhookSecret: secret, Duration: ac.SanctionDuration.Duration, Log: a.Log, Bus: bus, Metrics: a.Metrics})
	go r.Run(ctx, 10*time.Second)
	go a.watchDetectModes(ctx, r, 2*time.Second)
	a.responders = append(a.responders, r)
	return r, nil
}

// Redis is the client for gateway.redis_url (limits and shared detection), one per App.
func (a *App) Redis() (*redis.Client, error) {
	a.redisMu.Lock()
	defer a.redisMu.Unlock()
	if a.redis == nil {
		raw := a.Config.Gateway.RedisURL
		if redact.URL(raw) == redact.Malformed {
			// go-redis quotes the whole URL it cannot parse, password and all (round 57).
			return nil, errors.New("gateway.redis_url: not a redis:// or rediss:// URL (not shown: it may hold a password)")
		}
		opt, err := redis.ParseURL(raw)
		if err != nil {
			return nil, fmt.Errorf("gateway.redis_url %s: %w", redact.URL(raw), redact.Error(err, redact.URL, raw))
		}
		// A request's deadline reaches the socket (the limiter bounds its wait on a Redis that
		// hangs: limits.DefaultTimeout); without it go-redis waits out its read timeout.
		opt.ContextTimeoutEnabled = true
		if opt.TLSConfig != nil && opt.TLSConfig.InsecureSkipVerify {
			return nil, errors.New("gateway.redis_url: skip_verify does not check the server's certificate; name its CA in gateway.redis_tls")
		}
		if a.Config.Gateway.RedisTLS != nil {
			if opt.TLSConfig == nil { // Validate refuses this; the URL may come from the environment after it
				return nil, errors.New("gateway.redis_tls is set but gateway.redis_url is not a rediss:// URL")
			}
			tc, err := a.clientTLS("gateway.redis_tls", a.Config.Gateway.RedisTLS)
			if err != nil {
				return nil, err
			}
			tc.ServerName = opt.TLSConfig.ServerName // the URL's host
			opt.TLSConfig = tc
		}
		// Redis's replies are outside data: one that announces more than Strongroom ever asks
		// for fails its connection before go-redis allocates it (respguard).
		opt.Dialer = respguard.Dialer(redis.NewDialer(opt), respguard.Default)
		if opt.TLSConfig == nil && plaintextRemote(opt.Network, opt.Addr) {
			a.Log.Warn("gateway.redis_url is redis:// (no TLS) to a host that is not this one: its password, the limiter's scopes and usage and the detection bus's (sealed) records cross the network in the clear; use rediss://",
				"redis", redact.URL(raw))
		}
		a.redis = redis.NewClient(opt)
	}
	return a.redis, nil
}

// plaintextRemote: an engine reached (without TLS: the caller knows) over network to an
// address whose host is not a loopback address.
func plaintextRemote(network, addr string) bool {
	if network == "unix" {
		return false
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err != nil || !ip.Unmap().IsLoopback()
}

func (a *App) redisPrefix() string {
	if p := a.Config.Gateway.RedisPrefix; p != "" {
		return p
	}
	return "strongroom:"
}

// Policy is the data directory's Cedar engine (baseline plus the policy directory), one
// per App whatever asks for it (gateway, custody); the first caller's ctx bounds its
// reloading of the policy directory. Every set is recorded ("policy.load": each file's
// SHA-256) before it comes into force; one that cannot be recorded does not.
func (a *App) Policy(ctx context.Context) (*policy.Engine, error) {
	a.policyMu.Lock()
	defer a.policyMu.Unlock()
	if a.policy != nil {
		return a.policy, nil
	}
	if err := os.MkdirAll(a.Config.Gateway.PolicyDir, 0o700); err != nil {
		return nil, err
	}
	eng, err := policy.NewRecordedEngine(a.Config.Gateway.PolicyDir, a.Log, func(s *policy.Set) error {
		// The set in force is on the record (the compliance report's configuration).
		fields := map[string]string{}
		for name, d := range s.Digests() {
			fields["sha256:"+name] = d
		}
		return a.Audit(context.WithoutCancel(ctx), audit.Event{Kind: audit.KindPolicyLoad, Decision: audit.Allow, Subject: map[string]string{"policy_set": s.Digest()}, Fields: fields})
	})
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	go eng.Watch(ctx, 2*time.Second)
	a.policy = eng
	return eng, nil
}

func trustedProxies(ps []string) ([]netip.Prefix, error) {
	var proxies []netip.Prefix
	for _, p := range ps {
		pr, err := netip.ParsePrefix(p)
		if err != nil {
			return nil, fmt.Errorf("gateway.trusted_proxies: %w", err)
		}
		proxies = append(proxies, pr)
	}
	return proxies, nil
}

// NetGuard is the one connection guard of every listener this process serves (built once).
func (a *App) NetGuard() (*netguard.Guard, error) {
	a.guardOnce.Do(func() {
		c := a.Config.Gateway.Connections
		var exempt []netip.Prefix
		if exempt, a.guardErr = trustedProxies(a.Config.Gateway.TrustedProxies); a.guardErr != nil {
			return
		}
		a.guard, a.guardErr = netguard.New(netguard.Limits{MaxConns: c.MaxConns, MaxConnsPerIP: c.MaxConnsPerIP, Exempt: exempt,
			HeaderTimeout: c.HeaderTimeout.Duration, BodyTimeout: c.BodyTimeout.Duration, IdleTimeout: c.IdleTimeout.Duration,
			PeerTimeout: c.PeerTimeout.Duration}, a.Log, a.Metrics)
	})
	return a.guard, a.guardErr
}

// requestBatchDelay is how long a request record may wait for its batch.
func (a *App) requestBatchDelay() time.Duration {
	if d := a.Config.Audit.RequestBatchDelay.Duration; d > 0 {
		return d
	}
	return audit.DefaultBatchDelay
}
