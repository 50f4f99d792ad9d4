// Package sqlutil holds what the store and the shared log both do with database/sql.
package sqlutil

import (
	"context"
	"database/sql"
)

// InTx runs fn in a transaction on db: committed when fn returns nil, rolled back when it
// returns an error (which InTx returns) or panics (the panic goes on).
func InTx(ctx context.Context, db *sql.DB, fn func(*sql.Tx) error) (err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if r := recover(); r != nil {
			tx.Rollback()
			panic(r)
		}
	}()
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}
