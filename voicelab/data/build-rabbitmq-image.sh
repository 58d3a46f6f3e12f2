#!/usr/bin/env bash
# Build a RabbitMQ Docker image with no registry: from Debian packages only.
#
#   build-rabbitmq-image.sh SUITE TAG      e.g.  bookworm voicelab/rabbitmq:3.10
#                                                 trixie   voicelab/rabbitmq:4.0
#                                                 sid      voicelab/rabbitmq:4.3
#
# Needs root, debootstrap and a running Docker engine. The image has the
# management and prometheus plugins on, lets guest log in from other hosts
# (bind its ports to 127.0.0.1 only!) and runs the broker as user rabbitmq.
# Also available as `python -m voicelab build-image SUITE TAG`.
set -euo pipefail
suite=${1:?usage: $0 SUITE TAG (suite: bookworm, trixie or sid)}
tag=${2:?usage: $0 SUITE TAG}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
for tool in debootstrap docker; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (apt-get install debootstrap docker.io)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root" >&2; exit 2; }
root=$(mktemp -d /tmp/voicelab-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "building $tag from Debian $suite ($mirror) in $root" >&2
debootstrap --variant=minbase --include=rabbitmq-server "$suite" "$root" "$mirror" >&2
mkdir -p "$root/etc/rabbitmq"
echo '[rabbitmq_management,rabbitmq_prometheus].' > "$root/etc/rabbitmq/enabled_plugins"
printf 'loopback_users.guest = false\nlisteners.tcp.default = 5672\nmanagement.tcp.port = 15672\n' > "$root/etc/rabbitmq/rabbitmq.conf"
rm -rf "$root/var/lib/rabbitmq/mnesia" "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
chroot "$root" chown -R rabbitmq:rabbitmq /etc/rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
version=$(chroot "$root" dpkg-query -W -f '${Version}' rabbitmq-server)
tar -C "$root" -c . | docker import \
  -c 'CMD ["/usr/lib/rabbitmq/bin/rabbitmq-server"]' \
  -c 'ENV HOME=/var/lib/rabbitmq' -c 'USER rabbitmq' -c 'EXPOSE 5672 15672' \
  -c "LABEL org.voicelab.rabbitmq-version=$version org.voicelab.debian-suite=$suite" \
  -m "voicelab offline RabbitMQ $version from Debian $suite" - "$tag" >&2
echo "$tag: RabbitMQ $version" >&2
