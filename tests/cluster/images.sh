#!/usr/bin/env bash
# Build every image the cluster scenario runs, offline (no image registry):
#
#   base         Debian trixie minbase + python3 (mmdebstrap | docker import)
#   base-torch   the same + Debian's CPU-only python3-torch (no CUDA wheels) on OpenBLAS
#   proxy        proxy/Dockerfile            (BASE_IMAGE=base)
#   operator     operator/Dockerfile         (BASE_IMAGE=base)
#   model-server tests/kind/model-server.Dockerfile (BASE_IMAGE=base-torch)
#   redis        Valkey + the search module from PyPI wheels, as `redis-server`
#   certgen      the webhook-certificate hook (tests/cluster/images/certgen.py)
#   client       the scenario's app: the official openai client
#   tools        busybox applets (helm test's wget)
#   pause        the pod sandbox: a static C binary (tests/cluster/images/pause.c)
#
# Each image is tagged llmcache.local/<name>:<content hash> and saved to
# $LLMCACHE_CACHE_DIR/images/<name>-<hash>.tar, so an unchanged tree rebuilds
# nothing (and needs no Docker at all). The hash covers the Dockerfile, the
# files the build copies and the base's hash. Prints the manifest path; the
# manifest (images.env) maps NAME_IMAGE / NAME_TAR for the fixture and run.sh.
#
# Docker: uses $DOCKER_HOST / the system daemon when LLMCACHE_DOCKER=system
# (tests/kind/run.sh); otherwise starts its own dockerd on a private socket with
# its bridge and iptables off (builds use the host network, nothing listens on
# the machine's interfaces) and stops it when done.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$repo/tests/cluster"
cache="${LLMCACHE_CACHE_DIR:-$HOME/.cache/llmcache}"
out="$cache/images"
mkdir -p "$out"
# Debian suite of the bases: trixie has a CPU-only python3-torch new enough for
# transformers 5 (>= 2.6); bookworm's is 1.13.
suite="${LLMCACHE_BASE_SUITE:-trixie}"
mirror="${LLMCACHE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
base_pkgs="python3,python3-venv,python-is-python3,ca-certificates"
# python3-torch depends on "libblas3 | libblas.so.3", and on its own apt takes libblas3, the
# reference BLAS: every matrix product of the model ran an order of magnitude slower (the
# routing test's 30 one-thread prefills of ~187 tokens: 355 s, with OpenBLAS 21 s). OpenBLAS's
# OpenMP build takes the libblas.so.3 alternative, so torch's --num-threads bounds it too.
torch_pkgs="$base_pkgs,python3-torch,libopenblas0-openmp"

exec 8>"$out/.build.lock"
flock 8

log() { echo "images.sh: $*" >&2; }
sha() { sha256sum | cut -c1-16; }

# A build context holding only what the Dockerfiles copy (not .venv or .git),
# with README.md reduced to a stub so README edits do not rebuild every image.
ctx="$(mktemp -d /tmp/llmcache-images.XXXXXX)"
cleanup_ctx() { rm -rf "$ctx"; }
trap cleanup_ctx EXIT
(cd "$repo" && tar -cf - --exclude=__pycache__ --exclude='*.pyc' \
    pyproject.toml llmcache proxy model_server operator \
    tests/kind/client_job.py tests/kind/client.Dockerfile tests/kind/model-server.Dockerfile \
    tests/cluster/images) | tar -xf - -C "$ctx"
echo "llmcache (see the repository README)" >"$ctx/README.md"
src_hash="$(cd "$ctx" && find pyproject.toml README.md llmcache proxy model_server operator -type f -print0 \
    | sort -z | xargs -0 sha256sum | sha)"

# Extra CAs this machine trusts (e.g. a TLS-inspecting egress proxy in front of
# PyPI) go into the bases too, or pip inside `docker build` cannot reach PyPI.
extra_cas=(/usr/local/share/ca-certificates/*.crt)
[[ -e "${extra_cas[0]}" ]] || extra_cas=()
ca_hash="$( ((${#extra_cas[@]})) && cat "${extra_cas[@]}" | sha)"
base_hash="$(echo "v2 $suite $base_pkgs $ca_hash" | sha)"
torch_hash="$(echo "v2 $suite $torch_pkgs $ca_hash" | sha)"

# name -> "dockerfile|base-name|uses-src|other files it copies (hashed too)"
d=tests/cluster/images
declare -A spec=(
    [proxy]="proxy/Dockerfile|base|1|"
    [operator]="operator/Dockerfile|base|1|"
    [model-server]="tests/kind/model-server.Dockerfile|base-torch|1|"
    [redis]="$d/redis.Dockerfile|base|0|$d/redis-entrypoint.sh"
    [certgen]="$d/certgen.Dockerfile|base|0|$d/certgen.py"
    [client]="tests/kind/client.Dockerfile|base|0|tests/kind/client_job.py $d/app_client.py"
    [tools]="$d/tools.Dockerfile|base|0|"
    [pause]="$d/pause.Dockerfile|none|0|$d/pause.c"
)
declare -A hash=([base]="$base_hash" [base-torch]="$torch_hash")
for name in "${!spec[@]}"; do
    IFS='|' read -r dockerfile basename uses_src files <<<"${spec[$name]}"
    h="$(cat "$ctx/$dockerfile") ${hash[$basename]:-none}"
    [[ "$uses_src" == 1 ]] && h+=" $src_hash"
    for f in $files; do h+=" $(sha256sum <"$ctx/$f")"; done
    hash[$name]="$(echo "$h" | sha)"
done

ref() { echo "llmcache.local/$1:${hash[$1]}"; }
tarfile() { echo "$out/$1-${hash[$1]}.tar"; }

todo=()
for name in "${!spec[@]}"; do
    [[ -s "$(tarfile "$name")" ]] || todo+=("$name")
done

# ---- Docker ---------------------------------------------------------------
dockerd_pid=""
stop_dockerd() {
    if [[ -n "$dockerd_pid" ]]; then
        kill "$dockerd_pid" 2>/dev/null || true
        # dockerd stops its own containerd; wait so no process outlives us.
        for _ in $(seq 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
        dockerd_pid=""
        # dockerd bind-mounts the host's network namespace under its exec root and leaves it
        # there on exit: unmount whatever it left, so a build leaves no mount behind.
        awk '$2 ~ "^/run/llmcache-docker/" {print $2}' /proc/self/mounts | sort -r |
            while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    fi
}
start_docker() {
    if [[ "${LLMCACHE_DOCKER:-own}" == system ]]; then
        docker info >/dev/null || { log "LLMCACHE_DOCKER=system but docker does not answer"; exit 1; }
        return
    fi
    command -v dockerd >/dev/null || { log "dockerd missing: run tests/cluster/install-deps.sh"; exit 1; }
    local droot="$cache/docker"
    mkdir -p "$droot"
    export DOCKER_HOST="unix://$droot/docker.sock"
    log "starting a private dockerd (bridge off, no iptables) at $DOCKER_HOST"
    dockerd --data-root "$droot/root" --exec-root "/run/llmcache-docker" \
        --pidfile "/run/llmcache-docker.pid" --host "$DOCKER_HOST" \
        --bridge=none --iptables=false --ip6tables=false --ip-forward=false \
        --ip-masq=false --userland-proxy=false \
        >"$droot/dockerd.log" 2>&1 &
    dockerd_pid=$!
    trap 'stop_dockerd; cleanup_ctx' EXIT
    for _ in $(seq 300); do
        docker info >/dev/null 2>&1 && return
        kill -0 "$dockerd_pid" 2>/dev/null || { log "dockerd exited; see $droot/dockerd.log"; tail -20 "$droot/dockerd.log" >&2; exit 1; }
        sleep 0.2
    done
    log "dockerd did not answer within 60 s; see $droot/dockerd.log"; exit 1
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

build_base() {  # name packages
    local name="$1" pkgs="$2" r
    r="$(ref "$name")"
    have_image "$r" && return
    log "building $r: mmdebstrap $suite ($pkgs) ..."
    local start=$SECONDS
    # --variant=minbase: essential + apt only; apt lists and docs removed to stay small.
    local hooks=()
    if ((${#extra_cas[@]})); then
        hooks+=(--customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"')
        for ca in "${extra_cas[@]}"; do
            hooks+=(--customize-hook="copy-in $ca /usr/local/share/ca-certificates")
        done
        hooks+=(--customize-hook='chroot "$1" update-ca-certificates >/dev/null')
    fi
    mmdebstrap --quiet --variant=minbase --include="$pkgs" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' "${hooks[@]}" \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
        "$suite" - "$mirror" \
        | docker import --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$r" >/dev/null
    log "built $r in $((SECONDS - start)) s"
}

build_image() {  # name
    local name="$1" dockerfile basename r args=()
    IFS='|' read -r dockerfile basename _ _ <<<"${spec[$name]}"
    r="$(ref "$name")"
    if ! have_image "$r"; then
        [[ "$basename" != none ]] && args+=(--build-arg "BASE_IMAGE=$(ref "$basename")")
        log "building $r from $dockerfile ..."
        local start=$SECONDS
        # Classic builder: --network host needs no BuildKit entitlement, and the
        # daemon has no bridge to give build containers.
        DOCKER_BUILDKIT=0 docker build --quiet --network host "${args[@]}" \
            -f "$ctx/$dockerfile" -t "$r" "$ctx" >/dev/null
        log "built $r in $((SECONDS - start)) s"
    fi
    # Drop this image's older tags from Docker's store (its layers stay cached).
    docker image ls --format '{{.Repository}}:{{.Tag}}' "llmcache.local/$name" | grep -vx "$r" \
        | xargs -r docker image rm >/dev/null 2>&1 || true
    docker save "$r" >"$(tarfile "$name").partial"
    mv "$(tarfile "$name").partial" "$(tarfile "$name")"
}

if ((${#todo[@]})); then
    log "to build: ${todo[*]}"
    start_docker
    for name in "${todo[@]}"; do
        case "${spec[$name]}" in
            *"|base-torch|"*) build_base base "$base_pkgs"; build_base base-torch "$torch_pkgs" ;;
            *"|base|"*) build_base base "$base_pkgs" ;;
        esac
        if [[ "$name" == pause ]]; then
            gcc -static -Os -s -o "$ctx/tests/cluster/images/pause" "$ctx/tests/cluster/images/pause.c"
        fi
        build_image "$name"
    done
    stop_dockerd
fi

# Older builds of each image: only the current one is kept (disk stays bounded).
for name in "${!spec[@]}"; do
    for old in "$out/$name"-*.tar; do
        [[ -e "$old" && "$old" != "$(tarfile "$name")" ]] && rm -f "$old"
    done
done

manifest="$out/images.env"
{
    for name in $(printf '%s\n' "${!spec[@]}" | sort); do
        var="$(echo "$name" | tr 'a-z-' 'A-Z_')"
        echo "${var}_IMAGE=$(ref "$name")"
        echo "${var}_TAR=$(tarfile "$name")"
    done
} >"$manifest.partial"
mv "$manifest.partial" "$manifest"
for name in $(printf '%s\n' "${!spec[@]}" | sort); do
    printf 'images.sh: %-13s %-45s %s\n' "$name" "$(ref "$name")" "$(du -h "$(tarfile "$name")" | cut -f1)" >&2
done
echo "$manifest"
