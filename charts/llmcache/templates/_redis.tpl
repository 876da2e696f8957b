{{/*
Redis: where the chart's Redis is, the Secrets holding its URLs, the bundled
Redis's ACL users and their passwords. Naming and labels live in _helpers.tpl.
*/}}

{{/*
Secret and key holding the Redis URL. Bundled Redis and `redis.external.url`
use a chart-made Secret; `redis.external.existingSecret` names the user's.
*/}}
{{- define "llmcache.redisSecretName" -}}
{{- if and (not .Values.redis.bundled.enabled) .Values.redis.external.existingSecret }}
{{- .Values.redis.external.existingSecret }}
{{- else }}
{{- include "llmcache.componentName" (list . "redis-url") }}
{{- end }}
{{- end }}

{{- define "llmcache.redisSecretKey" -}}
{{- if and (not .Values.redis.bundled.enabled) .Values.redis.external.existingSecret }}
{{- .Values.redis.external.existingSecretKey }}
{{- else -}}
url
{{- end }}
{{- end }}

{{/* The operator's Redis URL as the chart knows it (bundled: the operator ACL user; or external.url); "" with existingSecret. */}}
{{- define "llmcache.redisUrl" -}}
{{- if .Values.redis.bundled.enabled }}
{{- $pw := include "llmcache.redisPasswords" . | fromJson }}
{{- printf "%s://operator:%s@%s/0" (include "llmcache.redisScheme" .) $pw.operator (include "llmcache.redisHostPort" .) }}
{{- if .Values.redis.bundled.tls.enabled }}?ssl_ca_certs=/etc/llmcache/redis-tls/ca.crt{{ end }}
{{- else if .Values.redis.external.cluster.endpoints }}
{{- include "llmcache.clusterRedisUrl" (list . "operator") }}
{{- else if .Values.redis.external.url }}
{{- .Values.redis.external.url }}
{{- else if not .Values.redis.external.existingSecret }}
{{- fail "redis.bundled.enabled is false: set redis.external.url or redis.external.existingSecret (or redis.external.cluster.endpoints for a Redis Cluster)" }}
{{- end }}
{{- end }}

{{/*
URL of the external Redis Cluster for (list . "operator"): redis+cluster://
(rediss+cluster:// with tls), user and password from
redis.external.cluster.credentialsSecret (lookup: read at install/upgrade),
every seed endpoint.
*/}}
{{- define "llmcache.clusterRedisUrl" -}}
{{- $ctx := index . 0 }}{{- $who := index . 1 }}
{{- $c := $ctx.Values.redis.external.cluster }}
{{- $user := "" }}{{- $pw := "" }}
{{- if $c.credentialsSecret }}
{{- $secret := lookup "v1" "Secret" $ctx.Release.Namespace $c.credentialsSecret }}
{{- $data := (get (default dict $secret) "data") | default dict }}
{{- $user = get $data $c.usernameKey | b64dec }}
{{- $pw = get $data $c.passwordKey | b64dec }}
{{- end }}
{{- $auth := "" }}
{{- if $pw }}{{ $auth = printf "%s:%s@" ($user | urlquery) ($pw | urlquery) }}
{{- else if $user }}{{ $auth = printf "%s@" ($user | urlquery) }}{{ end }}
{{- printf "%s://%s%s" (ternary "rediss+cluster" "redis+cluster" $c.tls) $auth (join "," $c.endpoints) }}
{{- if and $c.tls $ctx.Values.redis.external.tls.caSecret }}?ssl_ca_certs=/etc/llmcache/redis-tls/ca.crt{{ end }}
{{- end }}

{{/*
The Secret and key of the Redis CA the operator mounts at /etc/llmcache/redis-tls/ca.crt
and hands to sidecars, as JSON {"secret": …, "key": …}; {} when there is none.
*/}}
{{- define "llmcache.redisCa" -}}
{{- if and .Values.redis.bundled.enabled .Values.redis.bundled.tls.enabled }}
{{- dict "secret" .Values.redis.bundled.tls.existingSecret "key" "ca.crt" | toJson }}
{{- else if and (not .Values.redis.bundled.enabled) .Values.redis.external.tls.caSecret }}
{{- dict "secret" .Values.redis.external.tls.caSecret "key" .Values.redis.external.tls.caKey | toJson }}
{{- else }}
{{- dict | toJson }}
{{- end }}
{{- end }}

{{/* The bundled Redis's Service host:port. */}}
{{- define "llmcache.redisHostPort" -}}
{{- printf "%s.%s.svc:6379" (include "llmcache.componentName" (list . "redis")) .Release.Namespace }}
{{- end }}

{{/* Secret holding the bundled Redis's ACL users (passwords and the rendered users.acl). */}}
{{- define "llmcache.redisAuthSecretName" -}}
{{- include "llmcache.componentName" (list . "redis-auth") }}
{{- end }}

{{/*
The bundled Redis's passwords as a dict {operator}: read back from the Secret on
upgrades (`lookup`), else generated. Memoised in .Values so every template of one
render sees the same ones (the ACL hashes must match the URLs). Sidecars have no
password here: each app namespace gets its own Redis user from the operator.
*/}}
{{- define "llmcache.redisPasswords" -}}
{{- if not (hasKey .Values "__redisPasswords") }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "llmcache.redisAuthSecretName" .) }}
{{- $data := ($existing | default dict).data | default dict }}
{{- $pw := dict }}
{{- range $user := list "operator" }}
{{- $key := printf "%s-password" $user }}
{{- if hasKey $data $key }}
{{- $_ := set $pw $user (index $data $key | b64dec) }}
{{- else }}
{{- $_ := set $pw $user (randAlphaNum 40) }}
{{- end }}
{{- end }}
{{- $_ := set .Values "__redisPasswords" $pw }}
{{- end }}
{{- toJson (index .Values "__redisPasswords") }}
{{- end }}

{{/*
The bundled Redis's ACL file. Least privilege per user, by key pattern and command:
- default: PING only (the probes); it reads and writes nothing;
- operator: every key under the prefix (policies, every namespace's partition for
  eviction, status and purges) and the policy channels, read/write commands without
  the @dangerous/@admin ones (no FLUSHALL, KEYS, CONFIG, DEBUG, MODULE, FUNCTION...),
  plus what it needs to give each app namespace its own user (ACL SETUSER, DELUSER,
  USERS: with SETUSER it could make any user, so its password is as sensitive as an
  admin's) and that namespace's vector index (FT.CREATE, FT.INFO; FT._LIST and
  FT.DROPINDEX to remove the index of the layout before partitions).
No sidecar user: the operator creates one per app namespace at run time
(llmcache.operator.partitions), reaching only that namespace's keys.
Passwords are stored as SHA-256 hashes (#...), never in clear in the ACL file.
*/}}
{{- define "llmcache.redisAcl" -}}
{{- $p := .Values.operator.keyPrefix }}
{{- $pw := include "llmcache.redisPasswords" . | fromJson }}
user default on nopass resetkeys resetchannels -@all +ping
user operator on #{{ sha256sum $pw.operator }} resetkeys resetchannels ~{{ $p }}:* &{{ $p }}:policies:events:* -@all +@read +@write +@transaction -@dangerous -@admin -@scripting -@pubsub +eval +evalsha +script|load +scan +publish +ping +hello +client|setinfo +client|setname +acl|setuser +acl|deluser +acl|users +ft.create +ft.info +ft._list +ft.dropindex
{{- end }}

{{/* redis:// or rediss:// for the bundled Redis. */}}
{{- define "llmcache.redisScheme" -}}
{{- if .Values.redis.bundled.tls.enabled }}rediss{{ else }}redis{{ end }}
{{- end }}

{{/* Secret holding the key the namespace users' passwords are derived from (sidecar.redisUsers: namespace). */}}
{{- define "llmcache.namespaceUsersSecretName" -}}
{{- include "llmcache.componentName" (list . "namespace-users") }}
{{- end }}
