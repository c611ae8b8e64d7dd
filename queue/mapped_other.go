//go:build !linux

package queue

import bolt "go.etcd.io/bbolt"

// dropMapped does nothing off Linux (see mapped_linux.go).
func dropMapped(*bolt.DB, int64) {}
