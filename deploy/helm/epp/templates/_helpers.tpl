{{/* Labels shared by every resource; the selector subset is stable across upgrades. */}}
{{- define "epp.selectorLabels" -}}
app.kubernetes.io/name: epp
app.kubernetes.io/instance: {{ .Values.poolName }}
{{- end }}

{{- define "epp.labels" -}}
{{ include "epp.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "epp.envoySelectorLabels" -}}
app.kubernetes.io/name: epp-envoy
app.kubernetes.io/instance: {{ .Values.poolName }}
{{- end }}
