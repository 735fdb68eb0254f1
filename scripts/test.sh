#!/usr/bin/env bash
# Runs Flotilla's whole test suite on a fresh Debian machine: installs what the build and the
# tests need, builds once into a target directory outside the clone (reused between runs),
# checks formatting and lints, and runs every test with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# moto_server (below) goes into a virtualenv; Debian ships venv support separately.
python3 -c "import ensurepip" 2>/dev/null || need_apt+=(python3-venv)
# The high-availability tests start real etcd members and probe them with etcdctl.
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
# The partition test puts a coordinator in a network namespace (it skips, saying why, where
# namespaces are not allowed).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# A real Prometheus scrapes a test cluster; promtool checks monitoring/.
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
# The web view is tested in headless Chromium.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# curl is the outside HTTPS client that tries the agents' serving endpoints as an attacker would.
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  fi
fi
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
# Supply-chain checks (deny.toml): cargo-deny at a pinned version.
CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
  cargo install --locked "cargo-deny@$CARGO_DENY_VERSION"
fi
# The autoscaler's `aws` provider is tested against moto_server, an AWS-compatible endpoint
# from PyPI, kept in a virtualenv outside the clone.
moto_venv="${FLOTILLA_MOTO_VENV:-$HOME/.cache/flotilla-moto-venv}"
if [ ! -x "$moto_venv/bin/moto_server" ]; then
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install -q "moto[server]==5.2.5"
fi
export FLOTILLA_MOTO_SERVER="$moto_venv/bin/moto_server"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Where the time goes: each step's seconds, printed when the script ends (also on failure).
timings=()
timed() {
  local name=$1 started=$SECONDS status=0
  shift
  "$@" || status=$?
  timings+=("$(printf '%6d s  %s' $((SECONDS - started)) "$name")")
  return "$status"
}
report_timings() {
  echo "time per step (total ${SECONDS} s):"
  printf '  %s\n' "${timings[@]}"
}
trap report_timings EXIT

timed fmt cargo fmt --all -- --check
# Licences, banned crates and sources need only the lockfile and the registry.
timed "cargo deny" cargo deny --all-features check --hide-inclusion-graph bans licenses sources
# Advisories need the RustSec database, cloned from GitHub: checked whenever it can be
# fetched (a vulnerable, unsound or yanked crate fails the run), and said plainly when not.
if cargo deny fetch db >/dev/null 2>&1; then
  cargo deny --all-features check --hide-inclusion-graph advisories
else
  echo "cargo deny: the RustSec advisory database (github.com/rustsec/advisory-db) cannot be fetched from this machine; advisories NOT checked in this run"
fi
timed promtool promtool check config monitoring/prometheus.yml
promtool check rules monitoring/rules/flotilla.yml
promtool test rules monitoring/rules/flotilla_test.yml
# terraform/ and ansible/: checkov, an HCL parse of every file, ansible-lint, syntax check.
timed "terraform/ and ansible/ checks" ./scripts/check-infra.sh
timed clippy cargo clippy --workspace --all-targets --all-features -- -D warnings
# The command-trial helper (python/flotilla_trial, stdlib only) and its resumable example.
timed "python helper tests" python3 -m unittest discover -s python/tests
# Doc tests are not run by nextest; run them first so the suite's summary closes the log.
timed "doc tests" cargo test --workspace --all-features --doc
# The partition test needs network namespaces (root). Where a probe namespace can be made it
# must run, and fails rather than skips; where not, it is left out and the summary says so.
partition_test='test(a_leader_cut_off_by_a_partition_steps_down_and_rejoins_as_a_follower)'
filter=(-E 'all()')
skipped=""
if probe=$(ip netns add flotilla-ci-probe 2>&1) && ip netns del flotilla-ci-probe 2>/dev/null; then
  export FLOTILLA_REQUIRE_NETNS=1
else
  filter=(-E "not $partition_test")
  skipped="SKIPPED: the partition test (network namespaces unavailable: ${probe:-ip netns failed})"
  echo "$skipped"
fi
status=0
# Built first so that the build's minutes and the tests' are told apart.
timed "test build" cargo nextest run --workspace --all-features --no-run
timed tests cargo nextest run --workspace --all-features --no-fail-fast "${filter[@]}" || status=$?
if [ -n "$skipped" ]; then echo "$skipped"; fi
[ "$status" -eq 0 ] || exit "$status"
echo "test artifacts (the web view's screenshot): ${CARGO_TARGET_DIR}/tmp/artifacts"
