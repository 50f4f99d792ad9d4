package audit

import "github.com/strongroom/strongroom/internal/store"

// Kind names what an event records. Every kind Strongroom writes is listed here; a
// reader (search, reports, the console) matches on these constants, never on literals.
type Kind string

// Kinds, by who records them.
const (
	// The deployment and its keys.
	KindDeploymentInit Kind = "deployment.init" // init made the data directory
	KindKMSRotate      Kind = "kms.rotate"      // the KEK was rotated (allow) or the rotation failed (deny)
	KindPolicyLoad     Kind = "policy.load"     // a Cedar policy set came into force (each file's SHA-256)
	KindFileSeal       Kind = "file.seal"       // one file sealed
	KindFileUnseal     Kind = "file.unseal"     // one file unsealed

	// The inventory.
	KindModelImport   Kind = "model.import"   // a version was sealed, signed and listed
	KindModelRegister Kind = "model.register" // an external model's record was created
	KindModelSet      Kind = "model.set"      // a version's record changed (before, after, by)
	KindModelVerify   Kind = "model.verify"   // signature and digests checked
	KindModelUnseal   Kind = "model.unseal"   // weights written out in the clear (approved)
	KindModelDisable  Kind = "model.disable"  // no more leases on a version
	KindModelGC       Kind = "model.gc"       // unused keys and blobs removed
	KindModelExport   Kind = "model.export"   // a per-licensee marked copy was made
	KindModelTrace    Kind = "model.trace"    // a suspect copy was traced to a licensee (or none)
	KindScanRun       Kind = "scan.run"       // a scan ran
	KindScanFinding   Kind = "scan.finding"   // a scanned model derives from a protected one

	// Principals and keys.
	KindPrincipalPut    Kind = "principal.put"           // a principal was created or changed
	KindScreeningHit    Kind = "principal.screening_hit" // a denied-party list matched
	KindPrincipalTOTP   Kind = "principal.totp"          // a TOTP secret was enrolled
	KindKeyCreate       Kind = "key.create"
	KindKeyRotate       Kind = "key.rotate"
	KindKeyRevoke       Kind = "key.revoke"
	KindWatermarkDetect Kind = "watermark.detect" // text was checked for a tenant's watermark

	// Custody.
	KindRuntimeToken    Kind = "runtime.token"    // a join token was issued
	KindRuntimeJoin     Kind = "runtime.join"     // a runtime joined (or was refused)
	KindRuntimeCert     Kind = "runtime.cert"     // a runtime's certificate was renewed
	KindRuntimeRevoke   Kind = "runtime.revoke"   // a runtime's identity was revoked
	KindRuntimeAuth     Kind = "runtime.auth"     // a runtime's certificate was refused
	KindLeaseGrant      Kind = "lease.grant"      // a lease was granted or refused
	KindLeaseRenew      Kind = "lease.renew"      // a lease was renewed or its renewal refused
	KindLeaseRevoke     Kind = "lease.revoke"     // a lease was revoked
	KindLeaseEnd        Kind = "lease.end"        // a lease ended (released, expired)
	KindApprovalRequest Kind = "approval.request" // a restricted action waits for approvers
	KindApprovalApprove Kind = "approval.approve" // an approver approved (or was refused)
	KindApprovalDeny    Kind = "approval.deny"    // an approver denied (or was refused)
	KindAlertEgress     Kind = "alert.egress"     // a daily egress budget ran out

	// The gateway.
	KindRequest         Kind = "gateway.request"         // one request record (in a batch)
	KindStreamStart     Kind = "gateway.stream_start"    // a stream's record before its first byte (in a batch)
	KindUnauthenticated Kind = "gateway.unauthenticated" // refusals before identification, summed

	// Detection and response.
	KindDetectAlert   Kind = "detect.alert"   // a detector flagged a principal
	KindDetectAction  Kind = "detect.action"  // a sanction was imposed
	KindDetectLift    Kind = "detect.lift"    // a sanction was lifted
	KindDetectMode    Kind = "detect.mode"    // a detector was promoted or demoted (shadow/enforce)
	KindIncidentClose Kind = "incident.close" // an incident was closed, with a note

	// The log itself (the batch entry, KindBatch, is in batch.go).
	KindForeignEntry Kind = "audit.foreign_entry" // an operator acknowledged an entry no replica wrote (foreign.go)
	KindLogRepair    Kind = "audit.log_repair"    // an operator cut a poisoned unsigned tail back and re-appended it (repair.go)
	KindRefusedEntry Kind = "audit.refused_entry" // an entry reported not recorded (its operation refused) was found in the log (lostcommit.go)
	// KindUnsealedEntry is never written: the search index lists a shared log's entries
	// that no replica sealed under it (Log.markUnsealed), whatever kind they claim.
	KindUnsealedEntry Kind = "audit.unsealed_entry"
	// KindCopiedEntry is never written: the search index lists an entry whose bytes repeat
	// an earlier entry's under it, with no principal (store/auditcopies.go).
	KindCopiedEntry Kind = store.KindCopiedEntry

	// The console (internal/web); what its users do is recorded under the kinds above,
	// with the user as actor.
	KindConsoleLogin  Kind = "console.login"        // a sign-in (allow) or a refused one (deny), with its method
	KindConsoleStepUp Kind = "console.stepup"       // a TOTP step-up for destructive actions
	KindConsoleAction Kind = "console.action"       // an operation asked for, before it is done (deny: refused)
	KindConsoleExport Kind = "console.audit_export" // the audit explorer's export, with its query
)
