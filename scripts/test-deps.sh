#!/usr/bin/env bash
# Install (idempotently) everything the test suite needs and start a Docker
# engine when none answers. Safe to run again and again.
set -euo pipefail

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
sftp_server_present() {
  for p in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server /usr/libexec/sftp-server; do
    [ -x "$p" ] && return 0
  done
  return 1
}

have ssh || need_apt+=(openssh-client)
have sshd || [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
sftp_server_present || need_apt+=(openssh-sftp-server)
have tmux || need_apt+=(tmux)
have rsync || need_apt+=(rsync)
have dockerd || need_apt+=(docker.io)
have debootstrap || [ -x /usr/sbin/debootstrap ] || need_apt+=(debootstrap)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
have prometheus || need_apt+=(prometheus)
# Other SSH clients the interop tests drive (binaries only: no server is started).
{ have dbclient && have dropbearconvert; } || need_apt+=(dropbear-bin)
{ have plink && have pscp && have puttygen; } || need_apt+=(putty-tools)
have asciinema || need_apt+=(asciinema)      # replays session recordings in tests
have haproxy || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)  # PROXY protocol tests
have script || need_apt+=(bsdutils)          # a terminal for asciinema cat
have redis-server || need_apt+=(redis-server)  # the store of several gateway replicas
have chromium || need_apt+=(chromium)        # web joiner tests (headless, driven by Selenium)
have chromedriver || need_apt+=(chromium-driver)
have npm || need_apt+=(npm)                  # fetches xterm.js for the web joiner page

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test-deps: missing ${need_apt[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "test-deps: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# A Docker engine: use the one that answers, else start Debian's dockerd with
# no bridge network and no firewall changes (containers use --network none).
docker_answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
if ! docker_answers; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test-deps: no Docker engine answers and starting one needs root" >&2
    exit 1
  fi
  echo "test-deps: starting dockerd"
  mkdir -p /var/log
  nohup dockerd --bridge=none --iptables=false --ip6tables=false \
    >/var/log/pairpod-test-dockerd.log 2>&1 &
  for _ in $(seq 1 120); do
    docker_answers && break
    sleep 0.5
  done
  docker_answers || { echo "test-deps: dockerd did not start; see /var/log/pairpod-test-dockerd.log" >&2; exit 1; }
fi
echo "test-deps: ready"
