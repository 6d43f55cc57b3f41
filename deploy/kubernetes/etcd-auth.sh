#!/bin/sh
# Turn on etcd's authentication, once, after etcd.yaml's members first came up: the root user,
# and the memring user whose role may read and write only the cluster's keys (/memring/memring/).
# The passwords are make_secrets.py's (DIR/etcd-root.password, DIR/etcd-memring.password); they
# go to etcdctl on its standard input, never in an argument. Runs etcdctl inside the first
# member with the etcd-admin certificate (the name of no user). Safe to run again.
#   deploy/kubernetes/etcd-auth.sh DIR [NAMESPACE]
set -eu
dir=${1:?usage: etcd-auth.sh SECRETS_DIR [NAMESPACE]}
namespace=${2:-memring}
cluster=memring  # MEMRING_CLUSTER in config.yaml
user=memring     # MEMRING_ETCD_USER in config.yaml
etcdctl() {
  kubectl exec -i -n "$namespace" memring-etcd-0 -c etcd -- /usr/local/bin/etcdctl \
    --endpoints=https://127.0.0.1:2379 --cacert=/etc/etcd/tls/ca.crt \
    --cert=/etc/etcd/tls/etcd-admin.crt --key=/etc/etcd/tls/etcd-admin.key "$@"
}
# The admin certificate names no user: while authentication is off it may list users, once
# it is on etcd refuses that (and answers a health check with "permission denied").
if ! etcdctl user list </dev/null >/dev/null 2>&1; then
  if etcdctl endpoint health </dev/null >/dev/null 2>&1; then
    echo "etcd authentication is already on"
    exit 0
  fi
  echo "etcd-auth.sh: etcd does not answer in memring-etcd-0 (kubectl -n $namespace get pods)" >&2
  exit 1
fi
etcdctl role get root </dev/null >/dev/null 2>&1 || etcdctl role add root </dev/null
etcdctl user get root </dev/null >/dev/null 2>&1 ||
  etcdctl user add root --interactive=false <"$dir/etcd-root.password"
etcdctl user grant-role root root </dev/null
etcdctl role get "$user" </dev/null >/dev/null 2>&1 || etcdctl role add "$user" </dev/null
etcdctl role grant-permission "$user" readwrite --prefix=true "/memring/$cluster/" </dev/null
etcdctl user get "$user" </dev/null >/dev/null 2>&1 ||
  etcdctl user add "$user" --interactive=false <"$dir/etcd-memring.password"
etcdctl user grant-role "$user" "$user" </dev/null
etcdctl auth enable </dev/null
echo "etcd authentication is on: user $user may use /memring/$cluster/"
