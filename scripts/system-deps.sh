#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real: PostgreSQL (meta store tests),
# Chromium (UI tests), rsyslog with omelasticsearch (a real log shipper for the _bulk API), redis-server (SDK Celery tests),
# prometheus (a real remote-write sender for the metrics API), victoria-metrics (metrics benchmark peer).
# Does nothing for packages already present; needs root (or sudo) when something is missing.
set -euo pipefail
need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -e /usr/lib/x86_64-linux-gnu/rsyslog/omelasticsearch.so ] || ls /usr/lib/*/rsyslog/omelasticsearch.so >/dev/null 2>&1 || need+=(rsyslog rsyslog-elasticsearch)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)  # and amtool: routing compared with ours
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # a throwaway certificate for the SMTP STARTTLS test
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing system packages: ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
