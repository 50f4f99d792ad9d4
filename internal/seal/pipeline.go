package seal

import (
	"runtime"
	"sync"
)

// slot is one chunk in flight: filled in order by the producer, transformed by any worker,
// drained in order.
type slot struct {
	buf   []byte // capacity chunk size + tag
	n     int    // valid bytes in buf
	idx   uint64
	final bool
	err   error
	done  chan struct{}
}

// pipe runs work on all cores while keeping output in input order, with a bounded number
// of buffers so memory stays constant whatever the file size.
type pipe struct {
	jobs    chan *slot
	order   chan *slot
	free    chan *slot
	wg      sync.WaitGroup
	drained chan struct{}

	mu  sync.Mutex
	err error
}

func workerCount(n int) int {
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	return n
}

func newPipe(workers, bufSize int, work func(*slot) error, drain func(*slot) error) *pipe {
	workers = workerCount(workers)
	slots := max(2*workers+2, 16) // enough in flight to keep every core busy; memory stays bounded
	p := &pipe{
		jobs:    make(chan *slot, slots),
		order:   make(chan *slot, slots),
		free:    make(chan *slot, slots),
		drained: make(chan struct{}),
	}
	for range slots {
		p.free <- &slot{buf: make([]byte, bufSize)}
	}
	for range workers {
		p.wg.Go(func() {
			for s := range p.jobs {
				s.err = work(s)
				close(s.done)
			}
		})
	}
	go func() {
		defer close(p.drained)
		for s := range p.order {
			<-s.done
			if p.failed() == nil {
				err := s.err
				if err == nil {
					err = drain(s)
				}
				if err != nil {
					p.fail(err)
				}
			}
			s.n, s.final, s.err = 0, false, nil
			p.free <- s
		}
	}()
	return p
}

func (p *pipe) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
}

func (p *pipe) failed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *pipe) get() *slot { return <-p.free }

func (p *pipe) put(s *slot) { p.free <- s }

func (p *pipe) submit(s *slot) {
	s.done = make(chan struct{})
	p.order <- s
	p.jobs <- s
}

// close waits for every submitted slot to be drained and returns the first error.
func (p *pipe) close() error {
	close(p.jobs)
	close(p.order)
	p.wg.Wait()
	<-p.drained
	return p.failed()
}
