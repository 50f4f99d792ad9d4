// Package obs is the vocabulary the gateway and the detectors share: a request as the
// detectors observe it (Observation), and the actions detectors impose in return (Action).
//
// It is a leaf package so that neither side imports the other: the gateway sends
// observations and enforces actions without knowing the detectors, and the detectors
// (including the offline `strongroom detect replay`) never link the gateway, its policy
// engine or its limiters.
package obs

import "time"

// Observation is one request as the detectors see it.
type Observation struct {
	TS               time.Time
	Principal        string
	Tenant           string
	IP               string
	Model            string
	Endpoint         string
	Prompt           []byte // raw JSON of messages/prompt/input; memory only, never logged
	MaxTokens        int
	Logprobs         bool
	TopLogprobs      int
	LogitBias        map[string]float64
	N                int
	PromptTokens     int
	CompletionTokens int
	Decision         string
}

// Observer sees every request's features (the request trace of DESIGN.md).
type Observer interface {
	Observe(o Observation)
}

// Action is what a detector does about a principal once its evidence is enough; the
// gateway enforces all but Alert. The strings are in the config (detect.actions, ladders),
// the audit log (detect.alert, detect.action) and the store (sanctions): never change one.
type Action string

// Actions, weakest first (Severity).
const (
	None          Action = ""               // nothing in force
	Alert         Action = "alert"          // recorded, nothing imposed
	Throttle      Action = "throttle"       // one request at a time, at most a few per minute
	StepUp        Action = "step_up"        // refused until the principal authenticates with MFA again
	StripLogprobs Action = "strip_logprobs" // no logprobs, top_logprobs or logit_bias
	Suspend       Action = "suspend"        // every request refused
)

var severity = map[Action]int{Alert: 1, Throttle: 2, StepUp: 3, StripLogprobs: 4, Suspend: 5}

// Severity orders actions: 0 for None or an unknown action, 1 for Alert, up to 5 for
// Suspend. Actions from 2 (Throttle) on are sanctions the gateway enforces.
func (a Action) Severity() int { return severity[a] }

// Sanction reports whether a is imposed on the principal (more than an Alert).
func (a Action) Sanction() bool { return severity[a] >= 2 }

// Valid reports whether a is one of the actions above other than None.
func (a Action) Valid() bool { return severity[a] > 0 }
