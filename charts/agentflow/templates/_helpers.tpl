{{/* The chart name, for the app.kubernetes.io/name label. */}}
{{- define "agentflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name. Kept to 40 characters so that the longest
derived name, "<fullname>-etcd-headless" and the etcd pods' hostnames, stay
within DNS label limits.
*/}}
{{- define "agentflow.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "agentflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource; pass a dict with "ctx" (the root) and "component". */}}
{{- define "agentflow.labels" -}}
helm.sh/chart: {{ include "agentflow.chart" .ctx }}
{{ include "agentflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: agentflow
{{- end }}

{{/* The labels that select a component's pods; same arguments as agentflow.labels. */}}
{{- define "agentflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentflow.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "agentflow.operatorName" -}}
{{- include "agentflow.fullname" . }}-operator
{{- end }}

{{- define "agentflow.etcdName" -}}
{{- include "agentflow.fullname" . }}-etcd
{{- end }}

{{- define "agentflow.etcdHeadlessName" -}}
{{- include "agentflow.fullname" . }}-etcd-headless
{{- end }}

{{- define "agentflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The container securityContext shared by every container of the chart. */}}
{{- define "agentflow.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The pod securityContext shared by every pod of the chart. */}}
{{- define "agentflow.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Rejects value combinations the schema cannot express with a clear message.
Included by every template that depends on the etcd choice.
*/}}
{{- define "agentflow.validate" -}}
{{- $etcd := .Values.etcd }}
{{- if $etcd.bundled.enabled }}
{{- if or $etcd.external.endpoints $etcd.external.tls.enabled }}
{{- fail "etcd.external is only used with etcd.bundled.enabled=false: disable the bundled etcd to use an external one, or clear etcd.external" }}
{{- end }}
{{- else }}
{{- if not $etcd.external.endpoints }}
{{- fail "etcd.bundled.enabled=false needs an external etcd: set etcd.external.endpoints, e.g. --set 'etcd.external.endpoints={https://etcd-0.example:2379}'" }}
{{- end }}
{{- if and $etcd.external.tls.enabled (not $etcd.external.tls.secretName) }}
{{- fail "etcd.external.tls.enabled=true needs etcd.external.tls.secretName: a Secret with ca.crt, tls.crt and tls.key" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The operator's etcd client URLs, comma-separated. */}}
{{- define "agentflow.etcdEndpoints" -}}
{{- if .Values.etcd.bundled.enabled }}
{{- printf "http://%s.%s.svc:2379" (include "agentflow.etcdName" .) .Release.Namespace }}
{{- else }}
{{- join "," .Values.etcd.external.endpoints }}
{{- end }}
{{- end }}

{{/* What agent pods dial for the dispatcher. */}}
{{- define "agentflow.agentDispatcher" -}}
{{- if .Values.agents.dispatcherAddress }}
{{- .Values.agents.dispatcherAddress }}
{{- else }}
{{- printf "%s-dispatcher.%s.svc:%d" (include "agentflow.fullname" .) .Release.Namespace (int .Values.dispatcher.port) }}
{{- end }}
{{- end }}

{{/* The etcd members' peer URLs: name=http://name.headless.ns.svc:2380, joined by commas. */}}
{{- define "agentflow.etcdInitialCluster" -}}
{{- $name := include "agentflow.etcdName" . }}
{{- $headless := include "agentflow.etcdHeadlessName" . }}
{{- $members := list }}
{{- range $i := until (int .Values.etcd.bundled.replicas) }}
{{- $member := printf "%s-%d" $name $i }}
{{- $members = append $members (printf "%s=http://%s.%s.%s.svc:2380" $member $member $headless $.Release.Namespace) }}
{{- end }}
{{- join "," $members }}
{{- end }}
