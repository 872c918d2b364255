#!/usr/bin/env bash
# The base images of Dockerfile and docker-compose.yml, for an engine that may reach no registry.
#
#   scripts/make_base_images.sh [--ca-bundle FILE] [--env-file FILE] [--no-pull] [--force]
#                               [--mirror URL] [--security-mirror URL]
#
# For each base it prints the image to use on stdout, as the build argument / variable that takes it
# (progress goes to stderr):
#
#   PYTHON_IMAGE=...       Dockerfile's serve, serve-deps and build-models stages (--build-arg)
#   CUDA_IMAGE=...         Dockerfile's gpu stage (--build-arg)
#   PROMETHEUS_IMAGE=...   docker-compose.yml's prometheus service (environment variable)
#
# e.g.  eval "$(scripts/make_base_images.sh)"
#       DOCKER_BUILDKIT=1 docker build --network host --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" -t deepserve .
#
# The official image (the default of the Dockerfile's ARG, of the compose file's variable) is used when
# the engine has it or can pull it: where a registry is reachable nothing changes. The CUDA image
# (several GB) is used when present and never pulled here. Otherwise a local stand-in made from Debian
# 12 packages takes its place, under its own name, so that no official name ever points at a stand-in
# (other builds on the same engine, and a later `docker pull`, see the real images):
#
#   deepserve-local/debian:bookworm        debootstrap --variant=minbase of bookworm (stand-in for CUDA_IMAGE:
#                                          the gpu stage installs python3.11 with apt, as on Ubuntu)
#   deepserve-local/python:3.11-bookworm   Debian's python3 3.11 at /usr/local (deploy/base-images/python.Dockerfile)
#   deepserve-local/prometheus:bookworm    Debian's prometheus 2.42, official layout (deploy/base-images/prometheus.Dockerfile)
#
# A stand-in is made only when missing, or when its recipe (this script, its Dockerfile) or the CA
# bundle changed (label deepserve.standin.key); --force remakes them. The stand-ins trust the CA bundle
# given (default: this host's system bundle), written where Debian keeps its trust store
# (/etc/ssl/certs/ca-certificates.crt, which Debian's pip and OpenSSL read), so that pip inside a build
# trusts what the host trusts, a TLS-intercepting proxy included. Certificates are public; no host
# path, host name or resolver is kept in the images.
#
# Needs root for debootstrap (itself when root, else sudo), debootstrap, and a reachable Debian mirror.
set -euo pipefail
PATH=$PATH:/usr/sbin:/sbin # dockerd, debootstrap and chroot live there, outside a user's PATH

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ca_bundle=/etc/ssl/certs/ca-certificates.crt
env_file=
pull=1
force=0
mirror=http://deb.debian.org/debian
security_mirror=http://deb.debian.org/debian-security
suite=bookworm
docker=${DOCKER:-docker}

die() { echo "make_base_images.sh: $*" >&2; exit 1; }
say() { echo "make_base_images.sh: $*" >&2; }

while [ $# -gt 0 ]; do
    case $1 in
    --ca-bundle) ca_bundle=$2; shift 2 ;;
    --env-file) env_file=$2; shift 2 ;;
    --no-pull) pull=0; shift ;;
    --force) force=1; shift ;;
    --mirror) mirror=$2; shift 2 ;;
    --security-mirror) security_mirror=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
done

[ -s "$ca_bundle" ] || die "CA bundle $ca_bundle is missing or empty (--ca-bundle FILE)"
grep -q 'BEGIN CERTIFICATE' "$ca_bundle" || die "$ca_bundle holds no PEM certificate"
"$docker" info >/dev/null 2>&1 || die "no Docker engine answers (scripts/docker_engine.sh start DIR)"

if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo -n); fi

# The official names, read from the files that use them (one place to change a tag).
arg_default() { sed -n "s/^ARG $1=//p" "$ROOT/Dockerfile" | head -1; }
official_python=$(arg_default PYTHON_IMAGE)
official_cuda=$(arg_default CUDA_IMAGE)
# shellcheck disable=SC2016 # the ${...} is the compose file's text, not this shell's
official_prometheus=$(sed -n 's/^ *image: \${PROMETHEUS_IMAGE:-\(.*\)}$/\1/p' "$ROOT/docker-compose.yml" | head -1)
if [ -z "$official_python" ] || [ -z "$official_cuda" ] || [ -z "$official_prometheus" ]; then
    die "could not read the base image names from Dockerfile and docker-compose.yml"
fi

local_debian=deepserve-local/debian:$suite
local_python=deepserve-local/python:3.11-$suite
local_prometheus=deepserve-local/prometheus:$suite

sha() { sha256sum | cut -c1-16; }
ca_sum=$(sha <"$ca_bundle")
key_debian=$(cat "$0" <(echo "$mirror $security_mirror $suite $ca_sum") | sha)
key_python=$(cat <(echo "$key_debian") "$ROOT/deploy/base-images/python.Dockerfile" | sha)
key_prometheus=$(cat <(echo "$key_debian") "$ROOT/deploy/base-images/prometheus.Dockerfile" | sha)

present() { "$docker" image inspect "$1" >/dev/null 2>&1; }
current() { # present with the label of this recipe
    [ "$force" = 0 ] && present "$1" \
        && [ "$("$docker" image inspect -f '{{index .Config.Labels "deepserve.standin.key"}}' "$1")" = "$2" ]
}
pulled() {
    [ "$pull" = 1 ] || return 1
    say "trying docker pull $1"
    timeout 300 "$docker" pull -q "$1" >/dev/null 2>&1
}

remade=0
replaced=() # the images a remade stand-in replaces, removed at the end (children first)
remember() { replaced+=("$("$docker" image inspect -f '{{.Id}}' "$1" 2>/dev/null)") || true; }
make_debian() {
    current "$local_debian" "$key_debian" && return 0
    remember "$local_debian"
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    local started tmp
    started=$(date +%s)
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064 # expand now: the trap must remove this very directory
    trap "${sudo[*]} rm -rf '$tmp'" EXIT
    say "debootstrap --variant=minbase $suite from $mirror (about a minute)"
    "${sudo[@]}" debootstrap --variant=minbase "$suite" "$tmp/rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1 \
        || { tail -20 "$tmp/debootstrap.log" >&2; die "debootstrap failed"; }
    # The trust store, the archive with its updates, what Debian's slim images drop, then the updates.
    # Also a local certificate of ca-certificates, so that installing that package later (python3 pulls
    # it in) regenerates the bundle with these certificates in it instead of Debian's alone.
    "${sudo[@]}" install -D -m 0644 "$ca_bundle" "$tmp/rootfs/etc/ssl/certs/ca-certificates.crt"
    "${sudo[@]}" install -D -m 0644 "$ca_bundle" "$tmp/rootfs/usr/local/share/ca-certificates/build-host-bundle.crt"
    "${sudo[@]}" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -eu -s "$tmp/rootfs" "$mirror" "$security_mirror" \
        "$suite" >"$tmp/configure.log" 2>&1 <<'CONFIGURE' || { tail -20 "$tmp/configure.log" >&2; die "configuring the rootfs failed"; }
rootfs=$1 mirror=$2 security=$3 suite=$4
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
# As in Debian's slim images: no documentation, manual pages or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
# Package scripts never start services in a container.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
chroot "$rootfs" apt-get update -q
chroot "$rootfs" apt-get upgrade --yes -q
chroot "$rootfs" apt-get clean
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs/usr/share/man"/* "$rootfs/usr/share/info"/* "$rootfs/var/lib/apt/lists"/* \
    "$rootfs/var/cache/apt"/*.bin "$rootfs/var/log"/*.log "$rootfs/var/log/apt"/*
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
# The build host's resolver and name: Docker provides its own at run time.
rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
: >"$rootfs/etc/hostname"
CONFIGURE
    say "docker import $local_debian"
    "${sudo[@]}" tar -C "$tmp/rootfs" --numeric-owner -c . | "$docker" import \
        --change "LABEL deepserve.standin.key=$key_debian" \
        --change 'LABEL org.opencontainers.image.description="Debian 12 minbase (debootstrap), made by scripts/make_base_images.sh"' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        - "$local_debian" >/dev/null
    "${sudo[@]}" rm -rf "$tmp"
    trap - EXIT
    say "$local_debian made in $(($(date +%s) - started)) s"
    remade=1
}

build_standin() { # name key dockerfile
    if [ "$remade" = 0 ] && current "$1" "$2"; then return 0; fi
    local started
    started=$(date +%s)
    remember "$1"
    say "building $1 from ${3#"$ROOT"/}"
    # The engine may have no bridge network (scripts/docker_engine.sh starts it so): apt runs on the host's.
    "$docker" build --network host --build-arg "BASE=$local_debian" --label "deepserve.standin.key=$2" \
        --label "org.opencontainers.image.description=stand-in made by scripts/make_base_images.sh" \
        -f "$3" -t "$1" "$ROOT/deploy/base-images" >&2
    say "$1 made in $(($(date +%s) - started)) s"
}

# One choice per base: the official image, else the stand-in (made when missing or stale).
python_image=$official_python
cuda_image=$official_cuda
prometheus_image=$official_prometheus
need_python=0 need_prometheus=0 need_cuda=0
present "$official_python" || pulled "$official_python" || need_python=1
present "$official_prometheus" || pulled "$official_prometheus" || need_prometheus=1
present "$official_cuda" || need_cuda=1
if [ $((need_python + need_prometheus + need_cuda)) -gt 0 ]; then
    make_debian
    if [ "$need_python" = 1 ]; then
        build_standin "$local_python" "$key_python" "$ROOT/deploy/base-images/python.Dockerfile"
        python_image=$local_python
    fi
    if [ "$need_prometheus" = 1 ]; then
        build_standin "$local_prometheus" "$key_prometheus" "$ROOT/deploy/base-images/prometheus.Dockerfile"
        prometheus_image=$local_prometheus
    fi
    [ "$need_cuda" = 0 ] || cuda_image=$local_debian
fi

for ((i = ${#replaced[@]} - 1; i >= 0; i--)); do
    # Still in use (a container, another tag) or already gone: then it stays, and that is fine.
    [ -z "${replaced[i]}" ] || "$docker" rmi "${replaced[i]}" >/dev/null 2>&1 || true
done

result="PYTHON_IMAGE=$python_image
CUDA_IMAGE=$cuda_image
PROMETHEUS_IMAGE=$prometheus_image"
echo "$result"
[ -z "$env_file" ] || echo "$result" >"$env_file"
