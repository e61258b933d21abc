{{- define "qis.name" -}}qis-operator{{- end -}}
{{- define "qis.fullname" -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}{{- if not (contains "qis-operator" .Release.Name) }}-qis-operator{{- end }}{{- end -}}
{{- define "qis.labels" -}}
app.kubernetes.io/name: {{ include "qis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "qis.selector" -}}
app.kubernetes.io/name: {{ include "qis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "qis.natsUrl" -}}
{{- if .Values.nats.bundled.enabled -}}nats://{{ include "qis.fullname" . }}-nats.{{ .Release.Namespace }}.svc:4222{{- else -}}{{ .Values.nats.url }}{{- end -}}
{{- end -}}
