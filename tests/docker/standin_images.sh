#!/usr/bin/env bash
# Stand-in base images for machines that reach Debian's packages but no image registry
# (CI here): the tags the Dockerfile's PYTHON_IMAGE and the compose file's Prometheus name,
# made with debootstrap and `docker import` when the engine has no image under that tag
# and cannot pull one. Needs root, debootstrap and a running Docker engine.
# Usage: tests/docker/standin_images.sh [PYTHON_TAG [PROMETHEUS_TAG]]
set -euo pipefail

python_tag=${1:-python:3.11.14-slim-bookworm}
prometheus_tag=${2:-prom/prometheus:v2.55.1}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Stand-ins carry this label so that nobody mistakes them for the real images.
label=org.encoder-serve.standin=true

have() { docker image inspect "$1" >/dev/null 2>&1; }
# A bounded pull: where a registry is reachable the real image is better than a stand-in.
pulled() { timeout 60 docker pull -q "$1" >/dev/null 2>&1; }

need_python=1; need_prometheus=1
have "$python_tag" || pulled "$python_tag" && need_python=0
have "$prometheus_tag" || pulled "$prometheus_tag" && need_prometheus=0
if [ "$need_python$need_prometheus" = 00 ]; then
    echo "stand-in images: $python_tag and $prometheus_tag present"
    exit 0
fi

root=$(mktemp -d /var/tmp/encoder-standin.XXXXXX)
trap 'rm -rf "$root"' EXIT
start=$SECONDS
# The slim image's interpreter (3.11, Debian's build), venv and pip, and the CA bundle.
debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-pip,ca-certificates \
    bookworm "$root" "$mirror" >"$root.log" 2>&1 || { cat "$root.log" >&2; exit 1; }
rm -f "$root.log"
ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python"
ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python3"
# The official image has no PEP 668 marker: pip installs into the system interpreter.
rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
# This machine's CA bundle: its package index is reached through its own certificates.
if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

if [ "$need_python" = 1 ]; then
    tar -C "$root" -c . | docker import \
        --change "LABEL $label" \
        --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' - "$python_tag" >/dev/null
    echo "stand-in image $python_tag made"
fi

if [ "$need_prometheus" = 1 ]; then
    prometheus=$(command -v prometheus || true)
    if [ -z "$prometheus" ]; then
        echo "no prometheus binary on this machine (apt-get install prometheus): no stand-in for $prometheus_tag" >&2
    else
        # Laid out like the official image: /bin/prometheus, data in /prometheus as nobody.
        cp "$prometheus" "$root/bin/prometheus"
        mkdir -p "$root/prometheus" "$root/etc/prometheus"
        chown 65534:65534 "$root/prometheus"
        tar -C "$root" -c . | docker import \
            --change "LABEL $label" \
            --change 'USER nobody' \
            --change 'WORKDIR /prometheus' \
            --change 'EXPOSE 9090' \
            --change 'ENTRYPOINT ["/bin/prometheus"]' \
            --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]' \
            - "$prometheus_tag" >/dev/null
        echo "stand-in image $prometheus_tag made (from $prometheus)"
    fi
fi
echo "stand-in images made in $((SECONDS - start)) s"
