#!/usr/bin/env bash
# Submit an ltx-ray training run to a running Ray cluster with `ray job submit`.
#
# The repository is uploaded as the job's working directory, so the cluster runs
# the code you have checked out (`python -m ltx_ray ...` imports it from there;
# the console script need not be installed). The cluster image must already hold
# the dependencies (cluster/Dockerfile), or pass --pip to install them through
# the runtime env.
#
# Secrets: credentials are forwarded through the runtime env's env_vars, written
# to a private temporary file (never on a command line, where `ps` shows them);
# everything this script prints has their values redacted. No `set -x` here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Forwarded to the job when set in this shell.
FORWARD_ENV=(
  WANDB_API_KEY WANDB_ENTITY
  AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_DEFAULT_REGION
  GOOGLE_APPLICATION_CREDENTIALS
)

usage() {
  cat <<'EOF'
Usage: scripts/submit.sh [options] [CONFIG] [OVERRIDE ...]

Submit `python -m ltx_ray train CONFIG storage.run_name=NAME OVERRIDE...` to a
Ray cluster with `ray job submit --working-dir <repo>`.

  CONFIG                  config file inside the repository (default: conf/default.yaml)
  OVERRIDE                dotlist overrides, e.g. request.rank=64 storage.storage_path=s3://b/runs

Options:
  -a, --address URL       Ray dashboard address
                          (default: $RAY_ADDRESS, else http://127.0.0.1:8265)
  -n, --run-name NAME     storage.run_name. Re-submitting with the same name (and the same
                          storage.storage_path) resumes that run from its last checkpoint.
                          Default: the config's, else a stable digest of the request.
  -c, --config FILE       the config file (same as the positional CONFIG)
      --submission-id ID  Ray job submission id (default: ltx-ray-<run name>-<UTC time>)
      --pip               install the project's dependencies on the cluster through the
                          runtime env (for a stock rayproject/ray image; slow, once per node)
      --env NAME          forward one more environment variable (repeatable)
      --no-secrets        forward no credentials from this shell (the cluster has its own,
                          e.g. from a Kubernetes Secret or an instance role)
      --skip-validate     do not check the config locally before submitting
      --no-wait           return after submitting instead of streaming the job's logs
      --dry-run           print the runtime env (secrets redacted) and the command, run nothing
  -h, --help              show this help

Forwarded when set (values are never printed):
  WANDB_API_KEY WANDB_ENTITY AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN
  AWS_DEFAULT_REGION GOOGLE_APPLICATION_CREDENTIALS (a path: it must exist on the cluster nodes)

Environment: RAY (the ray CLI, default `ray`), PYTHON (default: .venv/bin/python, else python3).

Examples:
  scripts/submit.sh --run-name av2av-neon conf/default.yaml \
      storage.storage_path=s3://my-bucket/ltx-ray/runs request.training_data_url=s3://my-bucket/pairs.zip
  scripts/submit.sh --dry-run -n av2av-neon conf/default.yaml request.rank=64
EOF
}

die() { echo "submit.sh: $*" >&2; exit 2; }

ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
RUN_NAME=""
CONFIG=""
SUBMISSION_ID=""
PIP=0
SECRETS=1
VALIDATE=1
NO_WAIT=0
DRY_RUN=0
EXTRA_ENV=()
POSITIONAL=()

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -a|--address) need_value "$@"; ADDRESS="$2"; shift 2 ;;
    --address=*) ADDRESS="${1#*=}"; shift ;;
    -n|--run-name) need_value "$@"; RUN_NAME="$2"; shift 2 ;;
    --run-name=*) RUN_NAME="${1#*=}"; shift ;;
    -c|--config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --config=*) CONFIG="${1#*=}"; shift ;;
    --submission-id) need_value "$@"; SUBMISSION_ID="$2"; shift 2 ;;
    --submission-id=*) SUBMISSION_ID="${1#*=}"; shift ;;
    --env) need_value "$@"; EXTRA_ENV+=("$2"); shift 2 ;;
    --env=*) EXTRA_ENV+=("${1#*=}"); shift ;;
    --pip) PIP=1; shift ;;
    --no-secrets) SECRETS=0; shift ;;
    --skip-validate) VALIDATE=0; shift ;;
    --no-wait) NO_WAIT=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; POSITIONAL+=("$@"); break ;;
    -*) die "unknown option: $1 (see --help)" ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done

# The first positional argument without '=' is the config; the rest are overrides.
OVERRIDES=()
for arg in ${POSITIONAL[@]+"${POSITIONAL[@]}"}; do
  if [[ -z "$CONFIG" && "$arg" != *=* ]]; then
    CONFIG="$arg"
  elif [[ "$arg" == *=* ]]; then
    OVERRIDES+=("$arg")
  else
    die "unexpected argument: $arg (overrides read key=value)"
  fi
done
CONFIG="${CONFIG:-conf/default.yaml}"

# The config travels inside the working dir, so it must live in the repository.
[[ -f "$CONFIG" ]] || [[ -f "$ROOT/$CONFIG" ]] || die "config file not found: $CONFIG"
if [[ -f "$CONFIG" ]]; then
  CONFIG_ABS="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"
else
  CONFIG_ABS="$ROOT/$CONFIG"
fi
case "$CONFIG_ABS" in
  "$ROOT"/*) CONFIG_REL="${CONFIG_ABS#"$ROOT"/}" ;;
  *) die "the config must be inside the repository ($ROOT), which is uploaded as the working dir: $CONFIG" ;;
esac

for name in ${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}; do
  [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--env takes a variable name, got: $name"
done

if [[ -n "$RUN_NAME" ]]; then
  [[ "$RUN_NAME" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ ]] \
    || die "--run-name may contain only letters, digits, '.', '_' and '-' (max 128)"
  OVERRIDES=("storage.run_name=$RUN_NAME" ${OVERRIDES[@]+"${OVERRIDES[@]}"})
  SUBMISSION_ID="${SUBMISSION_ID:-ltx-ray-$RUN_NAME-$(date -u +%Y%m%d-%H%M%S)}"
fi

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
RAY="${RAY:-ray}"

# Fail here, not on the cluster: the same checks the job runs first (exit 2 on a bad request).
if [[ "$VALIDATE" == 1 ]]; then
  if (cd "$ROOT" && "$PYTHON" -c 'import ltx_ray.config' >/dev/null 2>&1); then
    (cd "$ROOT" && "$PYTHON" -m ltx_ray validate "$CONFIG_REL" ${OVERRIDES[@]+"${OVERRIDES[@]}"} >/dev/null) \
      || die "the config was rejected (see above); nothing was submitted"
  else
    echo "submit.sh: note: $PYTHON cannot import ltx_ray; skipping the local config check" >&2
  fi
fi

NAMES=()
if [[ "$SECRETS" == 1 ]]; then NAMES+=("${FORWARD_ENV[@]}"); fi
NAMES+=(${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"})

# Build the runtime env in Python (correct JSON escaping). Values are read from the
# environment, never from argv. Mode "show" prints it with secret values redacted.
runtime_env() {  # $1 = show | write
  LTX_FORWARD="${NAMES[*]-}" LTX_PIP="$PIP" LTX_ROOT="$ROOT" "$PYTHON" - "$1" <<'PY'
import json, os, re, sys

mode = sys.argv[1]
secret = re.compile(r"(key|secret|token|password|credential)", re.IGNORECASE)
env_vars = {"PYTHONUNBUFFERED": "1"}
for name in os.environ.get("LTX_FORWARD", "").split():
    if os.environ.get(name):
        value = os.environ[name]
        env_vars[name] = "<redacted>" if mode == "show" and secret.search(name) else value
# Uploaded with the working dir otherwise (.gitignore is honoured too; be explicit).
env = {
    "env_vars": env_vars,
    "excludes": [".venv/", ".git/", "runs/", ".cache/", "wandb/", ".pytest_cache/",
                 "__pycache__/", "*.egg-info/", "*.safetensors"],
}
if os.environ.get("LTX_PIP") == "1":
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    with open(os.path.join(os.environ["LTX_ROOT"], "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    # Ray itself comes from the cluster image; a runtime env must not reinstall it.
    env["pip"] = {"packages": [d for d in deps if not re.match(r"ray\b", d)], "pip_check": False}
    env["config"] = {"setup_timeout_seconds": 3600}
json.dump(env, sys.stdout, indent=2 if mode == "show" else None)
sys.stdout.write("\n")
PY
}

CMD=("$RAY" job submit --address "$ADDRESS" --working-dir "$ROOT")
[[ -n "$SUBMISSION_ID" ]] && CMD+=(--submission-id "$SUBMISSION_ID")
[[ "$NO_WAIT" == 1 ]] && CMD+=(--no-wait)
ENTRYPOINT=(python -m ltx_ray train "$CONFIG_REL" ${OVERRIDES[@]+"${OVERRIDES[@]}"})

show_command() {  # $1 = the runtime env file shown in the command
  echo "runtime env (secret values redacted):"
  runtime_env show
  echo "command:"
  printf '%q ' "${CMD[@]}" --runtime-env "$1" --
  printf '%q ' "${ENTRYPOINT[@]}"
  echo
}

if [[ "$DRY_RUN" == 1 ]]; then
  show_command RUNTIME_ENV_FILE
  echo "(dry run: nothing was submitted)"
  exit 0
fi

command -v "$RAY" >/dev/null 2>&1 || die "the ray CLI ($RAY) is not on PATH; pip install 'ray[default]==2.60.0'"

ENV_FILE="$(umask 077 && mktemp "${TMPDIR:-/tmp}/ltx-ray-runtime-env.XXXXXX")"
trap 'rm -f "$ENV_FILE"' EXIT
runtime_env write >"$ENV_FILE"
show_command "$ENV_FILE"
# Not exec: the trap must remove the file holding the secrets afterwards.
"${CMD[@]}" --runtime-env "$ENV_FILE" -- "${ENTRYPOINT[@]}"
