#!/bin/sh
# Installs hypha, the rhizosphere device agent, as a systemd service on this machine:
#
#   curl -fsSL http://HUB:8080/install.sh | sudo sh -s -- --enroll-key KEY
#   curl -fsSL http://HUB:8080/install.sh | sudo sh -s -- --id pi-01 --token TOKEN
#
# The hub fills in the two settings below when it serves this file (GET /install.sh); run from
# a copy, pass --hub and --url. Running it again upgrades the agent and keeps the device's id
# and token. Options: --help; more in docs/install.md.
set -eu

HUB=''
DEFAULT_URL=''

# Byte-wise character ranges in the patterns below, whatever the machine's locale.
LC_ALL=C
export LC_ALL

EXIT_FAILED=1
EXIT_USAGE=2
NODE_MIN=18
ME='hypha install'

usage() {
  cat <<EOF
Installs hypha, the rhizosphere device agent, as the systemd service "hypha".

Usage: curl -fsSL HUB/install.sh | sudo sh -s -- --enroll-key KEY [options]
       curl -fsSL HUB/install.sh | sudo sh -s -- --id ID --token TOKEN [options]
       sh install.sh [options]           (again, to upgrade: id and token are kept)

Options:
  --enroll-key KEY  the hub's enrolment key: the device asks to join, an admin accepts it
                    (rhizosphere device accept ID)
  --id ID           device id, 1 to 128 of A-Z a-z 0-9 . _ : -
                    (default: the Raspberry Pi's serial, else /etc/machine-id, else hostname)
  --token TOKEN     the token of a device added by hand (rhizosphere device add ID); needs --id
  --url URL         broker URL(s), comma-separated, the device dials
                    (default: the one already installed, else ${DEFAULT_URL:-none: required})
  --hub URL         where to download the agent (default: ${HUB:-none: required})
  --prefix DIR      install under DIR instead of /, start nothing (no root needed)
  --no-start        install, but do not enable or start the service
  --node PATH       the Node.js ${NODE_MIN}+ binary the service runs (default: command -v node)
  --help            show this help

Exit status: 0 installed, 1 failed (nothing changed before the install step),
2 bad options.
EOF
}

say() {
  printf '%s: %s\n' "$ME" "$*"
}

die() {
  printf '%s: %s\n' "$ME" "$*" >&2
  exit "$EXIT_FAILED"
}

usage_error() {
  printf '%s: %s (see --help)\n' "$ME" "$*" >&2
  exit "$EXIT_USAGE"
}

# Values that go in the settings file unquoted: nothing that systemd's EnvironmentFile or
# sh would read differently (no blanks, quotes, backslashes, $, `, ;, &, |, <, >).
check_value() {
  case $2 in
    '') usage_error "$1 must not be empty" ;;
    *[!]A-Za-z0-9._~:/?#@%+,=[-]*) usage_error "$1: only letters, digits and ._~:/?#@%+,=[]- are allowed" ;;
  esac
}

# Paths that go in the unit's ExecStart= and EnvironmentFile= as they are.
check_path() {
  case $2 in
    *[!A-Za-z0-9._/+@,:~-]*) usage_error "$1 $2: only letters, digits and ._/+@,:~- are allowed in the path (it goes in a systemd unit)" ;;
  esac
}

id_ok() {
  case $1 in '' | *[!A-Za-z0-9._:-]*) return 1 ;; esac
  [ "${#1}" -le 128 ]
}

check_urls() {
  rest=$2,
  while [ -n "$rest" ]; do
    one=${rest%%,*}
    rest=${rest#*,}
    case $one in
      mqtt://?* | mqtts://?* | ws://?* | wss://?*) ;;
      *) usage_error "$1: \"$one\" must be mqtt://HOST:1883, mqtts://HOST:8883, ws://HOST:8080/mqtt or wss://HOST/mqtt" ;;
    esac
  done
  check_value "$1" "$2"
}

# The value of one KEY=VALUE line of the settings file, quotes taken off.
unquoted() {
  value=${1#*=}
  case $value in
    \"*\" | \'*\') value=${value#?} && value=${value%?} ;;
  esac
  printf '%s' "$value"
}

# The line of /etc/os-release that sets $1, unquoted (the file is read, never run).
os_release() {
  [ -r /etc/os-release ] || return 0
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in "$1"=*) unquoted "$line" && return 0 ;; esac
  done </etc/os-release
}

node_missing() {
  {
    printf '%s: %s\n' "$ME" "$1"
    printf 'hypha needs Node.js %s or later. Install it, then run this again:\n' "$NODE_MIN"
    os_id=$(os_release ID)
    os_codename=$(os_release VERSION_CODENAME)
    case $os_id:$os_codename in
      debian:stretch | debian:buster | debian:bullseye | raspbian:stretch | raspbian:buster | raspbian:bullseye)
        printf '  this is %s, whose nodejs package is too old: use NodeSource,\n' "$(os_release PRETTY_NAME)"
        printf '    curl -fsSL https://deb.nodesource.com/setup_20.x | bash - && apt-get install -y nodejs\n' ;;
      debian:* | raspbian:*) printf '  this is %s: apt-get install nodejs\n' "$(os_release PRETTY_NAME)" ;;
      alpine:*) printf '  this is Alpine: apk add nodejs\n' ;;
      fedora:*) printf '  this is Fedora: dnf install nodejs\n' ;;
    esac
    printf '  Debian 12, Raspberry Pi OS bookworm and later: apt-get install nodejs (Node.js 18)\n'
    printf '  older Debian and Raspberry Pi OS (bullseye ships Node.js 12): NodeSource,\n'
    printf '    https://github.com/nodesource/distributions\n'
    printf '  Alpine: apk add nodejs; Fedora: dnf install nodejs\n'
    printf 'or name a Node.js %s+ installed elsewhere with --node PATH.\n' "$NODE_MIN"
  } >&2
  exit "$EXIT_FAILED"
}

# The id hypha takes when HYPHA_ID is unset (src/hypha/identity.ts): the Raspberry Pi's serial
# unless all zeros, else /etc/machine-id, else the hostname.
default_id() {
  serial=$(sed -n 's/^Serial[[:space:]]*:[[:space:]]*\([0-9A-Fa-f][0-9A-Fa-f]*\)[[:space:]]*$/\1/p' /proc/cpuinfo 2>/dev/null | head -n 1) || serial=
  case $serial in *[!0]*) printf '%s' "$serial" && return 0 ;; esac
  machine_id=$(tr -d ' \t\n' </etc/machine-id 2>/dev/null) || machine_id=
  [ -n "$machine_id" ] && printf '%s' "$machine_id" && return 0
  uname -n
}

download() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 2 -o "$2" "$1" </dev/null || die "could not download $1 (is the hub reachable from here?)"
  elif command -v wget >/dev/null 2>&1; then
    wget -q -O "$2" "$1" </dev/null || die "could not download $1 (is the hub reachable from here?)"
  else
    die "needs curl or wget to download the agent (apt-get install curl)"
  fi
}

# The command that prints a file's SHA-256 (from its standard input) in its first field.
sha256_command() {
  if command -v sha256sum >/dev/null 2>&1; then
    SHA256='sha256sum'
  elif command -v shasum >/dev/null 2>&1; then
    SHA256='shasum -a 256'
  elif command -v openssl >/dev/null 2>&1; then
    SHA256='openssl dgst -sha256 -r'
  else
    die "needs sha256sum, shasum or openssl to check the agent's SHA-256"
  fi
}

# The version in a standalone agent's second line, `// hypha 0.1.0: ...` (empty without one).
banner_version() {
  sed -n '2s/^\/\/ hypha \([^:]*\):.*$/\1/p' "$1"
}

# put SOURCE TARGET MODE: a copy beside TARGET renamed over it, so that TARGET is always
# either the old file or the whole new one.
put() {
  PENDING=$2.new.$$
  cp "$1" "$PENDING"
  chmod "$3" "$PENDING"
  mv -f "$PENDING" "$2"
  PENDING=
}

main() {
  ENROLL_KEY='' TOKEN='' ID='' URL='' PREFIX='' NO_START='' NODE=''
  while [ $# -gt 0 ]; do
    option=$1
    case $option in
      --help | -h) usage && exit 0 ;;
      --no-start) NO_START=1 && shift && continue ;;
      --enroll-key=* | --token=* | --id=* | --url=* | --hub=* | --prefix=* | --node=*)
        value=${option#*=} && option=${option%%=*} && shift ;;
      --enroll-key | --token | --id | --url | --hub | --prefix | --node)
        [ $# -ge 2 ] || usage_error "$option needs a value"
        case $2 in --*) usage_error "$option needs a value" ;; esac
        value=$2 && shift 2 ;;
      *) usage_error "unknown option: $option" ;;
    esac
    [ -n "$value" ] || usage_error "$option needs a value"
    case $option in
      --enroll-key) ENROLL_KEY=$value ;;
      --token) TOKEN=$value ;;
      --id) ID=$value ;;
      --url) URL=$value ;;
      --hub) HUB=$value ;;
      --prefix) PREFIX=$value ;;
      --node) NODE=$value ;;
    esac
  done

  [ -z "$ID" ] || id_ok "$ID" || usage_error "--id \"$ID\" is not a device id: 1 to 128 of A-Z a-z 0-9 . _ : -"
  [ -z "$TOKEN" ] || check_value --token "$TOKEN"
  if [ -n "$ENROLL_KEY" ]; then
    check_value --enroll-key "$ENROLL_KEY"
    [ "${#ENROLL_KEY}" -ge 16 ] || usage_error "--enroll-key: the hub's key has at least 16 characters"
  fi
  [ -z "$TOKEN" ] || [ -z "$ENROLL_KEY" ] || usage_error "give --enroll-key or --token, not both"
  [ -z "$URL" ] || check_urls --url "$URL"
  if [ -n "$PREFIX" ]; then
    case $PREFIX in /*) ;; *) PREFIX=$(pwd)/$PREFIX ;; esac
    while case $PREFIX in */) true ;; *) false ;; esac do PREFIX=${PREFIX%/}; done
    [ -n "$PREFIX" ] || usage_error "--prefix /: leave --prefix out to install in /"
    check_path --prefix "$PREFIX"
    NO_START=1
  elif [ "$(id -u)" != 0 ]; then
    die "run this as root (curl ... | sudo sh -s -- ...), or try it out under a directory of your own with --prefix DIR"
  fi

  AGENT_DIR=$PREFIX/opt/hypha
  AGENT=$AGENT_DIR/hypha.js
  STATE_DIR=$PREFIX/var/lib/hypha
  TOKEN_FILE=$STATE_DIR/token
  SETTINGS=$PREFIX/etc/default/hypha
  UNIT=$PREFIX/etc/systemd/system/hypha.service

  # An earlier installation: its settings and token stay unless new ones are given.
  old_url='' old_id='' old_key='' old_token='' old_token_file=''
  if [ -f "$SETTINGS" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
      case $line in
        HYPHA_URL=*) old_url=$(unquoted "$line") ;;
        HYPHA_ID=*) old_id=$(unquoted "$line") ;;
        HYPHA_ENROLL_KEY=*) old_key=$(unquoted "$line") ;;
        HYPHA_TOKEN=*) old_token=$(unquoted "$line") ;;
        HYPHA_TOKEN_FILE=*) old_token_file=$(unquoted "$line") ;;
      esac
    done <"$SETTINGS"
  fi
  has_token_file=
  [ -s "$TOKEN_FILE" ] && has_token_file=1
  # A token file hand-installed elsewhere (README's way) is copied to ours, never moved.
  adopt_token=
  if [ -z "$has_token_file" ] && [ -n "$old_token_file" ] && [ "$old_token_file" != "$TOKEN_FILE" ] && [ -s "$old_token_file" ]; then
    case $old_token_file in "$PREFIX"/*) adopt_token=$old_token_file ;; esac
  fi

  [ -n "$TOKEN" ] || [ -n "$ENROLL_KEY" ] || [ -n "$has_token_file" ] || [ -n "$adopt_token" ] || [ -n "$old_key" ] || [ -n "$old_token" ] ||
    usage_error "say how this device gets in: --enroll-key KEY (it asks to join, an admin accepts it) or --id ID --token TOKEN (a device added with rhizosphere device add ID)"
  [ -z "$ID" ] && ID=$old_id
  [ -z "$TOKEN" ] || [ -n "$ID" ] || usage_error "--token needs --id: the id the device was added with"
  [ -n "$TOKEN" ] || [ -n "$ENROLL_KEY" ] || ENROLL_KEY=$old_key
  if [ -z "$URL" ]; then
    URL=${old_url:-$DEFAULT_URL}
    [ -n "$URL" ] || usage_error "--url is required: the broker the device dials, e.g. mqtt://HUB:1883"
    check_urls "the broker URL" "$URL"
  fi
  [ -n "$HUB" ] || usage_error "--hub is required: the hub to download the agent from, e.g. http://HUB:8080"
  case $HUB in
    http://?* | https://?*) ;;
    *) usage_error "--hub \"$HUB\" must be http://HOST:PORT or https://HOST" ;;
  esac
  case $HUB in *[[:space:]\"\'\\]*) usage_error "--hub \"$HUB\" is not a URL" ;; esac
  while case $HUB in */) true ;; *) false ;; esac do HUB=${HUB%/}; done
  shown_id=$ID
  if [ -z "$ID" ]; then
    shown_id=$(default_id)
    id_ok "$shown_id" || usage_error "this machine's default id \"$shown_id\" (Pi serial, else /etc/machine-id, else hostname) is not a device id: pass --id ID"
  fi

  # Node.js: found and recent enough, before anything is downloaded.
  if [ -z "$NODE" ]; then
    NODE=$(command -v node 2>/dev/null) || NODE=$(command -v nodejs 2>/dev/null) || node_missing "Node.js is not installed (no node on PATH)"
  fi
  if [ ! -f "$NODE" ] || [ ! -x "$NODE" ]; then node_missing "no Node.js at $NODE"; fi
  case $NODE in /*) ;; *) NODE=$(cd "$(dirname "$NODE")" && pwd)/${NODE##*/} ;; esac
  check_path --node "$NODE"
  node_version=$("$NODE" -v </dev/null 2>/dev/null) || node_missing "$NODE -v failed"
  node_major=${node_version#v}
  node_major=${node_major%%.*}
  case $node_major in '' | *[!0-9]*) node_missing "cannot tell the version of $NODE (-v printed \"$node_version\")" ;; esac
  [ "$node_major" -ge "$NODE_MIN" ] || node_missing "$NODE is Node.js $node_version, too old"
  say "Node.js $node_version at $NODE"
  command -v bash >/dev/null 2>&1 ||
    printf '%s: warning: bash is not installed; hypha runs the commands it receives with bash (apt-get install bash, apk add bash)\n' "$ME" >&2

  # Download, check, try: nothing is installed until the agent passed all three.
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/hypha-install.XXXXXX")
  PENDING=
  trap 'rm -rf "$WORK"; [ -z "$PENDING" ] || rm -f "$PENDING"' EXIT
  # Killed by a signal, the shell would skip the EXIT trap: these make it an ordinary exit.
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 141' PIPE
  trap 'exit 143' TERM
  say "downloading $HUB/agent/hypha.js"
  download "$HUB/agent/hypha.js" "$WORK/hypha.js"
  download "$HUB/agent/hypha.js.sha256" "$WORK/hypha.js.sha256"
  read -r expected _ <"$WORK/hypha.js.sha256" || true
  expected=$(printf '%s' "${expected:-}" | tr 'A-F' 'a-f')
  case $expected in *[!0-9a-f]* | '') die "$HUB/agent/hypha.js.sha256 holds no SHA-256: nothing was installed" ;; esac
  [ "${#expected}" -eq 64 ] || die "$HUB/agent/hypha.js.sha256 holds no SHA-256: nothing was installed"
  sha256_command
  actual=$($SHA256 <"$WORK/hypha.js" | cut -d ' ' -f 1 | tr 'A-F' 'a-f')
  [ "$actual" = "$expected" ] ||
    die "SHA-256 mismatch: $HUB/agent/hypha.js is $actual, hypha.js.sha256 says $expected; nothing was installed (a proxy or a cut download changed it? try again)"
  say "SHA-256 checked: $actual"

  # The agent is CommonJS: this package.json keeps a "type": "module" above it from saying otherwise.
  printf '{ "type": "commonjs" }\n' >"$WORK/package.json"
  # It runs here: --version, or --help for builds that have no --version.
  if printed=$("$NODE" "$WORK/hypha.js" --version </dev/null 2>/dev/null) && [ -n "$printed" ]; then
    printed=$(printf '%s\n' "$printed" | head -n 1)
  elif "$NODE" "$WORK/hypha.js" --help </dev/null >/dev/null 2>"$WORK/stderr"; then
    printed=
  else
    die "the downloaded agent does not run on Node.js $node_version ($NODE): $(head -c 400 "$WORK/stderr"); nothing was installed"
  fi
  # Its version as the hub tells it (x-hypha-version): the banner, `// hypha 0.1.0: ...`.
  agent_version=$(banner_version "$WORK/hypha.js")
  agent_version=${agent_version:-${printed:-unknown}}
  say "hypha $agent_version runs on Node.js $node_version"

  # Install.
  (umask 022 && mkdir -p "$AGENT_DIR" "$PREFIX/etc/default" "$PREFIX/etc/systemd/system" "$STATE_DIR")
  chmod 700 "$STATE_DIR"
  umask 077
  action=installed
  if [ -f "$AGENT" ]; then
    old_version=$(banner_version "$AGENT")
    action="upgraded from ${old_version:-an unknown version}"
    [ "$old_version" != "$agent_version" ] || action=reinstalled
  fi
  put "$WORK/package.json" "$AGENT_DIR/package.json" 644
  put "$WORK/hypha.js" "$AGENT" 755
  # The marker of an unfinished `rhizosphere agent upgrade` (src/hypha/self-upgrade.ts) would
  # have the next start put hypha.js.prev back over the agent just checked and installed.
  rm -f "$AGENT.upgrade.json"
  say "$action: $AGENT"

  if [ -n "$TOKEN" ]; then
    printf '%s\n' "$TOKEN" >"$WORK/token"
    put "$WORK/token" "$TOKEN_FILE" 600
    say "wrote the token to $TOKEN_FILE"
  elif [ -n "$adopt_token" ]; then
    put "$adopt_token" "$TOKEN_FILE" 600
    say "copied the token from $adopt_token to $TOKEN_FILE"
  elif [ -n "$has_token_file" ]; then
    chmod 600 "$TOKEN_FILE"
    say "kept the token in $TOKEN_FILE"
  fi

  header1='# hypha settings, read by hypha.service. install.sh rewrites the HYPHA_URL, HYPHA_ID,'
  header2='# HYPHA_TOKEN_FILE and HYPHA_ENROLL_KEY lines and keeps the others. Every HYPHA_* variable:'
  header3="# $NODE $AGENT --help"
  {
    printf '%s\n%s\n%s\n' "$header1" "$header2" "$header3"
    printf 'HYPHA_URL=%s\n' "$URL"
    [ -z "$ID" ] || printf 'HYPHA_ID=%s\n' "$ID"
    printf 'HYPHA_TOKEN_FILE=%s\n' "$TOKEN_FILE"
    [ -z "$ENROLL_KEY" ] || printf 'HYPHA_ENROLL_KEY=%s\n' "$ENROLL_KEY"
    if [ -f "$SETTINGS" ]; then
      while IFS= read -r line || [ -n "$line" ]; do
        case $line in
          "$header1" | "$header2" | '# '*' --help' | HYPHA_URL=* | HYPHA_ID=* | HYPHA_TOKEN_FILE=* | HYPHA_ENROLL_KEY=*) ;;
          # A token given now goes in the token file, and would lose to one left here.
          HYPHA_TOKEN=*) [ -n "$TOKEN" ] || printf '%s\n' "$line" ;;
          *) printf '%s\n' "$line" ;;
        esac
      done <"$SETTINGS"
    fi
  } >"$WORK/settings"
  put "$WORK/settings" "$SETTINGS" 600
  say "wrote $SETTINGS"

  cat >"$WORK/unit" <<EOF
# hypha, the rhizosphere device agent. Written by install.sh, which rewrites it on every run:
# change it with a drop-in (systemctl edit hypha). Settings: $SETTINGS.
# Commands from the hub run as this service's user: root, unless a drop-in sets User=.

[Unit]
Description=hypha, the rhizosphere device agent
After=network-online.target
Wants=network-online.target
# Never give up: a device may spend days without a network.
StartLimitIntervalSec=0

[Service]
Type=simple
User=root
EnvironmentFile=$SETTINGS
ExecStart=$NODE $AGENT
# hypha reconnects by itself; this covers the process ending.
Restart=always
RestartSec=5
# Stopping hypha stops the commands it started: they live in its control group.
KillMode=control-group
TimeoutStopSec=10

[Install]
WantedBy=multi-user.target
EOF
  put "$WORK/unit" "$UNIT" 644
  say "wrote $UNIT"

  run_by_hand="sh -c 'set -a && . $SETTINGS && exec $NODE $AGENT'"
  if [ -n "$PREFIX" ]; then
    started="not started (--prefix)"
  elif [ -n "$NO_START" ]; then
    started="not started (--no-start)"
  elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload </dev/null
    systemctl enable --quiet hypha </dev/null
    systemctl restart hypha </dev/null || die "systemctl restart hypha failed: journalctl -u hypha -n 50"
    # A bad setting ends hypha at once (status 2), and systemd then restarts it every 5 s.
    sleep 2
    if systemctl is-active --quiet hypha </dev/null; then
      started="started: follow it with journalctl -u hypha -f"
    else
      started="started, but it is not running: journalctl -u hypha -n 50"
    fi
  else
    started="not started: systemd is not running here"
  fi

  echo
  say "hypha $agent_version $action, $started"
  echo "  agent     $AGENT"
  echo "  node      $NODE ($node_version)"
  echo "  settings  $SETTINGS (mode 600)"
  echo "  service   $UNIT"
  echo "  broker    $URL"
  if [ -n "$ID" ]; then
    echo "  device id $ID (HYPHA_ID)"
  else
    echo "  device id $shown_id (this machine's, as hypha picks it without HYPHA_ID)"
  fi
  if [ -n "$TOKEN" ] || [ -n "$has_token_file" ] || [ -n "$adopt_token" ]; then
    echo "  token     $TOKEN_FILE (mode 600)"
  elif [ -n "$ENROLL_KEY" ]; then
    echo "  token     $TOKEN_FILE (mode 600), made by hypha on its first start"
  fi
  case $started in
    started*) ;;
    *--prefix*) echo "Run it as the unit would: $run_by_hand" ;;
    *--no-start*) echo "Start it: systemctl daemon-reload && systemctl enable hypha && systemctl restart hypha" ;;
    *) echo "Start it with your init system, as: $run_by_hand" ;;
  esac
  if [ -n "$ENROLL_KEY" ]; then
    echo "It asks to join with the enrolment key. Unless it was accepted before, an admin accepts it on"
    echo "the hub: rhizosphere device accept $shown_id (or the console's Devices panel, \"Waiting to join\")."
  fi
}

# Everything runs from here, once the whole script has been read: a download cut short runs nothing.
main "$@"
