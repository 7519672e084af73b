#!/usr/bin/env bash
# Builds an OCI bundle for Python workloads without a registry: the busybox rootfs of
# busybox-bundle.sh plus the host's /usr bind-mounted read-only (Debian's python3 and
# python3-numpy, which scripts/setup installs), with /lib and /lib64 linked into it as on a
# merged-/usr system.
#   examples/python-bundle.sh DIR [ARGS...]     (default ARGS: python3)
# Extra binds: CRYO_BUNDLE_BIND="HOST:CONTAINER[,HOST:CONTAINER...]" (read-only).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: python-bundle.sh DIR [ARGS...]}
shift || true
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(python3)
"$here/busybox-bundle.sh" "$dir" "${args[@]}"
mkdir -p "$dir/rootfs/usr" "$dir/rootfs/etc/alternatives"
for l in lib lib64; do
  [ -e "$dir/rootfs/$l" ] || [ -L "$dir/rootfs/$l" ] || ln -s "usr/$l" "$dir/rootfs/$l"
done
python3 - "$dir/config.json" "${CRYO_BUNDLE_BIND:-}" <<'PY'
import json, sys
path, extra = sys.argv[1], sys.argv[2]
c = json.load(open(path))
# /etc/alternatives: Debian resolves libblas/liblapack (numpy) through it.
binds = [("/usr", "/usr"), ("/etc/alternatives", "/etc/alternatives")] + [tuple(b.split(":", 1)) for b in extra.split(",") if b]
for src, dst in binds:
    c["mounts"].append({"destination": dst, "type": "bind", "source": src,
                        "options": ["rbind", "ro", "nosuid", "nodev"]})
c["process"]["env"].append("PYTHONDONTWRITEBYTECODE=1")
json.dump(c, open(path, "w"), indent=2)
PY
