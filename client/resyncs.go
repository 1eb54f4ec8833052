package client

// Resync tells that the events of a project after the last seq seen could not
// be replayed (joined_project with recovered:false). Reload the project's
// state from the API; the events that follow have a seq above Seq.
type Resync struct {
	ProjectID string
	Seq       int64
}

// Resyncs returns the channel of resync notifications. It never blocks the
// client: while nobody reads it, it keeps the latest notification of each
// project. It is closed by Close.
func (c *Client) Resyncs() <-chan Resync { return c.resyncs.out }
