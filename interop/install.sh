#!/usr/bin/env bash
# Installs what the interop suite (go test ./interop/) needs, from Debian
# packages (bookworm). Run as root:
#   sudo interop/install.sh
# Tools that coexist (knot, unbound, swaks, msmtp, python3-dkim, openssl)
# are installed normally. The four MTAs conflict as installed packages
# (each provides mail-transport-agent), so they are fetched with
# "apt-get download" and unpacked with "dpkg -x" into private trees under
# $POSTERN_INTEROP_ROOT (default /opt/postern-interop): <root>/postfix,
# <root>/exim4, <root>/opensmtpd, <root>/sendmail. Their shared-library
# dependencies are installed normally (they do not conflict). Nothing is
# started, no system MTA is replaced.
set -euo pipefail
root="${POSTERN_INTEROP_ROOT:-/opt/postern-interop}"
export DEBIAN_FRONTEND=noninteractive

# Packages must not start their services (knot and unbound would take
# port 53): deny it for the length of this script unless a policy exists.
cleanup=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
  cleanup="rm -f /usr/sbin/policy-rc.d"
fi
trap '$cleanup' EXIT

apt-get update -qq
# Tools, and the libraries the unpacked MTAs link against.
apt-get install -y -qq --no-install-recommends \
  knot unbound python3-dkim swaks libnet-ssleay-perl libauthen-sasl-perl msmtp openssl ca-certificates m4 netbase \
  libdb5.3 libicu72 libnsl2 libsasl2-2 libssl3 libcrypt1 libgnutls-dane0 \
  libgnutls30 libidn12 libidn2-0 libpcre2-8-0 libevent-2.1-7 libpam0g \
  zlib1g libldap-2.5-0 liblockfile1 libwrap0 >/dev/null

mkdir -p "$root"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; $cleanup' EXIT
# "apt-get download" writes into the current directory as the _apt user.
chmod 0777 "$tmp"
(cd "$tmp" && apt-get download -qq postfix exim4-daemon-light exim4-base \
  opensmtpd sendmail-bin sendmail-cf sendmail-base >/dev/null)
unpack() { # tree, package names...
  local tree="$root/$1"; shift
  rm -rf "$tree"; mkdir -p "$tree"
  for p in "$@"; do dpkg -x "$tmp"/"$p"_*.deb "$tree"; done
}
unpack postfix postfix
unpack exim4 exim4-daemon-light exim4-base
unpack opensmtpd opensmtpd
unpack sendmail sendmail-bin sendmail-cf sendmail-base
# The users the MTAs drop privileges to (their packages' maintainer
# scripts, which did not run, would have made them).
sysuser() { getent passwd "$1" >/dev/null || useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$1"; }
getent group postdrop >/dev/null || groupadd --system postdrop
sysuser postfix
sysuser Debian-exim
sysuser opensmtpd
sysuser opensmtpq
mkdir -p /var/lib/opensmtpd/empty
# Exim keeps root (needed for port 25) with -C only for a config named in
# its compiled-in TRUSTED_CONFIG_LIST; the suite writes its config here.
mkdir -p /etc/exim4
touch /etc/exim4/trusted_configs
grep -qxF "$root/exim4/interop.conf" /etc/exim4/trusted_configs ||
  echo "$root/exim4/interop.conf" >>/etc/exim4/trusted_configs
# Debian's unbound and knot packages may leave services enabled; the suite
# runs its own instances with its own configs on addresses of its own.
echo "interop tools installed; MTA trees in $root"
