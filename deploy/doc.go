// Package deploy holds Postern's packaging: the container image's files
// (container/, with the Dockerfile and docker-compose.yaml at the top of
// the repository), the compose stack's Prometheus and Grafana provisioning
// (compose/) and the Kubernetes manifests (kubernetes/). It has no code: its
// tests check the packaging against the Kubernetes API types and against
// Postern's own configuration.
package deploy
