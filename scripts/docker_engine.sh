#!/usr/bin/env bash
# A Docker engine for the image tests (tests/deploy, marker `docker`), shared by the test runs that
# use it at the same time:
#
#   scripts/docker_engine.sh start PID   an engine this user can reach for process PID, or a loud failure
#   scripts/docker_engine.sh stop PID    PID is done with it; the last user stops the dockerd `start` started
#
# `start` uses an engine that already answers `docker info` (a system engine, or one started by hand)
# and never stops it. Otherwise it starts Debian's dockerd as root (itself when root, else through sudo
# -n: dockerd needs root), its socket group set to this user's group so that the tests reach it without
# sudo, and records its PID. `stop` stops that dockerd by its PID once no other live process that
# called `start` still uses it. State (PID, users, dockerd's log): /tmp/deepserve-docker-engine-<uid>
# (DEEPSERVE_ENGINE_STATE).
#
# The dockerd started here creates no docker0 bridge, no iptables rules and leaves ip_forward alone
# (--bridge=none --iptables=false --ip-forward=false): the tests run every container and build on the
# host network, on 127.0.0.1. Images and the build cache stay in /var/lib/docker between runs: that is
# the cache of the base images and of the layers.
#
# Fails (exit 1, with the reason) when no engine can be had: dockerd not installed (`make test`
# installs docker.io), an engine running that this user cannot reach, or neither root nor sudo.
set -euo pipefail
PATH=$PATH:/usr/sbin:/sbin # dockerd lives there, outside a user's PATH

die() { echo "docker_engine.sh: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 start|stop PID"
action=$1
user=$2
state=${DEEPSERVE_ENGINE_STATE:-/tmp/deepserve-docker-engine-$(id -u)}
mkdir -p "$state/users"
pidfile=$state/dockerd.pid
log=$state/dockerd.log
docker=${DOCKER:-docker}

if [ "$(id -u)" = 0 ]; then
    sudo=()
elif command -v sudo >/dev/null; then
    sudo=(sudo -n) # -n: never wait for a password prompt nobody sees (pytest runs this without a terminal)
else
    sudo=(none)
fi

reachable() { "$docker" info >/dev/null 2>&1; }
ours_alive() { [ -f "$pidfile" ] && "${sudo[@]}" kill -0 "$(cat "$pidfile")" 2>/dev/null; }

# One start or stop at a time.
exec 9>"$state/lock"
flock 9

case $action in
start)
    if reachable; then
        touch "$state/users/$user"
        if ours_alive; then
            echo "docker_engine.sh: sharing the dockerd started for another test run (PID $(cat "$pidfile"))" >&2
        else
            rm -f "$state/users/$user"
            echo "docker_engine.sh: an engine already answers; using it and leaving it running" >&2
        fi
        exit 0
    fi
    command -v dockerd >/dev/null || die "dockerd is not installed (apt-get install docker.io)"
    if [ -S /var/run/docker.sock ] && pgrep -x dockerd >/dev/null; then
        die "a dockerd runs but this user cannot reach it ($("$docker" info 2>&1 | tail -1)); run as root or join its socket's group"
    fi
    [ "${sudo[0]:-}" != none ] || die "dockerd needs root: run as root or with sudo"
    rm -f "$state/users"/*
    # Detached (setsid): a Ctrl-C of the test run reaches the tests, whose teardown calls `stop`. Without
    # the lock's descriptor (9>&-), which dockerd would otherwise hold for its whole life.
    # shellcheck disable=SC2016 # $1..$3 are the inner shell's arguments
    "${sudo[@]}" setsid sh -c 'dockerd --group "$1" --bridge=none --iptables=false --ip-forward=false \
        >"$2" 2>&1 </dev/null & echo $! >"$3"' sh "$(id -g)" "$log" "$pidfile" 9>&- \
        || die "could not start dockerd (when not root: sudo without a password prompt, e.g. after sudo -v)"
    pid=$(cat "$pidfile")
    for _ in $(seq 120); do
        if reachable; then
            touch "$state/users/$user"
            echo "docker_engine.sh: started dockerd (PID $pid, log $log)" >&2
            exit 0
        fi
        ours_alive || { tail -20 "$log" >&2; rm -f "$pidfile"; die "dockerd exited"; }
        sleep 0.5
    done
    tail -20 "$log" >&2
    die "dockerd (PID $pid) did not answer within 60 s; it still runs: $0 stop $user"
    ;;
stop)
    rm -f "$state/users/$user"
    ours_alive || { rm -f "$pidfile"; exit 0; } # not started here: left alone
    for other in "$state/users"/*; do
        [ -e "$other" ] || continue
        if [ -d "/proc/$(basename "$other")" ]; then
            echo "docker_engine.sh: dockerd left running for test run $(basename "$other")" >&2
            exit 0
        fi
        rm -f "$other" # a run that died without `stop`
    done
    pid=$(cat "$pidfile")
    # Bounded disk: build cache nobody used for 3 days goes (each dependency change adds ~1 GB of
    # layers); the images (the base images' stand-ins) and the recent cache stay.
    "$docker" builder prune --force --filter until=72h >/dev/null 2>&1 || true
    "${sudo[@]}" kill -TERM "$pid"
    # dockerd stops its containers (10 s each at most) and its containerd before exiting.
    for _ in $(seq 120); do
        "${sudo[@]}" kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if "${sudo[@]}" kill -0 "$pid" 2>/dev/null; then
        echo "docker_engine.sh: dockerd (PID $pid) ignored SIGTERM for 60 s; killing it" >&2
        "${sudo[@]}" kill -KILL "$pid"
    fi
    rm -f "$pidfile"
    echo "docker_engine.sh: stopped dockerd (PID $pid)" >&2
    ;;
*)
    die "usage: $0 start|stop PID"
    ;;
esac
