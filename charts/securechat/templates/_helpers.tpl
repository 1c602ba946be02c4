{{/* Names and labels shared by every template. */}}

{{- define "securechat.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The operator's objects: Deployment, Service, ServiceAccount, RBAC. */}}
{{- define "securechat.operatorName" -}}
{{- printf "%s-operator" (include "securechat.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "securechat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "securechat.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Lease the operator replicas compete for. */}}
{{- define "securechat.leaseName" -}}
{{- include "securechat.operatorName" . -}}
{{- end -}}

{{/* Labels that select the operator's pods: immutable once installed. */}}
{{- define "securechat.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "securechat.labels" -}}
{{ include "securechat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: securechat
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "securechat.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The CUDA server image: serverImage.cuda, its empty fields taken from
serverImage (repository) and its tag or the appVersion plus "-cuda" (the
tag `make images` gives the CUDA build). */}}
{{- define "securechat.cudaServerImage" -}}
{{- $cuda := .Values.serverImage.cuda | default dict -}}
{{- $repository := default .Values.serverImage.repository $cuda.repository -}}
{{- if $cuda.digest -}}
{{- printf "%s@%s" $repository $cuda.digest -}}
{{- else -}}
{{- $tag := default (printf "%s-cuda" (default .Chart.AppVersion .Values.serverImage.tag)) $cuda.tag -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The alert relay's Deployment and Service (templates/alert-relay.yaml). */}}
{{- define "securechat.alertRelayName" -}}
{{- printf "%s-alert-relay" (include "securechat.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "securechat.alertRelaySelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: alert-relay
{{- end -}}

{{- define "securechat.alertRelayLabels" -}}
{{ include "securechat.alertRelaySelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: securechat
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Where Alertmanager posts for robot NAME: (list NAME $). */}}
{{- define "securechat.alertRelayUrl" -}}
{{- $root := index . 1 -}}
{{- printf "http://%s.%s.svc:%v/robots/%s" (include "securechat.alertRelayName" $root) $root.Release.Namespace $root.Values.alertRelay.port (index . 0) -}}
{{- end -}}
