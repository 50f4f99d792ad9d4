package gateway

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// apiError is an error in the OpenAI error shape, with the status that carries it. Client
// messages are generic; the detailed reason goes to the operator's log and audit.
type apiError struct {
	status  int
	typ     string
	code    string
	message string
	retry   time.Duration
}

var (
	errUnauthenticated  = &apiError{status: http.StatusUnauthorized, typ: "invalid_request_error", code: "invalid_api_key", message: "Invalid or missing API key."}
	errStepUp           = &apiError{status: http.StatusUnauthorized, typ: "invalid_request_error", code: "insufficient_user_authentication", message: "Re-authenticate with multi-factor authentication to continue."}
	errForbidden        = &apiError{status: http.StatusForbidden, typ: "invalid_request_error", code: "permission_denied", message: "This request is not permitted."}
	errModelNotFound    = &apiError{status: http.StatusNotFound, typ: "invalid_request_error", code: "model_not_found", message: "The model does not exist or you do not have access to it."}
	errTooLarge         = &apiError{status: http.StatusRequestEntityTooLarge, typ: "invalid_request_error", code: "request_too_large", message: "Request body too large."}
	errNotFound         = &apiError{status: http.StatusNotFound, typ: "invalid_request_error", code: "not_found", message: "Unknown endpoint."}
	errMethod           = &apiError{status: http.StatusMethodNotAllowed, typ: "invalid_request_error", code: "method_not_allowed", message: "Method not allowed."}
	errModelUnavailable = &apiError{status: http.StatusServiceUnavailable, typ: "server_error", code: "model_unavailable", message: "The model is not available right now."}
	errUpstreamDown     = &apiError{status: http.StatusBadGateway, typ: "server_error", code: "upstream_unavailable", message: "The model server is unavailable."}
	errUpstreamSlow     = &apiError{status: http.StatusGatewayTimeout, typ: "server_error", code: "upstream_timeout", message: "The model server did not answer in time."}
	errLimitsDown       = &apiError{status: http.StatusServiceUnavailable, typ: "server_error", code: "limits_unavailable", message: "The service cannot apply rate limits right now; try again later."}
	errUnavailable      = &apiError{status: http.StatusServiceUnavailable, typ: "server_error", code: "service_unavailable", message: "The service cannot serve requests right now; try again later."}
	errStoreDown        = &apiError{status: http.StatusServiceUnavailable, typ: "server_error", code: "store_unavailable", message: "The service cannot verify credentials right now; try again later."}
	errAuditDown        = &apiError{status: http.StatusServiceUnavailable, typ: "server_error", code: "audit_unavailable", message: "The service cannot record requests right now; try again later."}
)

func badRequest(msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, typ: "invalid_request_error", code: "invalid_request", message: msg}
}

func rateLimited(retry time.Duration) *apiError {
	return &apiError{status: http.StatusTooManyRequests, typ: "rate_limit_error", code: "rate_limit_exceeded", message: "Rate limit reached; retry later.", retry: retry}
}

func (e *apiError) Error() string { return e.code }

// write sends the error; the one place statuses and the error body are produced.
func (e *apiError) write(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if e.retry > 0 {
		h.Set("Retry-After", strconv.Itoa(int(e.retry.Seconds()+0.999)))
	}
	w.WriteHeader(e.status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": e.message, "type": e.typ, "param": nil, "code": e.code}})
}
