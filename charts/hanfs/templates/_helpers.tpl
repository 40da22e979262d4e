{{/* Names, labels and image references shared by every template. */}}

{{- define "hanfs.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-hanfs, or just <release> when it already says hanfs. */}}
{{- define "hanfs.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hanfs.labels" -}}
app.kubernetes.io/name: {{ include "hanfs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.customLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "controller"). */}}
{{- define "hanfs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hanfs.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* <registry>/<repository>:<tag>; (dict "ctx" $ "image" .Values.image.controller). */}}
{{- define "hanfs.image" -}}
{{- $registry := .image.registry | default .ctx.Values.image.registry -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" $registry .image.repository (toString .image.tag) -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (toString .image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "hanfs.serviceAccount" -}}
{{- $name := index .ctx.Values.serviceAccount .component -}}
{{- $name | default (printf "%s-%s" (include "hanfs.fullname" .ctx) .component) -}}
{{- end -}}

{{/* The Secret holding the volume API's bearer token, and its key. */}}
{{- define "hanfs.tokenSecret" -}}
{{- .Values.backend.existingSecret | default (printf "%s-backend-token" (include "hanfs.fullname" .)) -}}
{{- end -}}
{{- define "hanfs.tokenKey" -}}
{{- if .Values.backend.existingSecret -}}{{ .Values.backend.existingSecretKey }}{{- else -}}token{{- end -}}
{{- end -}}

{{/* host:port of the volume API the controller calls. */}}
{{- define "hanfs.backendAddress" -}}
{{- if .Values.backend.address -}}
{{- .Values.backend.address -}}
{{- else if .Values.agent.enabled -}}
{{- printf "%s:%d" .Values.agent.vip.address (int .Values.agent.volumeApiPort) -}}
{{- else -}}
{{- fail "backend.address is required (the storage VIP's volume API, e.g. 10.0.0.100:9820), unless agent.enabled" -}}
{{- end -}}
{{- end -}}

{{/* CSIDriver fsGroupPolicy: driver.fsGroupPolicy, else File without root_squash and
None with it (kubelet's chown as root is squashed: it would fail on every file). */}}
{{- define "hanfs.fsGroupPolicy" -}}
{{- $squash := .Values.agent.nfsd.rootSquash -}}
{{- $policy := .Values.driver.fsGroupPolicy | default (ternary "None" "File" $squash) -}}
{{- if and (eq $policy "File") $squash -}}
{{- fail "driver.fsGroupPolicy=File needs agent.nfsd.rootSquash=false: under root_squash kubelet's chown as root acts as nobody and fails on every file (set the storage servers' nfsd.root_squash to false too, or use None)" -}}
{{- end -}}
{{- $policy -}}
{{- end -}}

{{/* The NFS server nodes mount: backend.nfsServer, else the host of the backend address. */}}
{{- define "hanfs.nfsServer" -}}
{{- if .Values.backend.nfsServer -}}
{{- .Values.backend.nfsServer -}}
{{- else -}}
{{- $addr := include "hanfs.backendAddress" . -}}
{{- if hasPrefix "[" $addr -}}
{{- regexReplaceAll "^\\[([^]]*)\\].*$" $addr "${1}" -}}
{{- else -}}
{{- regexReplaceAll ":[0-9]+$" $addr "" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The kubelet plugin directory of this driver (its CSI socket lives there). */}}
{{- define "hanfs.pluginDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.kubeletDir) .Values.driver.name -}}
{{- end -}}



{{/* The part every controller sidecar shares: no privileges, the CSI socket. */}}
{{- define "hanfs.sidecarCommon" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
resources:
  {{- toYaml .resources | nindent 2 }}
volumeMounts:
  - name: socket-dir
    mountPath: /csi
{{- end -}}

{{/* The host part of the backend address (the VIP): what its certificate must name. */}}
{{- define "hanfs.backendHost" -}}
{{- $addr := include "hanfs.backendAddress" . -}}
{{- if hasPrefix "[" $addr -}}
{{- regexReplaceAll "^\\[([^]]*)\\].*$" $addr "${1}" -}}
{{- else -}}
{{- regexReplaceAll ":[0-9]+$" $addr "" -}}
{{- end -}}
{{- end -}}

{{/* The Secrets holding the volume API's mutual TLS: the controller's client side and
     the storage servers' server side (ca.crt, tls.crt, tls.key each). */}}
{{- define "hanfs.tlsClientSecret" -}}
{{- .Values.tls.existingSecret | default (printf "%s-tls-client" (include "hanfs.fullname" .)) -}}
{{- end -}}
{{- define "hanfs.tlsServerSecret" -}}
{{- .Values.tls.existingServerSecret | default (printf "%s-tls-server" (include "hanfs.fullname" .)) -}}
{{- end -}}
