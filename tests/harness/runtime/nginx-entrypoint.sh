#!/bin/bash
# nginx in front of the app: only requests whose Host is QFIELDCLOUD_HOST reach the app;
# any other Host gets its connection closed (444), as upstream's nginx does.
set -euo pipefail
cat >/etc/nginx/conf.d/qfieldcloud.conf <<CONF
server {
  listen 80 default_server;
  server_name _;
  return 444;
}
server {
  listen 80;
  server_name ${QFIELDCLOUD_HOST};
  resolver 127.0.0.11 valid=10s ipv6=off;
  location / {
    set \$app_upstream http://app:8000;
    proxy_pass \$app_upstream;
    proxy_connect_timeout 3s;
    proxy_set_header Host \$host;
    proxy_set_header X-Forwarded-For \$remote_addr;
    client_max_body_size 100m;
  }
}
CONF
exec nginx -g 'daemon off; error_log /dev/stderr info;'
