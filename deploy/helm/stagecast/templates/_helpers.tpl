{{/*
stagecast.fullname: the prefix of every object's name: the release name if it
contains "stagecast", else "<release>-stagecast"; at most 36 characters, so
that "<fullname>-redis-cluster" stays a legal StatefulSet name (52).
*/}}
{{- define "stagecast.fullname" -}}
{{- if contains "stagecast" .Release.Name -}}
{{- .Release.Name | trunc 36 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-stagecast" .Release.Name | trunc 36 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* stagecast.labels: the labels of every object; takes (dict "root" $ "name" component). */}}
{{- define "stagecast.labels" -}}
{{ include "stagecast.selector" . }}
app.kubernetes.io/part-of: stagecast
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ include "stagecast.tag" .root | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* stagecast.selector: the labels a component's selectors match; takes (dict "root" $ "name" component). */}}
{{- define "stagecast.selector" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "stagecast.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{- define "stagecast.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "stagecast.tag" .) -}}
{{- end -}}

{{/*
stagecast.secretName: the Secret a secret is read from; takes (dict "root" $
"secret" .Values.secrets.x "path" "secrets.x" "suffix" "x"). Exactly one of
existingSecret and value must be set.
*/}}
{{- define "stagecast.secretName" -}}
{{- $s := .secret -}}
{{- if and $s.existingSecret $s.value -}}
{{- fail (printf "%s: set existingSecret or value, not both" .path) -}}
{{- else if $s.existingSecret -}}
{{- $s.existingSecret -}}
{{- else if $s.value -}}
{{- printf "%s-%s" (include "stagecast.fullname" .root) .suffix -}}
{{- else -}}
{{- fail (printf "%s: set existingSecret (a Secret you created) or value (the chart makes the Secret)" .path) -}}
{{- end -}}
{{- end -}}

{{/* stagecast.redisAddrs: the seed addresses the servers dial. */}}
{{- define "stagecast.redisAddrs" -}}
{{- if .Values.redis.bundled -}}
{{- $full := include "stagecast.fullname" . -}}
{{- $masters := div (int .Values.redis.nodes) (add1 (int .Values.redis.replicasPerMaster)) -}}
{{- $seeds := list -}}
{{- range $i := until (int $masters) -}}
{{- $seeds = append $seeds (printf "%s-redis-cluster-%d.%s-redis-cluster:6379" $full $i $full) -}}
{{- end -}}
{{- join "," $seeds -}}
{{- else if .Values.redis.addrs -}}
{{- .Values.redis.addrs -}}
{{- else -}}
{{- fail "redis.addrs: with redis.bundled false, name your Redis (host:port, comma-separated seeds)" -}}
{{- end -}}
{{- end -}}

{{/*
stagecast.spread: a component's topology spread and host anti-affinity; takes
(dict "root" $ "name" component "spread" .Values.x.topologySpread).
*/}}
{{- define "stagecast.spread" -}}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "stagecast.selector" . | nindent 14 }}
{{- if .spread.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ .spread.maxSkew }}
    topologyKey: {{ .spread.topologyKey }}
    whenUnsatisfiable: {{ .spread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "stagecast.selector" . | nindent 8 }}
{{- end }}
{{- end -}}

{{/* stagecast.placement: nodeSelector, tolerations and pull secrets; takes (dict "root" $ "c" .Values.x). */}}
{{- define "stagecast.placement" -}}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
