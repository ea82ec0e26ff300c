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

{{/* The PVC mounted at /data, or "" when persistence is off. */}}
{{- define "kallm.claimName" -}}
{{- if .Values.persistence.enabled }}
{{- .Values.persistence.existingClaim | default (printf "%s-data" (include "kallm.fullname" .) | trunc 63 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/*
Refuse values the chart cannot run correctly with (called from the Deployment).
*/}}
{{- define "kallm.validate" -}}
{{- if ne (int .Values.replicaCount) 1 }}
{{- fail (printf "replicaCount must be 1 (got %v): kallm keeps its cache, and soon its spend and rate-limit counters, in the process, so replicas would not share them; see values.yaml" .Values.replicaCount) }}
{{- end }}
{{- if lt (int .Values.terminationGracePeriodSeconds) 35 }}
{{- fail (printf "terminationGracePeriodSeconds must be at least 35 (got %v): kallm drains requests for up to 30 s, then writes its cache snapshot" .Values.terminationGracePeriodSeconds) }}
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
