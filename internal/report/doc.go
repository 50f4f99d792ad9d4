// Package report computes the reports that people outside the security team read — the
// compliance report over a period and the incident report — from the transparency log
// alone (plus, for incidents, the incident record that names its evidence), and renders
// them as JSON, CSV, HTML or PDF.
//
// # Compliance Report Format, version 1
//
// A compliance report is a JSON object (ComplianceReport): "format" is
// "strongroom.compliance/v1"; "period" the half-open interval [from, to) in UTC; "log" the
// signed checkpoint the report was computed at (its origin, size, root and the checkpoint
// note itself, signed by the log's key and any witnesses); "figures" everything computed.
// Figures are a function of the log's entries [0, size) and the period only: events whose
// "ts" lies in the period are counted, and request records inside audit.batch entries are
// read from their bundles and checked against the batch root. A model version's
// classification is the one the request record names, or else the last one the log
// recorded for it (model.import, model.register, model.set) before the request.
//
// Anyone with the log's public key and read access to the log can recompute a report:
// Verify opens the report's checkpoint, reads entries [0, size) from the log (which has
// only grown since), checks that they hash to the checkpoint's root, recomputes the
// figures and compares them with the report's, byte for byte as canonical JSON.
//
// A period the log does not cover is refused (ErrPeriod): one that starts before the
// log's first entry, ends in the future, or is empty. A covered period without events is
// a report that says so ("empty": true).
//
// # Incident Report Format, version 1
//
// An incident report (IncidentReport) is a JSON object valid against
// docs/incident-report.schema.json: what happened, when it was detected, the affected
// principals and models, the detector's evidence, the actions taken with their times, a
// timeline, and every log entry cited with its inclusion proof against a signed
// checkpoint (and, for a request record, its proof in its batch). Its "mappings" section
// fills the fields of the EU AI Act serious-incident report (Article 73) that the log can
// answer, and names the fields it cannot.
package report
