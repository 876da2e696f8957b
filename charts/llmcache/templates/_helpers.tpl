{{/*
Names are truncated to 63 characters: Kubernetes object names used as DNS
labels (Services, and so every name we derive from them) are limited to 63
characters by RFC 1123, and label values have the same limit.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "llmcache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release-qualified name. A release named like the chart is not repeated
("llmcache", not "llmcache-llmcache").
*/}}
{{- define "llmcache.fullname" -}}
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

{{/*
The name of one component: "<fullname>-<component>", still within 63
characters (the suffix is kept, the release part shortened).
Usage: include "llmcache.componentName" (list . "operator")
*/}}
{{- define "llmcache.componentName" -}}
{{- $ctx := index . 0 }}
{{- $component := index . 1 }}
{{- $room := int (sub 62 (len $component)) }}
{{- printf "%s-%s" (include "llmcache.fullname" $ctx | trunc $room | trimSuffix "-") $component }}
{{- end }}

{{- define "llmcache.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "llmcache.labels" -}}
helm.sh/chart: {{ include "llmcache.chart" . }}
app.kubernetes.io/name: {{ include "llmcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of one component; never change them across versions
(Deployment selectors are immutable).
Usage: include "llmcache.selectorLabels" (list . "operator")
*/}}
{{- define "llmcache.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "llmcache.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* All labels of one component. Usage: include "llmcache.componentLabels" (list . "operator") */}}
{{- define "llmcache.componentLabels" -}}
{{ include "llmcache.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
A reference to one of llmcache's own images (operator, proxy, model server): with
global.imageRegistry, "<imageRegistry>/<last part of image.repository>", else the
repository as it is; an empty tag means the chart's appVersion.
Usage: include "llmcache.image" (list . .Values.operator.image)
*/}}
{{- define "llmcache.image" -}}
{{- $ctx := index . 0 }}
{{- $image := index . 1 }}
{{- $repository := $image.repository }}
{{- with ($ctx.Values.global | default dict).imageRegistry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) (last (splitList "/" $image.repository)) }}
{{- end }}
{{- printf "%s:%s" $repository (default $ctx.Chart.AppVersion $image.tag) }}
{{- end }}

{{- define "llmcache.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "llmcache.componentName" (list . "operator")) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Service of the webhook (and the operator's health port). */}}
{{- define "llmcache.webhookService" -}}
{{- include "llmcache.componentName" (list . "webhook") }}
{{- end }}

{{/* Secret holding the webhook's serving certificate. */}}
{{- define "llmcache.webhookSecret" -}}
{{- include "llmcache.componentName" (list . "webhook-tls") }}
{{- end }}

{{/*
Cluster-scoped names carry the namespace too: releases of the same name in two
namespaces must not share a ClusterRole or webhook configuration. When
"<namespace>-<fullname>" is too long it is shortened and a hash of the whole
keeps it unique.
Usage: include "llmcache.clusterName" (list . "operator")
*/}}
{{- define "llmcache.clusterName" -}}
{{- $ctx := index . 0 }}
{{- $component := index . 1 }}
{{- $base := printf "%s-%s" $ctx.Release.Namespace (include "llmcache.fullname" $ctx) }}
{{- $room := int (sub 62 (len $component)) }}
{{- if gt (len $base) $room }}
{{- $base = printf "%s-%s" ($base | trunc (int (sub $room 9)) | trimSuffix "-") (sha256sum $base | trunc 8) }}
{{- end }}
{{- printf "%s-%s" $base $component }}
{{- end }}

{{/* The chart-generated tenant-salt Secret (release namespace; used without sidecar.tenantSalt.existingSecret). */}}
{{- define "llmcache.tenantSaltSecretName" -}}
{{- include "llmcache.componentName" (list . "tenant-salt") }}
{{- end }}

{{- define "llmcache.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* kopf peering object name: operator.peeringName, else one per release (cluster-scoped, so namespaced by name). */}}
{{- define "llmcache.peeringName" -}}
{{- default (include "llmcache.clusterName" (list . "operator")) .Values.operator.peeringName }}
{{- end }}
