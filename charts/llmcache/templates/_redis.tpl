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
URL of the external Redis Cluster for (list . "operator"|"sidecar"):
redis+cluster:// (rediss+cluster:// with tls), user and password from
redis.external.cluster.credentialsSecret (lookup: read at install/upgrade; the
sidecar keys fall back to the operator's), every seed endpoint.
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
{{- if eq $who "sidecar" }}
{{- $user = get $data $c.sidecarUsernameKey | b64dec | default $user }}
{{- $pw = get $data $c.sidecarPasswordKey | b64dec | default $pw }}
{{- end }}
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
The bundled Redis's passwords as a dict {operator, sidecar}: read back from the
Secret on upgrades (`lookup`), else generated. Memoised in .Values so every
template of one render sees the same ones (the ACL hashes must match the URLs).
*/}}
{{- define "llmcache.redisPasswords" -}}
{{- if not (hasKey .Values "__redisPasswords") }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "llmcache.redisAuthSecretName" .) }}
{{- $data := ($existing | default dict).data | default dict }}
{{- $pw := dict }}
{{- range $user := list "operator" "sidecar" }}
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
- operator: every key under the prefix (policies, eviction, status) and the policy
  channel, read/write commands without the @dangerous/@admin ones (no FLUSHALL,
  KEYS, CONFIG, DEBUG, MODULE, FUNCTION, ACL...);
- sidecar: entries, vector docs and index, eviction bookkeeping, stats, leases and
  acks; the policies READ-ONLY (%R~): a pod cannot rewrite anyone's policy.
Passwords are stored as SHA-256 hashes (#...), never in clear in the ACL file.
*/}}
{{- define "llmcache.redisAcl" -}}
{{- $p := .Values.operator.keyPrefix }}
{{- $pw := include "llmcache.redisPasswords" . | fromJson }}
user default on nopass resetkeys resetchannels -@all +ping
user operator on #{{ sha256sum $pw.operator }} resetkeys resetchannels ~{{ $p }}:* &{{ $p }}:policies:events -@all +@read +@write +@transaction -@dangerous -@admin -@scripting -@pubsub +eval +evalsha +script|load +scan +publish +ping +hello +client|setinfo +client|setname
user sidecar on #{{ sha256sum $pw.sidecar }} resetkeys resetchannels ~{{ $p }}:e:* ~{{ $p }}:v:* ~{{ $p }}:vevents ~{{ $p }}:vidx* ~{{ $p }}:g:* ~{{ $p }}:stats:* ~{{ $p }}:lease:* ~{{ $p }}:acks:* %R~{{ $p }}:policies:* &{{ $p }}:policies:events -@all +get +set +mget +exists +del +unlink +expire +hset +hget +hgetall +hmget +hincrby +hdel +zadd +zincrby +zrem +zrangebyscore +pttl +pexpire +time +xadd +xread +xrange +xrevrange +scan +eval +evalsha +script|load +multi +exec +discard +subscribe +unsubscribe +ping +hello +client|setinfo +client|setname +ft.search +ft.create +ft.info +ft._list
{{- end }}

{{/* redis:// or rediss:// for the bundled Redis. */}}
{{- define "llmcache.redisScheme" -}}
{{- if .Values.redis.bundled.tls.enabled }}rediss{{ else }}redis{{ end }}
{{- end }}

{{/* The sidecars' Redis URL as the chart knows it (bundled: the sidecar ACL user; external: sidecarUrl, else url). */}}
{{- define "llmcache.sidecarRedisUrl" -}}
{{- if .Values.redis.bundled.enabled }}
{{- $pw := include "llmcache.redisPasswords" . | fromJson }}
{{- printf "%s://sidecar:%s@%s/0" (include "llmcache.redisScheme" .) $pw.sidecar (include "llmcache.redisHostPort" .) }}
{{- if .Values.redis.bundled.tls.enabled }}?ssl_ca_certs=/etc/llmcache/redis-tls/ca.crt{{ end }}
{{- else if .Values.redis.external.cluster.endpoints }}
{{- include "llmcache.clusterRedisUrl" (list . "sidecar") }}
{{- else }}
{{- default .Values.redis.external.url .Values.redis.external.sidecarUrl }}
{{- end }}
{{- end }}

{{/* Key of the sidecars' URL in the Redis URL Secret. */}}
{{- define "llmcache.sidecarRedisSecretKey" -}}
{{- if and (not .Values.redis.bundled.enabled) .Values.redis.external.existingSecret }}
{{- default .Values.redis.external.existingSecretKey .Values.redis.external.existingSecretSidecarKey }}
{{- else -}}
sidecar-url
{{- end }}
{{- end }}
