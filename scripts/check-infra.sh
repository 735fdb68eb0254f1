#!/usr/bin/env bash
# Checks the deployment code in terraform/ and ansible/ without touching any cloud account:
#
#   1. checkov on terraform/: fails on any finding. Skips must be inline
#      (#checkov:skip=CKV_…:reason) with a written reason, or listed with reasons in
#      terraform/.checkov.yml; every inline skip is printed.
#   2. every .tf file (and terraform.tfvars.example) parses as HCL2 (python-hcl2; there is no
#      terraform binary here), and the agents' boot script template is valid bash.
#   3. ansible-lint on ansible/ with the production profile (ansible/.ansible-lint).
#   4. ansible-playbook --syntax-check on ansible/site.yml with the example inventory.
#
# Tools are installed from PyPI, at the versions pinned below, into virtual environments
# outside the clone (FLOTILLA_INFRA_VENV, default ~/.cache/flotilla-infra-venv), only when
# missing or at another version. Two environments, because checkov depends on
# bc-python-hcl2, a fork that installs the same `hcl2` module as python-hcl2, and pins
# packaging below what ansible-lint needs.
#
# Every step runs even when an earlier one failed; the script exits 1 if any failed.
set -uo pipefail

CHECKOV_VERSION=3.3.30
ANSIBLE_CORE_VERSION=2.19.14
ANSIBLE_LINT_VERSION=26.10.1
PYTHON_HCL2_VERSION=8.1.4

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV_ROOT=${FLOTILLA_INFRA_VENV:-$HOME/.cache/flotilla-infra-venv}
CHECKOV_VENV=$VENV_ROOT/checkov
ANSIBLE_VENV=$VENV_ROOT/ansible

started=$(date +%s)
failed=()

step() {
  printf '\n==> %s\n' "$*"
}

# installed VENV DIST: the installed version of a distribution in a venv, or nothing.
installed() {
  "$1/bin/python" - "$2" <<'PY' 2>/dev/null
import importlib.metadata, sys
try:
    print(importlib.metadata.version(sys.argv[1]))
except importlib.metadata.PackageNotFoundError:
    pass
PY
}

# ensure_venv VENV NAME==VERSION...: create the venv if needed and install the pins that are
# missing or at another version.
ensure_venv() {
  local venv=$1
  shift
  if [[ ! -x $venv/bin/python ]]; then
    echo "creating $venv"
    python3 -m venv "$venv" || return 1
  fi
  local missing=()
  local pin
  for pin in "$@"; do
    if [[ $(installed "$venv" "${pin%%==*}") != "${pin##*==}" ]]; then
      missing+=("$pin")
    fi
  done
  if ((${#missing[@]} > 0)); then
    echo "installing ${missing[*]} into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${missing[@]}" || return 1
  fi
  for pin in "$@"; do
    echo "  ${pin%%==*} $(installed "$venv" "${pin%%==*}")"
  done
}

step "tools (pinned: checkov $CHECKOV_VERSION, ansible-core $ANSIBLE_CORE_VERSION, ansible-lint $ANSIBLE_LINT_VERSION, python-hcl2 $PYTHON_HCL2_VERSION)"
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "python3 3.11 or newer is needed (ansible-core $ANSIBLE_CORE_VERSION); found $(python3 --version 2>&1)"
  exit 1
fi
if ! ensure_venv "$CHECKOV_VENV" "checkov==$CHECKOV_VERSION"; then
  echo "FAIL: could not install checkov"
  exit 1
fi
if ! ensure_venv "$ANSIBLE_VENV" "ansible-core==$ANSIBLE_CORE_VERSION" \
  "ansible-lint==$ANSIBLE_LINT_VERSION" "python-hcl2==$PYTHON_HCL2_VERSION"; then
  echo "FAIL: could not install ansible-core, ansible-lint and python-hcl2"
  exit 1
fi

# --- 1. checkov ----------------------------------------------------------------------------

step "checkov: terraform/"
skips_ok=true
while IFS= read -r line; do
  # terraform/FILE:LINE:  #checkov:skip=CKV_ID:reason
  if [[ $line =~ ^([^:]+:[0-9]+):[[:space:]]*#[[:space:]]*checkov:skip=([A-Za-z0-9_]+)(:(.*))?$ ]]; then
    location=${BASH_REMATCH[1]}
    check_id=${BASH_REMATCH[2]}
    reason=${BASH_REMATCH[4]}
  else
    location=${line%%:*}
    check_id="(unreadable)"
    reason=""
  fi
  if ((${#reason} < 20)); then
    echo "FAIL: $location skips $check_id without a written reason"
    skips_ok=false
  else
    echo "  skipped $check_id at $location: $reason"
  fi
done < <(grep -rn --include='*.tf' 'checkov:skip=' "$ROOT/terraform" | sed "s|^$ROOT/||")
checkov_report=$(mktemp)
checkov_args=(--directory "$ROOT/terraform" --framework terraform --skip-download --compact --quiet
  --output cli --output json --output-file-path "console,$checkov_report")
if [[ -f $ROOT/terraform/.checkov.yml ]]; then
  echo "  with terraform/.checkov.yml"
  checkov_args+=(--config-file "$ROOT/terraform/.checkov.yml")
fi
checkov_ok=true
"$CHECKOV_VENV/bin/checkov" "${checkov_args[@]}" || checkov_ok=false
# checkov skips a file it cannot parse and still exits 0: read the count from its report.
if ! python3 - "$checkov_report" <<'PY'; then
import json, sys
with open(sys.argv[1]) as handle:
    report = json.load(handle)
summary = report.get("summary", {}) if isinstance(report, dict) else {}
if not summary.get("resource_count"):
    sys.exit("FAIL: checkov scanned no resources")
if summary.get("parsing_errors"):
    sys.exit(f"FAIL: checkov could not parse {summary['parsing_errors']} file(s); the HCL2 step names them")
print(f"checkov: {summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped, "
      f"{summary['resource_count']} resources")
PY
  checkov_ok=false
fi
rm -f "$checkov_report"
if $checkov_ok && $skips_ok; then
  echo "checkov: no findings"
else
  failed+=("checkov")
fi

# --- 2. HCL and the boot script --------------------------------------------------------------

step "HCL2 parse: every .tf file and terraform.tfvars.example"
if (cd "$ROOT" && "$ANSIBLE_VENV/bin/python" - <<'PY'); then
import pathlib, sys
import hcl2

paths = sorted(pathlib.Path("terraform").rglob("*.tf"))
paths += sorted(pathlib.Path("terraform").rglob("*.tfvars.example"))
paths = [p for p in paths if ".terraform" not in p.parts]
bad = 0
for path in paths:
    try:
        with path.open() as handle:
            hcl2.load(handle)
    except Exception as error:  # the parser raises several lark error types
        bad += 1
        print(f"FAIL: {path} does not parse: {str(error).splitlines()[0]}")
print(f"parsed {len(paths) - bad} of {len(paths)} files")
sys.exit(1 if bad else 0)
PY
  :
else
  failed+=("hcl2 parse")
fi

step "bash -n: terraform/modules/agents/user_data.sh.tftpl (rendered with placeholders)"
rendered=$(mktemp)
# Terraform template syntax → bash: directives removed, $${ unescaped, ${var} filled in.
sed -e 's/%{[^}]*}//g' -e 's/\$\${/__DOLLAR_BRACE__/g' -e 's/\${[a-z_]*}/placeholder/g' \
  -e 's/__DOLLAR_BRACE__/${/g' "$ROOT/terraform/modules/agents/user_data.sh.tftpl" >"$rendered"
if bash -n "$rendered"; then
  echo "boot script: valid bash"
else
  failed+=("boot script syntax")
fi
rm -f "$rendered"

# --- 3. ansible-lint -------------------------------------------------------------------------

step "ansible-lint: ansible/ (production profile)"
if (cd "$ROOT/ansible" && PATH="$ANSIBLE_VENV/bin:$PATH" ANSIBLE_CONFIG="$ROOT/ansible/ansible.cfg" \
  ansible-lint --config-file .ansible-lint --nocolor); then
  :
else
  failed+=("ansible-lint")
fi

# --- 4. syntax check -------------------------------------------------------------------------

step "ansible-playbook --syntax-check -i ansible/inventory.example.ini ansible/site.yml"
if (cd "$ROOT" && PATH="$ANSIBLE_VENV/bin:$PATH" ANSIBLE_CONFIG="$ROOT/ansible/ansible.cfg" \
  ansible-playbook --syntax-check -i ansible/inventory.example.ini ansible/site.yml); then
  :
else
  failed+=("ansible syntax-check")
fi

elapsed=$(($(date +%s) - started))
echo
if ((${#failed[@]} > 0)); then
  echo "check-infra: FAILED (${failed[*]}) in ${elapsed}s"
  exit 1
fi
echo "check-infra: all checks passed in ${elapsed}s"
