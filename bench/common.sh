# Sourced by the benchmark scripts that compare against a Python peer: one virtual
# environment outside the clone, the shared cargo target directory, and the header line that
# names the machine in every recorded run.
VENV="${FLOTILLA_BENCH_VENV:-$HOME/.cache/flotilla-bench-venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla-target}"

# bench_venv "MODULES" PACKAGE...: installs PACKAGEs from PyPI into the environment unless
# its Python can already import every one of MODULES (comma-separated).
bench_venv() {
  local modules=$1
  shift
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import $modules" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "$@"
  fi
}

machine_header() {
  echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
}
