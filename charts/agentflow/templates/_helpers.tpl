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
Included by every template that depends on these choices.
*/}}
{{- define "agentflow.validate" -}}
{{- $etcd := .Values.etcd }}
{{- $ext := $etcd.external }}
{{- if $etcd.bundled.enabled }}
{{- if or $ext.endpoints $ext.tls.enabled $ext.auth.username $ext.auth.passwordSecret.name }}
{{- fail "etcd.external is only used with etcd.bundled.enabled=false: disable the bundled etcd to use an external one, or clear etcd.external" }}
{{- end }}
{{- else }}
{{- if not $ext.endpoints }}
{{- fail "etcd.bundled.enabled=false needs an external etcd: set etcd.external.endpoints, e.g. --set 'etcd.external.endpoints={https://etcd-0.example:2379}'" }}
{{- end }}
{{- if and $ext.tls.enabled (not $ext.tls.secretName) }}
{{- fail "etcd.external.tls.enabled=true needs etcd.external.tls.secretName: a Secret with ca.crt, tls.crt and tls.key" }}
{{- end }}
{{- if and $ext.auth.username (not $ext.auth.passwordSecret.name) }}
{{- fail "etcd.external.auth.username needs etcd.external.auth.passwordSecret.name: the Secret that holds the user's password" }}
{{- end }}
{{- if and $ext.auth.passwordSecret.name (not $ext.auth.username) }}
{{- fail "etcd.external.auth.passwordSecret needs etcd.external.auth.username: the etcd user the password belongs to" }}
{{- end }}
{{- if and .Values.backup.enabled .Values.backup.etcd.secretName (not $ext.tls.enabled) }}
{{- fail "backup.etcd.secretName is a client certificate, which needs TLS to etcd: set etcd.external.tls.enabled=true (and https endpoints), or clear backup.etcd.secretName" }}
{{- end }}
{{- end }}
{{- $cm := .Values.dispatcher.tls.certManager }}
{{- if $cm.enabled }}
{{- if not (.Capabilities.APIVersions.Has "cert-manager.io/v1") }}
{{- fail "dispatcher.tls.certManager.enabled=true needs cert-manager: this cluster does not serve cert-manager.io/v1. Install cert-manager first, or use dispatcher.tls.mode=managed (the operator's own CA). For `helm template`, pass --api-versions cert-manager.io/v1" }}
{{- end }}
{{- if not $cm.issuerRef.name }}
{{- fail "dispatcher.tls.certManager.enabled=true needs dispatcher.tls.certManager.issuerRef.name: the Issuer or ClusterIssuer that signs the dispatcher's certificate" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
agentflow's key prefix in etcd (--etcd-prefix), the operator's default: the
operator and the backup Job are given the same one.
*/}}
{{- define "agentflow.etcdKeyPrefix" -}}/agentflow/v1{{- end }}

{{/*
How one of the chart's pods reaches etcd, as YAML for fromYaml: tlsSecret, the
Secret mounted at /etc/agentflow/etcd-tls ("" for none; ca.crt, and tls.crt
and tls.key when clientCert); password, whether it logs in with
etcd.external.auth's user and password. Pass a dict with "ctx" (the root),
"bundledSecret" (its client certificate Secret with the bundled etcd) and,
optionally, "secret": a Secret with ca.crt, tls.crt and tls.key that replaces
both (the certificate's CN is then its etcd user, no password).
*/}}
{{- define "agentflow.etcdClient" -}}
{{- $ext := .ctx.Values.etcd.external }}
{{- if .secret }}
tlsSecret: {{ .secret | quote }}
clientCert: true
password: false
{{- else if .ctx.Values.etcd.bundled.enabled }}
tlsSecret: {{ .bundledSecret | quote }}
clientCert: true
password: false
{{- else }}
tlsSecret: {{ ternary $ext.tls.secretName "" $ext.tls.enabled | quote }}
clientCert: {{ and $ext.tls.enabled $ext.tls.clientCertificate }}
password: {{ not (empty $ext.auth.username) }}
{{- end }}
{{- end }}

{{/* The etcd flags of a container (list items); pass a dict with "ctx" and "client" (agentflow.etcdClient). */}}
{{- define "agentflow.etcdClientArgs" -}}
- --etcd-endpoints={{ include "agentflow.etcdEndpoints" .ctx }}
- --etcd-prefix={{ include "agentflow.etcdKeyPrefix" .ctx }}
{{- if .client.tlsSecret }}
- --etcd-ca-file=/etc/agentflow/etcd-tls/ca.crt
{{- if .client.clientCert }}
- --etcd-cert-file=/etc/agentflow/etcd-tls/tls.crt
- --etcd-key-file=/etc/agentflow/etcd-tls/tls.key
{{- end }}
{{- end }}
{{- if .client.password }}
- --etcd-username={{ .ctx.Values.etcd.external.auth.username }}
- --etcd-password-file=/etc/agentflow/etcd-auth/password
{{- end }}
{{- end }}

{{/* The volumeMounts (list items, maybe none) for the etcd flags; pass the agentflow.etcdClient dict. */}}
{{- define "agentflow.etcdClientVolumeMounts" -}}
{{- if .tlsSecret }}
- name: etcd-tls
  mountPath: /etc/agentflow/etcd-tls
  readOnly: true
{{- end }}
{{- if .password }}
- name: etcd-auth
  mountPath: /etc/agentflow/etcd-auth
  readOnly: true
{{- end }}
{{- end }}

{{/* The volumes (list items, maybe none) behind agentflow.etcdClientVolumeMounts; pass a dict with "ctx" and "client". */}}
{{- define "agentflow.etcdClientVolumes" -}}
{{- if .client.tlsSecret }}
- name: etcd-tls
  secret:
    secretName: {{ .client.tlsSecret }}
    defaultMode: 288 # 0440: owner and group (fsGroup) read
{{- end }}
{{- if .client.password }}
{{- $pw := .ctx.Values.etcd.external.auth.passwordSecret }}
- name: etcd-auth
  secret:
    secretName: {{ $pw.name }}
    defaultMode: 288 # 0440: owner and group (fsGroup) read
    items:
      - key: {{ $pw.key }}
        path: password
{{- end }}
{{- end }}

{{/* The backup CronJob, and the chart's claim for it. */}}
{{- define "agentflow.backupName" -}}
{{- include "agentflow.fullname" . }}-backup
{{- end }}

{{/* The claim the backups are written to: backup.pvc.existingClaim, or the chart's own. */}}
{{- define "agentflow.backupClaim" -}}
{{- default (include "agentflow.backupName" .) .Values.backup.pvc.existingClaim }}
{{- end }}

{{/*
The backup Job's etcd client: backup.etcd.secretName, else, with the bundled
etcd, its root client certificate (etcd serves the Snapshot API only to root
once auth is on), else the operator's own way to the external etcd.
*/}}
{{- define "agentflow.backupEtcdClient" -}}
{{- include "agentflow.etcdClient" (dict "ctx" . "bundledSecret" (include "agentflow.etcdRootSecret" .) "secret" .Values.backup.etcd.secretName) }}
{{- end }}

{{/* The operator's etcd client URLs, comma-separated. */}}
{{- define "agentflow.etcdEndpoints" -}}
{{- if .Values.etcd.bundled.enabled }}
{{- /* Every member by its stable name: the client fails over between them when one dies. */}}
{{- $name := include "agentflow.etcdName" . }}
{{- $headless := include "agentflow.etcdHeadlessName" . }}
{{- $urls := list }}
{{- range $i := until (int .Values.etcd.bundled.replicas) }}
{{- $urls = append $urls (printf "https://%s-%d.%s.%s.svc:2379" $name $i $headless $.Release.Namespace) }}
{{- end }}
{{- join "," $urls }}
{{- else }}
{{- join "," .Values.etcd.external.endpoints }}
{{- end }}
{{- end }}

{{/* The dispatcher's Service: agents dial it, and its DNS names are in the serving certificate. */}}
{{- define "agentflow.dispatcherServiceName" -}}
{{- include "agentflow.fullname" . }}-dispatcher
{{- end }}

{{/* The data API's Service: the APIService points at it, and its DNS names are in the serving certificate. */}}
{{- define "agentflow.dataApiServiceName" -}}
{{- include "agentflow.fullname" . }}-api
{{- end }}

{{/* What agent pods dial for the dispatcher. */}}
{{- define "agentflow.agentDispatcher" -}}
{{- if .Values.agents.dispatcherAddress }}
{{- .Values.agents.dispatcherAddress }}
{{- else }}
{{- printf "%s.%s.svc:%d" (include "agentflow.dispatcherServiceName" .) .Release.Namespace (int .Values.dispatcher.port) }}
{{- end }}
{{- end }}

{{/* managed or secret: a cert-manager Certificate is a Secret the operator reads. */}}
{{- define "agentflow.dispatcherTlsMode" -}}
{{- if .Values.dispatcher.tls.certManager.enabled }}secret{{ else }}{{ .Values.dispatcher.tls.mode }}{{ end }}
{{- end }}

{{- define "agentflow.dispatcherTlsSecret" -}}
{{- default (printf "%s-dispatcher-tls" (include "agentflow.fullname" .)) .Values.dispatcher.tls.secretName }}
{{- end }}

{{/*
The serving certificate's names beyond the Service's own (which the operator,
and the cert-manager Certificate, always include): dispatcher.tls.extraSANs
and the host of agents.dispatcherAddress, since agents verify the name they
dial. Comma-separated, without duplicates.
*/}}
{{- define "agentflow.dispatcherExtraSANs" -}}
{{- $sans := .Values.dispatcher.tls.extraSANs }}
{{- with .Values.agents.dispatcherAddress }}
{{- $sans = append $sans (regexReplaceAll ":[0-9]+$" . "") }}
{{- end }}
{{- join "," (uniq $sans) }}
{{- end }}

{{/* The etcd members' peer URLs: name=https://name.headless.ns.svc:2380, joined by commas. */}}
{{- define "agentflow.etcdInitialCluster" -}}
{{- $name := include "agentflow.etcdName" . }}
{{- $headless := include "agentflow.etcdHeadlessName" . }}
{{- $members := list }}
{{- range $i := until (int .Values.etcd.bundled.replicas) }}
{{- $member := printf "%s-%d" $name $i }}
{{- $members = append $members (printf "%s=https://%s.%s.%s.svc:2380" $member $member $headless $.Release.Namespace) }}
{{- end }}
{{- join "," $members }}
{{- end }}

{{/* The etcd user the operator authenticates as (the CN of its bundled client certificate). */}}
{{- define "agentflow.etcdOperatorUser" -}}agentflow-operator{{- end }}

{{/* Secret names of the bundled etcd's certificates. */}}
{{- define "agentflow.etcdCaSecret" -}}{{ include "agentflow.etcdName" . }}-ca{{- end }}
{{- define "agentflow.etcdMemberSecret" -}}{{ include "agentflow.etcdName" . }}-member{{- end }}
{{- define "agentflow.etcdOperatorSecret" -}}{{ include "agentflow.etcdName" . }}-client-operator{{- end }}
{{- define "agentflow.etcdRootSecret" -}}{{ include "agentflow.etcdName" . }}-client-root{{- end }}

{{/*
The bundled etcd's certificates (PEM strings), computed once per render and
kept on the root context as agentflowEtcdCerts, so that the Secrets and the
pods' checksum annotations agree. Upgrades keep what the cluster already
holds (lookup): the CAs while their Secret exists, each leaf while its Secret
exists and the CAs are the ones that signed it; a new CA re-issues every leaf.
Two CAs: one for clients and the server, one for members only, so that no
client certificate can join the cluster as a member.
Keys are ECDSA P-256 (fast to generate, so `helm template` stays quick).
*/}}
{{- define "agentflow.etcdCerts" -}}
{{- if not (hasKey . "agentflowEtcdCerts") }}
{{- $ns := .Release.Namespace }}
{{- $name := include "agentflow.etcdName" . }}
{{- $headless := include "agentflow.etcdHeadlessName" . }}
{{- $caDays := 3650 }}
{{- $leafDays := 1825 }}
{{- $c := dict }}
{{- $ca := "" }}
{{- $peerCa := "" }}
{{- $old := lookup "v1" "Secret" $ns (include "agentflow.etcdCaSecret" .) }}
{{- $reuse := and $old $old.data (hasKey $old.data "ca.key") (hasKey $old.data "peer-ca.key") }}
{{- if $reuse }}
{{- $ca = buildCustomCert (index $old.data "ca.crt") (index $old.data "ca.key") }}
{{- $peerCa = buildCustomCert (index $old.data "peer-ca.crt") (index $old.data "peer-ca.key") }}
{{- else }}
{{- $ca = genCAWithKey (printf "%s-ca" $name) $caDays (genPrivateKey "ecdsa") }}
{{- $peerCa = genCAWithKey (printf "%s-peer-ca" $name) $caDays (genPrivateKey "ecdsa") }}
{{- end }}
{{- $_ := set $c "ca.crt" $ca.Cert }}
{{- $_ = set $c "ca.key" $ca.Key }}
{{- $_ = set $c "peer-ca.crt" $peerCa.Cert }}
{{- $_ = set $c "peer-ca.key" $peerCa.Key }}
{{- $members := list }}
{{- range $i := until (int .Values.etcd.bundled.replicas) }}
{{- $fqdn := printf "%s-%d.%s.%s.svc" $name $i $headless $ns }}
{{- $members = append $members $fqdn }}
{{- $members = append $members (printf "%s.cluster.local" $fqdn) }}
{{- end }}
{{- $service := list $name (printf "%s.%s" $name $ns) (printf "%s.%s.svc" $name $ns) (printf "%s.%s.svc.cluster.local" $name $ns) "localhost" }}
{{- $member := dict }}
{{- if $reuse }}
{{- $member = (lookup "v1" "Secret" $ns (include "agentflow.etcdMemberSecret" .)).data | default (dict) }}
{{- end }}
{{- if and (hasKey $member "server.crt") (hasKey $member "peer.crt") }}
{{- range $k := list "server.crt" "server.key" "peer.crt" "peer.key" }}
{{- $_ := set $c $k (index $member $k | b64dec) }}
{{- end }}
{{- else }}
{{- $server := genSignedCertWithKey $name (list "127.0.0.1") (concat $members $service) $leafDays $ca (genPrivateKey "ecdsa") }}
{{- $peer := genSignedCertWithKey (printf "%s-peer" $name) nil $members $leafDays $peerCa (genPrivateKey "ecdsa") }}
{{- $_ := set $c "server.crt" $server.Cert }}
{{- $_ = set $c "server.key" $server.Key }}
{{- $_ = set $c "peer.crt" $peer.Cert }}
{{- $_ = set $c "peer.key" $peer.Key }}
{{- end }}
{{- range $who, $secret := dict "operator" (include "agentflow.etcdOperatorSecret" .) "root" (include "agentflow.etcdRootSecret" .) }}
{{- $client := dict }}
{{- if $reuse }}
{{- $client = (lookup "v1" "Secret" $ns $secret).data | default (dict) }}
{{- end }}
{{- if hasKey $client "tls.crt" }}
{{- $_ := set $c (printf "%s.crt" $who) (index $client "tls.crt" | b64dec) }}
{{- $_ = set $c (printf "%s.key" $who) (index $client "tls.key" | b64dec) }}
{{- else }}
{{- $cn := ternary (include "agentflow.etcdOperatorUser" $) "root" (eq $who "operator") }}
{{- $cert := genSignedCertWithKey $cn nil nil $leafDays $ca (genPrivateKey "ecdsa") }}
{{- $_ := set $c (printf "%s.crt" $who) $cert.Cert }}
{{- $_ = set $c (printf "%s.key" $who) $cert.Key }}
{{- end }}
{{- end }}
{{- $_ := set . "agentflowEtcdCerts" $c }}
{{- end }}
{{- end }}
