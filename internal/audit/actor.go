package audit

import "context"

type actorKey struct{}

// WithActor returns ctx carrying who acts when that is not the process itself (a person
// signed in to the console): recorders that take their actor from the context
// (App.Audit) record it instead of the process's.
func WithActor(ctx context.Context, actor map[string]string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// ActorFrom is the actor WithActor put in ctx, or nil.
func ActorFrom(ctx context.Context) map[string]string {
	a, _ := ctx.Value(actorKey{}).(map[string]string)
	return a
}
