# syntax=docker/dockerfile:1
# Postern in a container: a static binary on an empty image, run as an
# unprivileged user, its data_dir a volume.
#
#   docker build -t postern .
#   docker run -d --name postern -v postern-data:/var/lib/postern \
#     -p 587:2587 -p 465:2465 postern
#
# The image's configuration is deploy/container/postern.yaml (submission on
# 2587 and 2465, so no capability is needed to bind; the admin listener on
# loopback, for the HEALTHCHECK). Mount your own over
# /etc/postern/postern.yaml, and set secrets as POSTERN_* variables
# (POSTERN_ADMIN_PASSWORD). docker-compose.yaml runs it with Prometheus and
# Grafana; deploy/kubernetes/ has the manifests.

# The build stage's image: any with Go 1.26 and a shell. CI builds with a
# local image here (base images cannot be pulled on its machine).
ARG BUILDER=docker.io/library/golang:1.26-bookworm

FROM ${BUILDER} AS build
WORKDIR /src
# The module proxy to use (off: the module cache must have everything).
ARG GOPROXY=https://proxy.golang.org,direct
COPY go.mod go.sum ./
RUN GOPROXY=${GOPROXY} go mod download
COPY . .
ARG VERSION=devel
ARG COMMIT=""
ARG BUILD_DATE=""
# Static (no cgo, so no libc in the image), reproducible paths, no symbols.
RUN CGO_ENABLED=0 GOPROXY=${GOPROXY} go build -trimpath \
      -ldflags "-s -w -X main.buildVersion=${VERSION} -X main.buildCommit=${COMMIT} -X main.buildDate=${BUILD_DATE}" \
      -o /out/usr/local/bin/postern ./cmd/postern \
 && mkdir -p /out/etc/ssl/certs /out/var/lib/postern /out/tmp \
 && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ \
 && cp deploy/container/passwd deploy/container/group /out/etc/ \
 && cp deploy/container/postern.yaml /out/etc/postern.yaml.default \
 && chmod 0700 /out/var/lib/postern && chmod 1777 /out/tmp

FROM scratch
# The CA roots verify MTA-STS policy servers and MX certificates (PKIX).
COPY --from=build /out/etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/etc/passwd /out/etc/group /etc/
COPY --from=build /out/usr/local/bin/postern /usr/local/bin/postern
COPY --from=build /out/etc/postern.yaml.default /etc/postern/postern.yaml
COPY --from=build /out/tmp /tmp
# data_dir belongs to the service user (Postern refuses one that does not).
COPY --from=build --chown=10001:10001 /out/var/lib/postern /var/lib/postern
USER 10001:10001
# For "docker exec … postern queue list" and "kubectl exec": scratch sets none.
ENV PATH=/usr/local/bin
VOLUME ["/var/lib/postern"]
# Submission with STARTTLS, submission over TLS.
EXPOSE 2587 2465
ENTRYPOINT ["/usr/local/bin/postern"]
CMD ["serve", "-c", "/etc/postern/postern.yaml"]
# /healthz through the admin listener (the image has no curl).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/postern", "health", "-c", "/etc/postern/postern.yaml"]
# Longer than shutdown.timeout (30s): docker stop -t 45, or stop_grace_period.
STOPSIGNAL SIGTERM
