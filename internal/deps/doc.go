// Package deps holds no code: its test checks the dependency rules of docs/DESIGN.md
// ("Assembly and dependency rules") over the whole module, so that an import pointing the
// wrong way fails `go test ./...` instead of growing unnoticed.
package deps
