package resolver

// WaitingLookups counts the callers waiting for a shared resolution, so
// that a test can tell when every caller has joined one.
func (c *Client) WaitingLookups() int64 { return c.answers.waiting.Load() }

// BrokenGauge is the value of postern.dns.upstream.dnssec_broken.
func (c *Client) BrokenGauge() bool { return c.metrics.broken.Load() }
