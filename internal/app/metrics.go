package app

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strongroom/strongroom/internal/store"
)

// registerStoreMetrics exposes what the store knows that an operator graphs: live leases
// (where weights are decrypted now) and sanctions in force, read at each scrape (a failed
// read reports -1, which alerting can catch, rather than a stale count).
func (a *App) registerStoreMetrics() error {
	count := func(f func(ctx context.Context, now time.Time) (int, error)) func() float64 {
		return func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			n, err := f(ctx, time.Now())
			if err != nil {
				return -1
			}
			return float64(n)
		}
	}
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strongroom_custody_leases_live",
			Help: "Leases live now (unrevoked, unexpired), across every control plane sharing the store; -1 when the store cannot be read."},
			count(func(ctx context.Context, now time.Time) (int, error) {
				ls, err := a.Store.ListLeases(ctx, store.LeaseQuery{LiveAt: now})
				return len(ls), err
			})),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strongroom_detect_sanctions_in_force",
			Help: "Detector sanctions in force now, shared by every gateway; -1 when the store cannot be read."},
			count(func(ctx context.Context, now time.Time) (int, error) {
				ss, err := a.Store.ListSanctions(ctx, now)
				return len(ss), err
			})),
	} {
		if err := a.Metrics.Register(c); err != nil {
			return err
		}
	}
	return nil
}
