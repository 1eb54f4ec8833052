package handlers

import (
	"io/fs"
	"net/http"

	"github.com/labstack/echo/v4"
)

// serveWeb mounts the demo page and the browser client from files.
func serveWeb(e *echo.Echo, files fs.FS) {
	serve := func(name, ctype string) echo.HandlerFunc {
		return func(c echo.Context) error {
			b, err := fs.ReadFile(files, name)
			if err != nil {
				return echo.ErrNotFound
			}
			// The client changes with the server: a cached copy could
			// speak an older protocol.
			c.Response().Header().Set("Cache-Control", "no-cache")
			return c.Blob(http.StatusOK, ctype, b)
		}
	}
	e.GET("/", serve("index.html", "text/html; charset=utf-8"))
	e.GET("/client.js", serve("client.js", "text/javascript; charset=utf-8"))
	e.GET("/client.d.ts", serve("client.d.ts", "application/typescript; charset=utf-8"))
}

// apiDocument serves one of the machine-readable API documents of docs/.
func apiDocument(b []byte) echo.HandlerFunc {
	return func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", "no-cache")
		return c.Blob(http.StatusOK, "application/yaml", b)
	}
}
