package protocol

// Client events: the "event" of a frame a client sends (section 3).
const (
	Auth         = "auth"
	JoinProject  = "join_project"
	LeaveProject = "leave_project"
	Ping         = "ping"
	TypingStart  = "typing_start"
	TypingStop   = "typing_stop"
)

// Server events: the "event" of a message the server sends that is not a
// domain event. Typing events go out under the client's own names.
const (
	Authenticated  = "authenticated"
	JoinedProject  = "joined_project"
	LeftProject    = "left_project"
	Pong           = "pong"
	ErrorEvent     = "error"
	ServerShutdown = "server_shutdown"
)

// Reasons of left_project.
const (
	ReasonRequested     = "requested"
	ReasonAccessRevoked = "access_revoked"
)

// DomainEvents are the domain events of section 5: the only names a trigger
// or POST /api/events may publish to a project.
var DomainEvents = map[string]bool{
	"story_uploaded": true, "story_processing": true, "story_processed": true,
	"transcript_updated": true, "interaction_added": true, "interaction_updated": true,
	"export_started": true, "export_progress": true, "export_ready": true, "export_failed": true,
}

// Presence events (section 11): the server sends them when a project's
// members come and go.
const (
	UserOnline  = "user_online"
	UserOffline = "user_offline"
)

// ServerOwned reports whether name is one of the server's own event names:
// a domain event, a server message, a client event or a presence event. A
// user-targeted event may not take one (section 8): a client would read it
// as the server's own message.
func ServerOwned(name string) bool {
	if DomainEvents[name] {
		return true
	}
	switch name {
	case Authenticated, JoinedProject, LeftProject, Pong, ErrorEvent, ServerShutdown,
		Auth, JoinProject, LeaveProject, Ping, TypingStart, TypingStop,
		UserOnline, UserOffline:
		return true
	}
	return false
}

// ClientEvent returns name when it is an event clients may send, else
// "other": a bounded label set for metrics.
func ClientEvent(name string) string {
	switch name {
	case Auth, JoinProject, LeaveProject, Ping, TypingStart, TypingStop:
		return name
	}
	return "other"
}

// Error codes (section 6).
const (
	CodeUnauthorized         = "UNAUTHORIZED"
	CodeTokenExpired         = "TOKEN_EXPIRED"
	CodeProjectAccessDenied  = "PROJECT_ACCESS_DENIED"
	CodeNotInProject         = "NOT_IN_PROJECT"
	CodeRateLimitExceeded    = "RATE_LIMIT_EXCEEDED"
	CodeInvalidMessage       = "INVALID_MESSAGE"
	CodeUnknownEvent         = "UNKNOWN_EVENT"
	CodeJoinProjectError     = "JOIN_PROJECT_ERROR"
	CodeLeaveProjectError    = "LEAVE_PROJECT_ERROR"
	CodeInternalError        = "INTERNAL_ERROR"
	CodeForbidden            = "FORBIDDEN"
	CodeNotFound             = "NOT_FOUND"
	CodeUnsupportedMediaType = "UNSUPPORTED_MEDIA_TYPE"
)

// WebSocket close codes (section 3).
const (
	CloseGoingAway       = 1001 // server shutting down
	CloseAbnormal        = 1006 // never sent: a connection that ended without a close frame (logs)
	ClosePolicy          = 1008 // origin not allowed
	CloseTooBig          = 1009 // frame over the size limit
	CloseTooSlow         = 4001 // fell too far behind: reconnect and resume
	CloseUnauthenticated = 4401 // unauthenticated or token expired
	CloseNoAuth          = 4408 // no auth frame in time
	CloseTooMany         = 4429 // too many connections, or sustained abuse
)

// Transport names, as stats and metrics label them.
const (
	WebSocket = "websocket"
	SSE       = "sse"
)
