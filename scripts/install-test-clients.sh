#!/usr/bin/env bash
# Install what the tests run against, when missing, from Debian: strongSwan's pki
# (strongswan-pki) with the curl fetcher (libstrongswan-extra-plugins: without it pki cannot
# fetch over HTTP), openssl, and a PostgreSQL server (the tests start a throwaway one with
# its initdb; Debian keeps that in /usr/lib/postgresql/<version>/bin), SoftHSM2 for the PKCS#11
# tests (softhsm2, with opensc's pkcs11-tool to look inside a token), and headless Chromium with
# its driver for the console's browser tests (chromium, chromium-driver), and a real Go SCEP
# client (scep: micromdm's scepclient, whose CMS is go.mozilla.org/pkcs7).
set -euo pipefail
wanted=(strongswan-pki libstrongswan-extra-plugins openssl postgresql softhsm2 opensc chromium chromium-driver scep)
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing test clients: ${missing[*]}" >&2
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to install ${missing[*]}; run: apt-get install ${missing[*]}" >&2; return 1; fi
}
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -q
as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
