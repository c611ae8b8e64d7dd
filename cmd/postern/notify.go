package main

import (
	"net"
	"os"
)

// sdNotify tells systemd the daemon's state under Type=notify (sd_notify(3)):
// "READY=1" once the listeners accept, so that "systemctl start" returns
// only then and fails when serve does; "STOPPING=1" when the drain begins.
// Outside systemd (no NOTIFY_SOCKET) it does nothing. It never fails the
// daemon: systemd times the start out by itself if READY never comes.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' { // an abstract socket
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}
