#!/bin/bash
# nginx in front of the app: only requests whose Host is QFIELDCLOUD_HOST reach the app; any other Host
# gets its connection closed (444), as upstream's nginx does. Upstream's check is a regex built from
# QFIELDCLOUD_HOST, so an empty or unset QFIELDCLOUD_HOST matches every Host: then every request reaches the app.
set -euo pipefail
proxy="
  resolver 127.0.0.11 valid=1s ipv6=off;
  location / {
    set \$app_upstream http://app:8000;
    proxy_pass \$app_upstream;
    proxy_connect_timeout 3s;
    proxy_set_header Host \$host;
    proxy_set_header X-Forwarded-For \$remote_addr;
    client_max_body_size 100m;
  }"
if [ -n "${QFIELDCLOUD_HOST:-}" ]; then
  cat >/etc/nginx/conf.d/qfieldcloud.conf <<CONF
server {
  listen 80 default_server;
  server_name _;
  return 444;
}
server {
  listen 80;
  server_name ${QFIELDCLOUD_HOST};
$proxy
}
CONF
else
  cat >/etc/nginx/conf.d/qfieldcloud.conf <<CONF
server {
  listen 80 default_server;
  server_name _;
$proxy
}
CONF
fi
exec nginx -g 'daemon off; error_log /dev/stderr info;'
