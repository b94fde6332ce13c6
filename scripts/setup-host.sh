#!/bin/bash
# Set up a Debian 12 host for kvmple, idempotently: Debian packages, the .venv with kvmple
# installed, and the services kvmple needs (virtlogd/libvirtd when no init system runs them).
#
#   scripts/setup-host.sh            set up for running kvmple
#   scripts/setup-host.sh --test     also install the test tier's packages and services
#
# A second run does nothing slow: packages are checked with dpkg-query, the venv is
# reinstalled only when pyproject.toml changed, daemons are started only if not answering.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
mode="${1:-}"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (kvmple drives libvirt's system instance and host kernel modules)"
[ -r /etc/debian_version ] || die "this script supports Debian 12 hosts (see README for others)"

packages() {
    local f
    for f in "$@"; do grep -v '^\s*#' "$f" | grep -v '^\s*$' | awk '{print $1}'; done
}

lists=(scripts/host-packages.txt)
[ "$mode" = "--test" ] && lists+=(scripts/test-packages.txt)

mapfile -t wanted < <(packages "${lists[@]}")
missing=()
for p in "${wanted[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${#missing[@]} Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/kvmple-apt.log 2>&1 \
        || { tail -20 /tmp/kvmple-apt.log >&2; die "apt-get install failed (log: /tmp/kvmple-apt.log)"; }
else
    say "Debian packages: all ${#wanted[@]} present"
fi
# kexec-tools' debconf default LOAD_KEXEC=true makes every reboot a kexec of /vmlinuz, and
# 'kernel install --method kexec' (the nightly's planned one-shot boot) refuses it: false here.
if [ "$mode" = "--test" ] && [ -f /etc/default/kexec ]; then
    sed -i 's/^LOAD_KEXEC=.*/LOAD_KEXEC=false/' /etc/default/kexec
fi

# --- the virtualenv -------------------------------------------------------------------------
venv="$here/.venv"
stamp="$venv/.kvmple-installed"
want_stamp="$(cat pyproject.toml scripts/setup-host.sh | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    /usr/bin/python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_stamp" ]; then
    say "installing kvmple and its Python dependencies into .venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
    "$venv/bin/pip" install -q --disable-pip-version-check -e ".[test]"
    echo "$want_stamp" >"$stamp"
else
    say "virtualenv: up to date"
fi

# --- services -------------------------------------------------------------------------------
have_systemd() { [ -d /run/systemd/system ]; }

# Without udev /dev/kvm stays root:root 0600. libvirt then finds KVM "enabled when probing but
# not available now" for its qemu user, throws its capability cache away on every call and
# re-probes QEMU: starting one domain took ~50 s here instead of 0.4 s. udev's Debian rule
# (root:kvm 0660) fixes it.
if [ -c /dev/kvm ] && [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ] && getent group kvm >/dev/null; then
    say "/dev/kvm: root:kvm 0660 (as udev would set it)"
    chown root:kvm /dev/kvm && chmod 0660 /dev/kvm
fi

libvirt_answers() { timeout 10 virsh -c qemu:///system uri >/dev/null 2>&1; }

if ! libvirt_answers; then
    if have_systemd; then
        say "starting virtlogd and libvirtd (systemd)"
        systemctl start virtlogd.socket libvirtd.socket libvirtd.service || true
    else
        # No init system (containers, CI sandboxes): start the daemons ourselves.
        getent passwd libvirt-qemu >/dev/null || die "user libvirt-qemu missing: reinstall libvirt-daemon-system"
        mkdir -p /var/log/libvirt /run/libvirt
        pgrep -x virtlogd >/dev/null || { say "starting virtlogd"; virtlogd -d; }
        pgrep -x libvirtd >/dev/null || { say "starting libvirtd"; libvirtd -d; }
    fi
    for _ in $(seq 1 30); do libvirt_answers && break; sleep 1; done
    libvirt_answers || die "libvirtd does not answer on qemu:///system"
fi
say "libvirt: qemu:///system answers"

if [ "$mode" = "--test" ] && [ -x scripts/test-services.sh ]; then
    scripts/test-services.sh
fi
say "ready: $venv/bin/kvmple"
