#!/usr/bin/env bash
# Install a single-node SLURM (slurmctld, slurmd, clients) and munge from the Debian mirror.
# Idempotent: does nothing when every package is already installed.
# Used by .ci/run and by the tests/cluster fixture (tests/cluster/slurm.py).
set -euo pipefail

packages=(slurmctld slurmd slurm-client munge)

missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install_slurm: already installed: ${packages[*]}"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install_slurm: need root to install ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install_slurm: installing ${missing[*]}"
apt-get update -qq
# No systemd here: policy-rc.d 101 stops the packages' postinst from starting daemons;
# the fixture starts them by hand with its own configuration.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
fi
trap '[ "$created_policy" -eq 1 ] && rm -f "$policy"' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_slurm: done"
