{{/*
Naming and labels shared by every kallm template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "kallm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full resource name: fullnameOverride, or <release>-<chart name> (just the release
name when it already contains the chart name). 63 characters at most (DNS label).
*/}}
{{- define "kallm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "kallm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "kallm.labels" -}}
helm.sh/chart: {{ include "kallm.chart" . }}
{{ include "kallm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The labels that select kallm's pod (never change them: selectors are immutable). */}}
{{- define "kallm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kallm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of the `helm test` pod. Its name label differs from kallm's, so the Service, the
PodDisruptionBudget and the NetworkPolicy meant for kallm's pods never select it.
*/}}
{{- define "kallm.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "kallm.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{/* The ServiceAccount kallm runs as. */}}
{{- define "kallm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kallm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "kallm.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The Secret holding the provider keys, or "" when kallm gets none. */}}
{{- define "kallm.providerKeysSecret" -}}
{{- if .Values.providerKeys.existingSecret }}
{{- .Values.providerKeys.existingSecret }}
{{- else if .Values.providerKeys.values }}
{{- printf "%s-provider-keys" (include "kallm.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The Secret holding KALLM_ADMIN_KEY, or "" when the chart sets no admin key. */}}
{{- define "kallm.adminKeySecret" -}}
{{- if .Values.adminKey.existingSecret }}
{{- .Values.adminKey.existingSecret }}
{{- else if .Values.adminKey.value }}
{{- printf "%s-admin-key" (include "kallm.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The key of that Secret holding the admin key. */}}
{{- define "kallm.adminKeySecretKey" -}}
{{- if .Values.adminKey.existingSecret }}{{ .Values.adminKey.secretKey }}{{ else }}KALLM_ADMIN_KEY{{ end }}
{{- end }}

{{/* The TCP port of a URL: its explicit port, else the scheme's (https/rediss 443 or
6379, http 80, redis 6379); "" for unix:// and the like. Call with (list URL). */}}
{{- define "kallm.urlPort" -}}
{{- $url := urlParse (index . 0) }}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $url.host) }}
{{- if $port }}{{ $port }}
{{- else if eq $url.scheme "https" }}443
{{- else if eq $url.scheme "http" }}80
{{- else if has $url.scheme (list "redis" "rediss") }}6379
{{- end }}
{{- end }}

{{/* The environment variables the chart sets on the kallm container, one per line. */}}
{{- define "kallm.chartEnvNames" -}}
KALLM_HOST
KALLM_PORT
KALLM_CONFIG
KALLM_CACHE_FILE
KALLM_DB
KALLM_KEYS_DIR
KALLM_LOG_JSON
XDG_DATA_HOME
{{- if include "kallm.adminKeySecret" . }}
KALLM_ADMIN_KEY
{{- end }}
{{- if .Values.upstream.baseUrl }}
OPENAI_BASE_URL
{{- end }}
{{- if include "kallm.shared" . }}
KALLM_REDIS_URL
KALLM_REPLICAS
KALLM_RESERVATION_TTL
{{- end }}
{{- end }}

{{/* "true" when state is shared through Redis (a URL, a Secret or the in-chart Valkey). */}}
{{- define "kallm.shared" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret .Values.redis.valkey.enabled }}true{{ end }}
{{- end }}

{{/* The in-chart Valkey's name. */}}
{{- define "kallm.valkeyName" -}}
{{- printf "%s-valkey" (include "kallm.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding KALLM_REDIS_URL, or "" (no URL, or the in-chart Valkey's). */}}
{{- define "kallm.redisSecret" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecret }}
{{- else if .Values.redis.url }}
{{- printf "%s-redis" (include "kallm.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The labels that select the in-chart Valkey's pod (never kallm's). */}}
{{- define "kallm.valkeySelectorLabels" -}}
app.kubernetes.io/name: {{ include "kallm.name" . }}-valkey
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: shared-state
{{- end }}

{{/* Labels on the in-chart Valkey's resources (not kallm's: no Service selector or
ServiceMonitor meant for kallm may pick them). */}}
{{- define "kallm.valkeyLabels" -}}
helm.sh/chart: {{ include "kallm.chart" . }}
{{ include "kallm.valkeySelectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* What each pod divides rate limits by while Redis is away (the most pods there are). */}}
{{- define "kallm.replicaBound" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.maxReplicas }}{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{/* The fewest kallm pods there are (the PodDisruptionBudget must stay below it). */}}
{{- define "kallm.fewestPods" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.minReplicas }}{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{/* The PVC mounted at /data, or "" when persistence is off or state is shared. */}}
{{- define "kallm.claimName" -}}
{{- if and .Values.persistence.enabled (not (include "kallm.shared" .)) }}
{{- .Values.persistence.existingClaim | default (printf "%s-data" (include "kallm.fullname" .) | trunc 63 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/*
Refuse values the chart cannot run correctly with (called from the Deployment).
*/}}
{{- define "kallm.validate" -}}
{{- $shared := include "kallm.shared" . }}
{{- if and (ne (int .Values.replicaCount) 1) (not $shared) }}
{{- fail (printf "replicaCount must be 1 without shared state (got %v): each replica would keep its own cache, budgets and rate limits; set redis.url, redis.existingSecret or redis.valkey.enabled to run several" .Values.replicaCount) }}
{{- end }}
{{- if lt (int .Values.replicaCount) 1 }}
{{- fail (printf "replicaCount must be at least 1 (got %v)" .Values.replicaCount) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not $shared) }}
{{- fail "autoscaling.enabled needs shared state: set redis.url, redis.existingSecret or redis.valkey.enabled" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}
{{- if gt (add (.Values.redis.url | empty | not | ternary 1 0) (.Values.redis.existingSecret | empty | not | ternary 1 0) (.Values.redis.valkey.enabled | ternary 1 0)) 1 }}
{{- fail "set one of redis.url, redis.existingSecret and redis.valkey.enabled, not several" }}
{{- end }}
{{- $minAvailable := .Values.podDisruptionBudget.minAvailable }}
{{- if and $shared (gt (int (include "kallm.fewestPods" .)) 1) (not (kindIs "string" $minAvailable)) (ge (int $minAvailable) (int (include "kallm.fewestPods" .))) }}
{{- fail (printf "podDisruptionBudget.minAvailable (%v) must be below the number of pods (%s): otherwise no node running kallm could be drained" $minAvailable (include "kallm.fewestPods" .)) }}
{{- end }}
{{- if lt (int .Values.terminationGracePeriodSeconds) (add 35 (int .Values.preStopSeconds)) }}
{{- fail (printf "terminationGracePeriodSeconds must be at least 35 + preStopSeconds = %d (got %v): the pod waits preStopSeconds, kallm drains requests for up to 30 s, then writes its cache snapshot" (add 35 (int .Values.preStopSeconds)) .Values.terminationGracePeriodSeconds) }}
{{- end }}
{{- if and .Values.providerKeys.existingSecret .Values.providerKeys.values }}
{{- fail "set providerKeys.existingSecret or providerKeys.values, not both" }}
{{- end }}
{{- range $name, $_ := .Values.providerKeys.values }}
{{- if not (regexMatch "^[A-Za-z_][A-Za-z0-9_]*$" $name) }}
{{- fail (printf "providerKeys.values: %q is not an environment variable name" $name) }}
{{- end }}
{{- end }}
{{- if and .Values.adminKey.value .Values.adminKey.existingSecret }}
{{- fail "set adminKey.value or adminKey.existingSecret, not both" }}
{{- end }}
{{- if and .Values.adminKey.existingSecret (not .Values.adminKey.secretKey) }}
{{- fail "adminKey.existingSecret needs adminKey.secretKey (the Secret's key holding the admin key)" }}
{{- end }}
{{- if and (include "kallm.adminKeySecret" .) (hasKey .Values.providerKeys.values "KALLM_ADMIN_KEY") }}
{{- fail "the admin key is set twice: by adminKey and by providerKeys.values.KALLM_ADMIN_KEY; keep adminKey" }}
{{- end }}
{{- $chartEnv := include "kallm.chartEnvNames" . | splitList "\n" }}
{{- $seen := dict }}
{{- range .Values.extraEnv }}
{{- if not .name }}
{{- fail "extraEnv: every entry needs a name (a list of EnvVar: name with value or valueFrom)" }}
{{- end }}
{{- if has .name $chartEnv }}
{{- fail (printf "extraEnv sets %s, which the chart sets itself; use the chart's value for it (see values.yaml)" .name) }}
{{- end }}
{{- if hasKey $seen .name }}
{{- fail (printf "extraEnv sets %s twice" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- end }}
{{- $ownVolumes := list "data" "tmp" "config" "virtual-keys" }}
{{- range .Values.extraVolumes }}
{{- if has .name $ownVolumes }}
{{- fail (printf "extraVolumes: the name %q is the chart's own (data, tmp, config, virtual-keys); choose another" .name) }}
{{- end }}
{{- end }}
{{- $ownPaths := list "/data" "/tmp" "/etc/kallm/kallm.toml" (.Values.virtualKeys.mountPath | trimSuffix "/") }}
{{- range .Values.extraVolumeMounts }}
{{- if has (.mountPath | default "" | trimSuffix "/") $ownPaths }}
{{- fail (printf "extraVolumeMounts: %s is mounted by the chart itself" .mountPath) }}
{{- end }}
{{- end }}
{{- if .Values.ingress.enabled }}
{{- if not .Values.ingress.hosts }}
{{- fail "ingress.enabled needs ingress.hosts, e.g. [{host: kallm.example.com, paths: [{path: /, pathType: Prefix}]}]" }}
{{- end }}
{{- $hosts := list }}
{{- range .Values.ingress.hosts }}
{{- $hosts = append $hosts (.host | default "") }}
{{- range .paths }}
{{- if not (hasPrefix "/" (.path | default "")) }}
{{- fail (printf "ingress.hosts: path %q must start with /" (.path | default "")) }}
{{- end }}
{{- if not (has (.pathType | default "Prefix") (list "Prefix" "Exact" "ImplementationSpecific")) }}
{{- fail (printf "ingress.hosts: pathType %q is not Prefix, Exact or ImplementationSpecific" .pathType) }}
{{- end }}
{{- end }}
{{- end }}
{{- range .Values.ingress.tls }}
{{- range .hosts }}
{{- if not (has . $hosts) }}
{{- fail (printf "ingress.tls names host %s, which is not one of ingress.hosts" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
