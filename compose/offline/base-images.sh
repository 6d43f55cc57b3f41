#!/bin/sh
# The base images memring's compose cluster needs, made without a registry (air-gapped hosts,
# CI here): a Debian bookworm root made by debootstrap from the host's apt sources, imported
# with `docker import`, tagged as the python image (Debian's python3 3.11 with pip, what
# python:3.11-slim gives) and as the etcd image (Debian's etcd 3.4 with etcdctl, at the paths
# of quay.io/coreos/etcd: /usr/local/bin/etcd, /usr/local/bin/etcdctl).
#   usage: compose/offline/base-images.sh PYTHON_TAG ETCD_TAG
# Run as root (debootstrap); takes ~30 s and a few hundred MB.
set -eu
python_tag=$1
etcd_tag=$2
docker=${DOCKER:-/usr/bin/docker}
root=$(mktemp -d /tmp/memring-offline-root.XXXXXX)
trap 'rm -rf "$root"' EXIT INT TERM
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
mirror=${mirror:-http://deb.debian.org/debian}
debootstrap --variant=minbase \
    --include=python3,python3-pip,ca-certificates,openssl,etcd-server,etcd-client \
    bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# pip installs into the system interpreter, as in python:*-slim (PEP 668's marker removed)
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
ln -sf python3 "$root/usr/bin/python"
ln -sf /usr/bin/etcd "$root/usr/local/bin/etcd"
ln -sf /usr/bin/etcdctl "$root/usr/local/bin/etcdctl"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
# the stamp: which version of this script made the images (tests/helpers/docker_engine.py
# makes them again when it differs)
stamp=$(sha256sum "$0" | cut -d' ' -f1)
tar -C "$root" -c . | "$docker" import \
    --change "LABEL org.memring.base-images=$stamp" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    - "$python_tag" >/dev/null
"$docker" tag "$python_tag" "$etcd_tag"
