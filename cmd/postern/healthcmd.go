package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// healthCommand asks the running daemon's admin listener for /healthz (or
// /readyz), for a container's HEALTHCHECK or an exec probe: the smallest
// image has no curl.
func healthCommand(load func() (*Config, error)) *cobra.Command {
	var ready bool
	var addr string
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Ask the running daemon whether it is alive (/healthz) or ready (--ready: /readyz); exit status 1 when not",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if addr == "" {
				cfg, err := load()
				if err != nil {
					return err
				}
				addr = cfg.Admin.MetricsListen
			}
			path := "/healthz"
			if ready {
				path = "/readyz"
			}
			url, err := healthURL(addr, path)
			if err != nil {
				return err
			}
			client := &http.Client{Timeout: 5 * time.Second}
			resp, err := client.Get(url)
			if err != nil {
				return fmt.Errorf("health: %w", err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			fmt.Fprint(c.OutOrStdout(), string(body))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s answered %s", url, resp.Status)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&ready, "ready", false, "ask /readyz (queue, listeners, DNS) instead of /healthz")
	cmd.Flags().StringVar(&addr, "addr", "", "the admin listener's host:port (default: admin.metrics_listen)")
	return cmd
}

// healthURL is where the admin listener at listen answers path, from this
// host: an unspecified address (":9587", "0.0.0.0:9587") is asked on
// loopback.
func healthURL(listen, path string) (string, error) {
	if listen == "" {
		return "", &configError{errors.New("admin.metrics_listen is empty: the admin listener, and so the health checks, are off")}
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", &configError{fmt.Errorf("admin.metrics_listen %q: %w", listen, err)}
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(strings.Trim(host, "[]"), port) + path, nil
}
