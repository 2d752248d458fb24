#!/bin/sh
# A flannel-style daemon: read the network configuration from etcd, publish it for the
# container engine in /run/flannel/subnet.env, tell systemd it is ready, and stay up.
trap 'exit 0' TERM
until cfg=$(etcdctl --endpoints "$ETCD_ENDPOINTS" get --print-value-only "$FLANNEL_KEY" 2>/dev/null) && [ -n "$cfg" ]; do
    echo "waiting for $FLANNEL_KEY in etcd at $ETCD_ENDPOINTS"
    sleep 1
done
echo "FLANNEL_NETWORK_CONFIG='$cfg'" > /run/flannel/subnet.env.tmp
mv /run/flannel/subnet.env.tmp /run/flannel/subnet.env
echo "network configuration from etcd: $cfg"
sd-notify "READY=1" "STATUS=network from $FLANNEL_KEY"
while true; do sleep 60 & wait $!; done
