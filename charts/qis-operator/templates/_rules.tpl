{{- /*
The alert rules, as the `spec` of a PrometheusRule (also a plain Prometheus rule file).
Durations and thresholds come from .Values.metrics.prometheusRule. Prometheus' own templates
in annotations are escaped from Helm with {{` … `}}.
*/ -}}
{{- define "qis.prometheusRules" -}}
{{- $r := .Values.metrics.prometheusRule -}}
groups:
- name: qis-consensus
  rules:
  - alert: QisConsensusAlert
    # One series per subject (only the swarm's reporter exports consensus); max folds the
    # short overlap while the reporter lease moves.
    expr: max by (namespace, swarm, subject) (qis_agent_consensus_alert) == 1
    for: {{ $r.consensusAlertFor }}
    # A reporter handover can leave no exporter for a scrape or two (up to the lease, three
    # report intervals): a firing alert rides that out instead of resolving and pending again.
    keep_firing_for: {{ $r.consensusAlertKeepFiringFor }}
    labels:
      severity: {{ $r.consensusAlertSeverity }}
    annotations:
      summary: {{`'Consensus alert on {{ $labels.namespace }}/{{ $labels.subject }}'`}}
      description: {{`'The sites of swarm {{ $labels.swarm }} agree on an alert for subject {{ $labels.subject }}; kubectl describe qsub -n {{ $labels.namespace }} {{ $labels.subject }} shows the recommendation.'`}}
- name: qis-agents
  rules:
  - alert: QisAgentsNotReady
    expr: max by (namespace, swarm, site) (qis_operator_agents_desired - qis_operator_agents_ready) > 0
    for: {{ $r.agentsNotReadyFor }}
    labels:
      severity: warning
    annotations:
      summary: {{`'Agents of {{ $labels.namespace }}/{{ $labels.swarm }} at site {{ $labels.site }} are not ready'`}}
      description: {{`'{{ $value }} agent(s) short; kubectl get qsw -n {{ $labels.namespace }} {{ $labels.swarm }} -o yaml shows AgentsReady.'`}}
  - alert: QisOutboxGrowing
    # Packets wait at the edge (NATS unreachable or refusing) and their number keeps rising.
    expr: min_over_time(qis_agent_outbox_depth[{{ $r.outboxGrowingFor }}]) > 0 and deriv(qis_agent_outbox_depth[{{ $r.outboxGrowingFor }}]) > 0
    for: {{ $r.outboxGrowingFor }}
    labels:
      severity: warning
    annotations:
      summary: {{`'The outbox of {{ $labels.namespace }}/{{ $labels.pod }} keeps growing (at least {{ $value }} packets waiting)'`}}
      description: 'Deposits do not reach JetStream; the agent buffers them until its outbox limit, then drops the oldest.'
  - alert: QisConsumerLag
    expr: max by (namespace, swarm, site, subject) (qis_agent_consumer_lag) > {{ $r.consumerLagThreshold }}
    for: {{ $r.consumerLagFor }}
    labels:
      severity: warning
    annotations:
      summary: {{`'Site {{ $labels.site }} of {{ $labels.namespace }}/{{ $labels.swarm }} lags on {{ $labels.subject }} ({{ $value }} pending)'`}}
      description: 'The site takes packets in more slowly than they arrive: its consensus is behind the swarm.'
- name: qis-operator
  rules:
  - alert: QisOperatorReconcileErrors
    # Progressing is a reconcile waiting for something, not a failure.
    expr: sum by (kind, reason) (increase(qis_operator_reconcile_errors_total{reason!="Progressing"}[10m])) > 0
    for: {{ $r.reconcileErrorsFor }}
    labels:
      severity: warning
    annotations:
      summary: {{`'The operator keeps failing to reconcile {{ $labels.kind }} objects ({{ $labels.reason }})'`}}
      description: 'kubectl get qsw,qsub -A shows the objects and their conditions name the cause.'
{{- end -}}
