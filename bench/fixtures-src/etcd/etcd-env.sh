#!/bin/sh
# A dash-compatible port of atomic-system-containers etcd/etcd-env.sh (upstream uses
# `==` in test and `source`, which dash lacks, and `hostname -I`).

if test "x$NAME" = x; then
    NAME=$HOSTNAME
fi
export ETCD_NAME=${ETCD_NAME:-$HOSTNAME}
export ETCD_DATA_DIR=${ETCD_DATA_DIR:-/var/lib/etcd/${NAME}.etcd}

if test -e /etc/etcd/etcd.conf; then
    . /etc/etcd/etcd.conf
fi

# Execute the commands passed to this script
exec "$@"
