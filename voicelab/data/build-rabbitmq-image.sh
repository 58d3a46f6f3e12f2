#!/usr/bin/env bash
# Build a RabbitMQ Docker image with no registry: from Debian packages only, configured to behave
# like the official image a learner pulls (`rabbitmq:<series>-management`), setting by setting.
#
#   build-rabbitmq-image.sh SUITE TAG      e.g.  bookworm voicelab/rabbitmq:3.10
#                                                 trixie   voicelab/rabbitmq:4.0
#                                                 sid      voicelab/rabbitmq:4.3
#
# Needs root, debootstrap and a running Docker engine. The image has the management and prometheus
# plugins on, lets guest log in from other hosts (bind its ports to 127.0.0.1 only!) and runs the
# broker as user rabbitmq. Also available as `python -m voicelab build-image SUITE TAG`.
#
# What "the official image" is (docker-library/rabbitmq; 4.x: <series>/ubuntu/, 3.10: commit ea3232a,
# the last before 3.10 was removed; the same for every series):
#   - Dockerfile: upstream's generic-unix build; `rabbitmq-plugins enable --offline rabbitmq_prometheus`;
#     COPY 10-defaults.conf 20-management_agent.disable_metrics_collector.conf /etc/rabbitmq/conf.d/;
#     ENV HOME=/var/lib/rabbitmq, LANG/LANGUAGE/LC_ALL=C.UTF-8, RUNNING_UNDER_SYSTEMD=true (the start
#     script execs the VM: beam is PID 1); VOLUME /var/lib/rabbitmq; EXPOSE 4369 5671 5672 15691 15692 25672.
#   - conf.d/10-defaults.conf: `loopback_users.guest = false`, `log.console = true`.
#   - management/Dockerfile: `rabbitmq-plugins enable --offline rabbitmq_management` and deletes
#     20-management_agent.disable_metrics_collector.conf (metrics collector back on, upstream's default);
#     EXPOSE 15671 15672.
# Debian's package is upstream's source plus Debian's patches, so the rest is upstream's default except
# where a Debian patch changes behaviour: section 3 below finds and undoes those (and the labels say so).
#
# Not reproduced (cannot be, or on purpose):
#   - the patch release and the Erlang/OTP: Debian's (3.10.8/OTP 25.2, 4.0.5/OTP 27.3, 4.3.6/OTP 29.1) vs the
#     official image's (3.10.25/OTP 25.3, 4.0.9/OTP 27.3, 4.3.x/OTP 27.3); labels rabbitmq-version, erlang-version.
#   - the entrypoint: the official image starts as root and steps down with gosu; this one starts as
#     user rabbitmq directly (same process, same user).
#   - rabbitmqadmin: the official -management images ship rabbitmqadmin-ng 2.32 (3.10: the Python one);
#     Debian installs the Python one (3.10.8, 4.0.5) or rabbitmqadmin-ng 2.29 (4.3). The course does not use it.
#   - Debian's security backports, kept: 3.10.8+deb12u1 carries CVE-2023-46118 (HTTP API request bodies
#     limited to 10 MiB, management.http.max_body_size; upstream has the limit from 3.11.24/3.12.7, never
#     in 3.10.x); 4.0.5+deb13u2 carries the CVE-2025-50200 Cowboy double-reply fix (upstream from 4.0.8,
#     so rabbitmq:4.0-management 4.0.9 has it too) and elixir-1.18-compat.patch (CLI JSON output only).
set -euo pipefail
suite=${1:?usage: $0 SUITE TAG (suite: bookworm, trixie or sid)}
tag=${2:?usage: $0 SUITE TAG}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
defaults_json=$here/upstream-defaults.json  # upstream's deprecated-feature phases per series (the tests read it too)
for tool in debootstrap docker; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (apt-get install debootstrap docker.io)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root" >&2; exit 2; }
root=$(mktemp -d /tmp/voicelab-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "building $tag from Debian $suite ($mirror) in $root" >&2
debootstrap --variant=minbase --include=rabbitmq-server "$suite" "$root" "$mirror" >&2
version=$(chroot "$root" dpkg-query -W -f '${Version}' rabbitmq-server)  # Debian's, e.g. 4.3.6-1
upstream_version=${version#*:}; upstream_version=${upstream_version%%-*}  # 4.3.6
series=${upstream_version%.*}                                            # 4.3
official=rabbitmq:$series-management
erlang=$(cat "$root"/usr/lib/erlang/releases/*/OTP_VERSION 2>/dev/null | head -1)
echo "Debian $suite has rabbitmq-server $version (Erlang $erlang); reproducing $official" >&2

# 1. The official image's settings (see the top of this file), in the same files.
mkdir -p "$root/etc/rabbitmq/conf.d"
echo '[rabbitmq_management,rabbitmq_prometheus].' > "$root/etc/rabbitmq/enabled_plugins"
cat > "$root/etc/rabbitmq/conf.d/10-defaults.conf" <<'EOF'
## As docker-library/rabbitmq's conf.d/10-defaults.conf (the official image).
## DEFAULT SETTINGS ARE NOT MEANT TO BE TAKEN STRAIGHT INTO PRODUCTION

## allow access to the guest user from anywhere on the network
loopback_users.guest = false

## Send all logs to stdout/TTY. Necessary to see logs when running via a container
log.console = true
EOF
# (No 20-management_agent.disable_metrics_collector.conf: the -management image deletes it.)

# 2. What voicelab relies on, spelled out (these are upstream's defaults too).
cat > "$root/etc/rabbitmq/conf.d/50-voicelab.conf" <<'EOF'
## voicelab: the ports it maps (upstream defaults, made explicit)
listeners.tcp.default = 5672
management.tcp.port = 15672
EOF

# 3. Undo Debian patches that change behaviour.
# Today this finds one: Debian's 4.3 package carries do-not-deprecate-transient_nonexcl_queues.patch
# (debian/changelog 4.3.0-3: "Add do-not-deprecate-transient_nonexcl_queues.patch, thanks to Sergei
# Golovan (Closes: #1138887)"; still in effect in 4.3.6-1). It declares transient_nonexcl_queues
# permitted_by_default, where upstream 4.3.0+ declares it denied_by_default (rabbitmq-server
# deps/rabbit/src/rabbit_amqqueue.erl, tags v4.3.0..v4.3.5; release-notes/4.3.0.md "Deprecated Features
# are Now Disabled by Default"). On the official image, declaring a non-durable non-exclusive queue is
# refused: 541 INTERNAL_ERROR, the connection is closed. `deprecated_features.permit.transient_nonexcl_queues
# = false` restores that (the reply text differs: "not permitted per the configuration" instead of "not
# permitted anymore"; list_deprecated_features still shows Debian's phase with the upstream state).
# Rather than a list that goes stale with the next Debian upload, read the phases compiled into this
# package (the -rabbit_deprecated_feature attributes of its .beam files), compare them with upstream's
# for this series (upstream-defaults.json), and write a permit line for each feature whose default state
# differs. Debian 3.10.8 has no deprecated features (the subsystem appeared in 3.13.0): nothing to undo.
cp "$defaults_json" "$root/tmp/upstream-defaults.json" 2>/dev/null || true
compare=$(VOICELAB_SERIES=$series chroot "$root" /usr/bin/erl -noshell -noinput -eval '
  Beams = filelib:wildcard("/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/*/ebin/*.beam"),
  Debian = maps:from_list(lists:append(
      [[{atom_to_binary(N), atom_to_binary(maps:get(deprecation_phase, P))} || {N, P} <- V]
       || B <- Beams, {ok, {_, [{attributes, A}]}} <- [beam_lib:chunks(B, [attributes])],
          {rabbit_deprecated_feature, V} <- A])),
  Series = list_to_binary(os:getenv("VOICELAB_SERIES")),
  if map_size(Debian) =:= 0 -> io:format("none~n");
     true ->
       case file:read_file("/tmp/upstream-defaults.json") of
         {error, _} -> io:format("nojson~n");
         {ok, Bin} ->
           case maps:find(Series, maps:get(<<"series">>, json:decode(Bin))) of
             error -> io:format("noseries~n");
             {ok, S} ->
               Up = maps:get(<<"deprecated_features">>, S),
               [io:format("phase ~s ~s ~s~n", [N, maps:get(N, Debian, <<"absent">>), maps:get(N, Up, <<"absent">>)])
                || N <- lists:usort(maps:keys(Debian) ++ maps:keys(Up))]
           end
       end
  end,
  halt().') || { echo "error: reading the deprecated features compiled into the package failed: $compare" >&2; exit 3; }
rm -f "$root/tmp/upstream-defaults.json"
undo=() undo_conf="" problems=""
permitted() { [ "$1" = permitted_by_default ] && echo true || echo false; }
case "$compare" in
  none) echo "deprecated features: none in this package (none upstream in $series either)" >&2 ;;
  nojson) echo "error: $defaults_json is missing: cannot check the deprecated features against upstream" >&2; exit 3 ;;
  noseries) echo "error: $defaults_json has no series $series: add upstream's deprecated-feature phases" \
                 "(rabbitmq-server's source at v$upstream_version) before building a faithful image" >&2; exit 3 ;;
  *)
    while read -r _ name deb up; do
      if [ "$deb" = "$up" ]; then
        printf '  %-30s %-22s (= upstream)\n' "$name" "$deb" >&2
      elif [ "$deb" = absent ] || [ "$up" = absent ]; then
        problems+="$name: Debian $deb, upstream $up; "
      elif [ "$(permitted "$deb")" != "$(permitted "$up")" ]; then
        case "$deb" in removed|disconnected)
          problems+="$name: Debian $deb cannot be permitted back (upstream $up); "; continue ;;
        esac
        line="deprecated_features.permit.$name = $(permitted "$up")"
        undo+=("$line")
        undo_conf+="## Debian's package declares $name $deb; upstream $series declares it $up."$'\n'"$line"$'\n'
        printf '  %-30s %-22s upstream: %s -> %s\n' "$name" "$deb" "$up" "$line" >&2
      else  # same state by default, different phase: no setting changes a phase; the test reports it
        printf '  %-30s %-22s upstream: %s (same default state; phase differs)\n' "$name" "$deb" "$up" >&2
      fi
    done <<< "$compare"
    if [ -n "$problems" ]; then
      echo "error: cannot reproduce upstream $series's deprecated features: $problems" >&2; exit 3
    fi ;;
esac
if [ ${#undo[@]} -gt 0 ]; then
  printf '## voicelab: undo Debian patches so that this broker behaves like %s\n## (see build-rabbitmq-image.sh).\n%s' \
    "$official" "$undo_conf" > "$root/etc/rabbitmq/conf.d/90-voicelab-undo-debian.conf"
  undone=$(IFS=';'; echo "${undo[*]}" | sed 's/;/; /g')
else
  undone=none
fi

rm -rf "$root/var/lib/rabbitmq/mnesia" "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
chroot "$root" chown -R rabbitmq:rabbitmq /etc/rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
tar -C "$root" -c . | docker import \
  -c 'CMD ["/usr/lib/rabbitmq/bin/rabbitmq-server"]' \
  -c 'ENV HOME=/var/lib/rabbitmq LANG=C.UTF-8 LANGUAGE=C.UTF-8 LC_ALL=C.UTF-8 RUNNING_UNDER_SYSTEMD=true' \
  -c 'USER rabbitmq' -c 'VOLUME /var/lib/rabbitmq' \
  -c 'EXPOSE 4369 5671 5672 15671 15672 15691 15692 25672' \
  -c "LABEL org.voicelab.rabbitmq-version=$version org.voicelab.debian-suite=$suite" \
  -c "LABEL org.voicelab.upstream=$official org.voicelab.upstream-version=$upstream_version org.voicelab.erlang-version=$erlang" \
  -c "LABEL org.voicelab.upstream-config=\"docker-library/rabbitmq conf.d/10-defaults.conf (loopback_users.guest = false; log.console = true); plugins rabbitmq_management, rabbitmq_prometheus; management metrics collector on\"" \
  -c "LABEL org.voicelab.undoes-debian=\"$undone\" org.voicelab.recipe=${VOICELAB_IMAGE_RECIPE:-unknown}" \
  -m "voicelab offline RabbitMQ $version from Debian $suite, configured as $official" - "$tag" >&2
echo "$tag: RabbitMQ $version (Erlang $erlang), behaves as $official; undoes Debian: $undone" >&2
