{{/* What the webhook injects: values the operator hands to every sidecar. */}}

{{/* Where sidecars send misses: sidecar.upstream, else the chart's model server (FQDN: sidecars run in other
namespaces). With more than one model-server replica, every replica's address through the headless Service
(dns+http://…): the sidecars route each miss to the replica holding its prefix (llmcache.proxy.routing). */}}
{{- define "llmcache.sidecarUpstream" -}}
{{- if .Values.sidecar.upstream }}
{{- .Values.sidecar.upstream }}
{{- else if and .Values.modelServer.enabled (gt (int .Values.modelServer.replicas) 1) }}
{{- printf "dns+http://%s.%s.svc:%d" (include "llmcache.componentName" (list . "model-server-headless")) .Release.Namespace (int .Values.modelServer.port) }}
{{- else if .Values.modelServer.enabled }}
{{- printf "http://%s.%s.svc:%d" (include "llmcache.componentName" (list . "model-server")) .Release.Namespace (int .Values.modelServer.port) }}
{{- else }}
{{- fail "modelServer.enabled is false: set sidecar.upstream to your OpenAI-compatible server's URL" }}
{{- end }}
{{- end }}
