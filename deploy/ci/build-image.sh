#!/usr/bin/env bash
# Builds the Dockerfile with podman, as CI does, and checks the image.
#
# CI's machine cannot pull base images, so the build stage runs on a local
# image (BUILDER) made of busybox, the CA roots and, mounted read-only, this
# machine's Go toolchain and module cache (GOPROXY=off: nothing is fetched).
# Everything else is the Dockerfile as users build it. Containers cannot
# run there (crun has no usable cgroups), so the checks read the image:
# its metadata, and its binary and configuration run under chroot.
#
# Exit status: 0 built and checked, 1 the Dockerfile or the image is wrong,
# 3 podman cannot build on this machine at all (nothing was checked).
set -euo pipefail
cd "$(dirname "$0")/../.."

podman_build() { podman build --isolation=chroot --format docker "$@"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp /bin/busybox /etc/ssl/certs/ca-certificates.crt "$work/"
cat >"$work/Containerfile" <<'END'
FROM scratch
COPY busybox /bin/busybox
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p /tmp /root && chmod 1777 /tmp"]
ENV PATH=/usr/local/go/bin:/bin GOPATH=/go GOTOOLCHAIN=local HOME=/root
END
if ! podman_build -q -t localhost/postern-ci-builder:latest "$work" >"$work/builder.log" 2>&1; then
  echo "podman cannot build images on this machine:"; tail -5 "$work/builder.log"
  exit 3
fi

goroot=$(go env GOROOT)
modcache=$(go env GOMODCACHE)
go mod download
podman_build -t localhost/postern:ci \
  --build-arg BUILDER=localhost/postern-ci-builder:latest --build-arg GOPROXY=off \
  --build-arg VERSION=ci --build-arg COMMIT="$(git rev-parse HEAD)" --build-arg BUILD_DATE="$(date -u +%FT%TZ)" \
  -v "$goroot:/usr/local/go:ro" -v "$modcache:/go/pkg/mod:ro" .

fail=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }
meta() { podman image inspect localhost/postern:ci --format "$1"; }
size=$(meta '{{.Size}}')
check "image is small ($((size / 1000000)) MB < 40 MB)" '[ "$size" -lt 40000000 ]'
check "runs as uid 10001" '[ "$(meta "{{.Config.User}}")" = "10001:10001" ]'
check "data_dir is a volume" 'meta "{{.Config.Volumes}}" | grep -q /var/lib/postern'
check "HEALTHCHECK runs postern health" 'meta "{{.Config.Healthcheck.Test}}" | grep -q "postern health"'
root=$(podman image mount localhost/postern:ci)
check "one layer of files: the binary, CA roots, passwd, the configuration" \
  '[ "$(cd "$root" && find . -type f | sort | tr "\n" " ")" = "./etc/group ./etc/passwd ./etc/postern/postern.yaml ./etc/ssl/certs/ca-certificates.crt ./usr/local/bin/postern " ]'
check "data_dir belongs to the service user" '[ "$(stat -c %u:%g "$root/var/lib/postern")" = "10001:10001" ]'
check "the binary is static" 'file "$root/usr/local/bin/postern" | grep -q "statically linked"'
check "postern version names the commit" 'chroot --userspec=10001:10001 "$root" /usr/local/bin/postern version | grep -q "commit:  $(git rev-parse HEAD)"'
check "the image's configuration passes config check" \
  'chroot --userspec=10001:10001 "$root" /usr/local/bin/postern config check -c /etc/postern/postern.yaml'
podman image unmount localhost/postern:ci >/dev/null
exit $fail
