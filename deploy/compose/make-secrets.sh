#!/bin/sh
# Creates the compose stack's secrets, once: a random master key (base64 of
# 32 bytes) and a random bootstrap admin key. Existing files are kept.
#
# Compose mounts file secrets as they are on the host, and keymeter runs as
# uid 10001 in the container: the files are made readable to it (mode 0644;
# keymeter warns that the master key is readable by others). That suits a
# machine of your own; in production use an orchestrator's secrets
# (deploy/k8s) or a file owned by uid 10001 with mode 0600.
set -eu
cd "$(dirname "$0")"
mkdir -p secrets
if [ ! -e secrets/master.key ]; then
    head -c 32 /dev/urandom | base64 > secrets/master.key
    chmod 0644 secrets/master.key
    echo "created secrets/master.key: back it up; without it no license key can be read"
fi
if [ ! -e secrets/admin.key ]; then
    printf 'km_%s' "$(head -c 24 /dev/urandom | base64 | tr -d '/+=')" > secrets/admin.key
    chmod 0644 secrets/admin.key
    echo "created secrets/admin.key (the first admin API key)"
fi
