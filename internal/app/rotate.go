package app

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/kms"
)

// RotateOptions choose the new KEK.
type RotateOptions struct {
	To          string // "local" or "pkcs11"; default: the current provider
	PKCS11Label string // new key label on the token; default: "strongroom-kek-UNIXTIME"
	DestroyOld  bool   // delete the old local key file after the rotation is recorded
	ConfigPath  string // config file to update; default DATA/config.json
}

// Rotate makes a new KEK, re-wraps every data key under it in one transaction (sealed
// files are untouched), then records it as current in the config. A crash between the two
// steps is safe: each wrapped key names its KEK, which is still found by id.
func (a *App) Rotate(ctx context.Context, o RotateOptions) (oldID, newID string, n int, err error) {
	oldID = a.KEK.ID()
	to := o.To
	if to == "" {
		to = "local"
		if strings.HasPrefix(oldID, "pkcs11:") {
			to = "pkcs11"
		}
	}
	var next kms.KEK
	switch to {
	case "local":
		id, err := kms.GenerateLocal(a.Config.KMS.KeyDir)
		if err != nil {
			return oldID, "", 0, err
		}
		next, err = kms.OpenLocal(kms.LocalPath(a.Config.KMS.KeyDir, id))
		if err != nil {
			return oldID, "", 0, err
		}
	case "pkcs11":
		label := o.PKCS11Label
		if label == "" {
			label = "strongroom-kek-" + strconv.FormatInt(time.Now().Unix(), 10)
		}
		if next, err = kms.OpenPKCS11(pkcs11Config(a.Config.KMS.PKCS11, label), true); err != nil {
			return oldID, "", 0, err
		}
	default:
		return oldID, "", 0, fmt.Errorf("rotate: unknown kms provider %q", to)
	}
	ids := map[string]string{"old_kek": oldID, "new_kek": next.ID()}
	if err := a.Audit(ctx, audit.Event{Kind: audit.KindKMSRotate, Decision: audit.Allow, Fields: ids}); err != nil {
		next.Close()
		return oldID, next.ID(), 0, err
	}
	if n, err = a.Keys.Rotate(ctx, next); err != nil {
		next.Close()
		a.Audit(ctx, audit.Event{Kind: audit.KindKMSRotate, Decision: audit.Deny, Reason: err.Error(), Fields: ids})
		return oldID, next.ID(), 0, err
	}
	// Record the new current KEK in the on-disk config (paths as written, not resolved).
	cfgPath := o.ConfigPath
	if cfgPath == "" {
		cfgPath = filepath.Join(a.DataDir, config.FileName)
	}
	raw, err := config.ReadRaw(cfgPath)
	if err != nil {
		return oldID, next.ID(), n, err
	}
	raw.KMS.Current = next.ID()
	if err := config.Write(cfgPath, raw); err != nil {
		return oldID, next.ID(), n, err
	}
	old := a.KEK
	a.KEK = next
	old.Close()
	if o.DestroyOld && strings.HasPrefix(oldID, "local-") {
		if err := os.Remove(kms.LocalPath(a.Config.KMS.KeyDir, oldID)); err != nil {
			return oldID, next.ID(), n, fmt.Errorf("rotate: recorded, but removing the old key file failed: %w", err)
		}
	}
	return oldID, next.ID(), n, nil
}
