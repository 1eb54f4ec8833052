package handlers

import (
	"errors"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/saga-family/sagapush/internal/protocol"
)

// apiError is an error answer: the status and the contract's error. Handlers
// and middleware return it; writeError alone writes it.
type apiError struct {
	status int
	err    protocol.Error
}

func (e *apiError) Error() string { return e.err.Error() }

func newError(status int, code, message string) *apiError {
	return &apiError{status: status, err: protocol.Error{Code: code, Message: message}}
}

// badRequest is the 400 of a body the API does not take.
func badRequest(message string) *apiError {
	return newError(http.StatusBadRequest, protocol.CodeInvalidMessage, message)
}

// writeError is the server's one HTTPErrorHandler: every error, ours or
// echo's (404, 405, 413 ...), is answered as {"error":{"code","message"}}.
func writeError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	e := asAPIError(err)
	c.JSON(e.status, protocol.HTTPError{Error: e.err})
}

// asAPIError maps any error to its answer. echo's errors keep their status
// and message, with the code the contract gives that status; anything else
// is a 500 whose cause is not shown.
func asAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var he *echo.HTTPError
	if !errors.As(err, &he) {
		return newError(http.StatusInternalServerError, protocol.CodeInternalError, "internal error")
	}
	if he.Code == http.StatusMethodNotAllowed {
		// The contract knows no 405: a method a path does not take is no
		// such route (docs/protocol.md section 7), under /api and elsewhere.
		return newError(http.StatusNotFound, protocol.CodeNotFound, "no such route for this method")
	}
	msg, ok := he.Message.(string)
	if !ok {
		msg = http.StatusText(he.Code)
	}
	code := protocol.CodeInternalError
	switch {
	case he.Code == http.StatusUnauthorized:
		code = protocol.CodeUnauthorized
	case he.Code == http.StatusForbidden:
		code = protocol.CodeForbidden
	case he.Code == http.StatusNotFound:
		code = protocol.CodeNotFound
	case he.Code < 500: // 413 among them: a bad or oversized body
		code = protocol.CodeInvalidMessage
	}
	return newError(he.Code, code, msg)
}
