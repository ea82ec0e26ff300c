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
{{- end }}
