# Security groups, one per role, each opening only what that role needs:
#
#   coordinator (with the co-located etcd member)
#     in:  7070/udp QUIC from agents and from client_cidrs
#          2379/tcp etcd client from coordinators and agents (agents hold checkpoint leases)
#          2380/tcp etcd peer from coordinators only
#          9464/tcp metrics and web view from the monitoring host
#   agent
#     in:  9465/tcp metrics from the monitoring host
#     out: 7070/udp and 2379/tcp to the coordinators; 80 and 443 for packages, S3 and AWS APIs
#   monitoring
#     in:  3000/tcp Grafana and 9090/tcp Prometheus from dashboard_cidrs
#     out: 9464/tcp to coordinators, 9465/tcp to agents; 80 and 443
#
# SSH (22/tcp) is opened only from admin_ssh_cidrs, which is empty by default: reach the hosts
# through SSM Session Manager instead (see terraform/README.md).
#
# Rules are separate resources (not inline blocks) because the groups refer to each other.

locals {
  # Outbound web traffic: package mirrors (Ubuntu's EC2 mirrors answer on plain HTTP), and
  # HTTPS for S3, SSM, the Auto Scaling API and NVIDIA's repository.
  web_ports = {
    http  = 80
    https = 443
  }

  ssh_groups = {
    coordinator = aws_security_group.coordinator.id
    agent       = aws_security_group.agent.id
    monitoring  = aws_security_group.monitoring.id
  }

  ssh_rules = {
    for pair in setproduct(keys(local.ssh_groups), var.admin_ssh_cidrs) :
    "${pair[0]}-${pair[1]}" => { group = pair[0], cidr = pair[1] }
  }
}

resource "aws_security_group" "coordinator" {
  #checkov:skip=CKV2_AWS_5:Attached in modules/control through this module's output; checkov's graph does not follow module outputs.
  name_prefix = "${var.name}-coordinator-"
  description = "Flotilla coordinators and the etcd members on the same hosts"
  vpc_id      = var.vpc_id

  tags = {
    Name = "${var.name}-coordinator"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "agent" {
  #checkov:skip=CKV2_AWS_5:Attached in modules/agents through this module's output; checkov's graph does not follow module outputs.
  name_prefix = "${var.name}-agent-"
  description = "Flotilla GPU agents"
  vpc_id      = var.vpc_id

  tags = {
    Name = "${var.name}-agent"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "monitoring" {
  #checkov:skip=CKV2_AWS_5:Attached in modules/monitoring through this module's output; checkov's graph does not follow module outputs.
  name_prefix = "${var.name}-monitoring-"
  description = "Prometheus and Grafana"
  vpc_id      = var.vpc_id

  tags = {
    Name = "${var.name}-monitoring"
  }

  lifecycle {
    create_before_destroy = true
  }
}

# --- coordinator: inbound ---------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "coordinator_quic_from_agents" {
  security_group_id            = aws_security_group.coordinator.id
  description                  = "QUIC from agents"
  ip_protocol                  = "udp"
  from_port                    = 7070
  to_port                      = 7070
  referenced_security_group_id = aws_security_group.agent.id
}

resource "aws_vpc_security_group_ingress_rule" "coordinator_quic_from_clients" {
  for_each = toset(var.client_cidrs)

  security_group_id = aws_security_group.coordinator.id
  description       = "QUIC from clients (sweep submit, cluster admin)"
  ip_protocol       = "udp"
  from_port         = 7070
  to_port           = 7070
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "coordinator_quic_between_replicas" {
  security_group_id            = aws_security_group.coordinator.id
  description                  = "QUIC between coordinator replicas (cluster status from any host)"
  ip_protocol                  = "udp"
  from_port                    = 7070
  to_port                      = 7070
  referenced_security_group_id = aws_security_group.coordinator.id
}

resource "aws_vpc_security_group_ingress_rule" "etcd_client_from_coordinators" {
  security_group_id            = aws_security_group.coordinator.id
  description                  = "etcd client API from coordinators"
  ip_protocol                  = "tcp"
  from_port                    = 2379
  to_port                      = 2379
  referenced_security_group_id = aws_security_group.coordinator.id
}

resource "aws_vpc_security_group_ingress_rule" "etcd_client_from_agents" {
  count = var.agents_use_etcd ? 1 : 0

  security_group_id            = aws_security_group.coordinator.id
  description                  = "etcd client API from agents (checkpoint leases)"
  ip_protocol                  = "tcp"
  from_port                    = 2379
  to_port                      = 2379
  referenced_security_group_id = aws_security_group.agent.id
}

resource "aws_vpc_security_group_ingress_rule" "etcd_peer" {
  security_group_id            = aws_security_group.coordinator.id
  description                  = "etcd peer traffic between members"
  ip_protocol                  = "tcp"
  from_port                    = 2380
  to_port                      = 2380
  referenced_security_group_id = aws_security_group.coordinator.id
}

resource "aws_vpc_security_group_ingress_rule" "coordinator_metrics" {
  security_group_id            = aws_security_group.coordinator.id
  description                  = "Coordinator metrics and web view from Prometheus"
  ip_protocol                  = "tcp"
  from_port                    = 9464
  to_port                      = 9464
  referenced_security_group_id = aws_security_group.monitoring.id
}

# --- coordinator: outbound --------------------------------------------------------------

resource "aws_vpc_security_group_egress_rule" "coordinator_web" {
  for_each = local.web_ports

  security_group_id = aws_security_group.coordinator.id
  description       = "Coordinator ${each.key} out: packages, Auto Scaling API, SSM, webhooks"
  ip_protocol       = "tcp"
  from_port         = each.value
  to_port           = each.value
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "coordinator_etcd_client" {
  security_group_id            = aws_security_group.coordinator.id
  description                  = "etcd client API to the members"
  ip_protocol                  = "tcp"
  from_port                    = 2379
  to_port                      = 2379
  referenced_security_group_id = aws_security_group.coordinator.id
}

resource "aws_vpc_security_group_egress_rule" "coordinator_etcd_peer" {
  security_group_id            = aws_security_group.coordinator.id
  description                  = "etcd peer traffic between members"
  ip_protocol                  = "tcp"
  from_port                    = 2380
  to_port                      = 2380
  referenced_security_group_id = aws_security_group.coordinator.id
}

resource "aws_vpc_security_group_egress_rule" "coordinator_quic_between_replicas" {
  security_group_id            = aws_security_group.coordinator.id
  description                  = "QUIC between coordinator replicas"
  ip_protocol                  = "udp"
  from_port                    = 7070
  to_port                      = 7070
  referenced_security_group_id = aws_security_group.coordinator.id
}

# --- agent ------------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "agent_metrics" {
  security_group_id            = aws_security_group.agent.id
  description                  = "Agent metrics from Prometheus"
  ip_protocol                  = "tcp"
  from_port                    = 9465
  to_port                      = 9465
  referenced_security_group_id = aws_security_group.monitoring.id
}

resource "aws_vpc_security_group_egress_rule" "agent_quic" {
  security_group_id            = aws_security_group.agent.id
  description                  = "QUIC to the coordinators"
  ip_protocol                  = "udp"
  from_port                    = 7070
  to_port                      = 7070
  referenced_security_group_id = aws_security_group.coordinator.id
}

resource "aws_vpc_security_group_egress_rule" "agent_etcd" {
  count = var.agents_use_etcd ? 1 : 0

  security_group_id            = aws_security_group.agent.id
  description                  = "etcd client API (checkpoint leases)"
  ip_protocol                  = "tcp"
  from_port                    = 2379
  to_port                      = 2379
  referenced_security_group_id = aws_security_group.coordinator.id
}

resource "aws_vpc_security_group_egress_rule" "agent_web" {
  for_each = local.web_ports

  security_group_id = aws_security_group.agent.id
  description       = "Agent ${each.key} out: packages, S3, SSM, trial dependencies"
  ip_protocol       = "tcp"
  from_port         = each.value
  to_port           = each.value
  cidr_ipv4         = "0.0.0.0/0"
}

# --- monitoring -------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "grafana" {
  for_each = toset(var.dashboard_cidrs)

  security_group_id = aws_security_group.monitoring.id
  description       = "Grafana"
  ip_protocol       = "tcp"
  from_port         = 3000
  to_port           = 3000
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "prometheus" {
  for_each = toset(var.dashboard_cidrs)

  security_group_id = aws_security_group.monitoring.id
  description       = "Prometheus web UI and API"
  ip_protocol       = "tcp"
  from_port         = 9090
  to_port           = 9090
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "monitoring_scrape_coordinators" {
  security_group_id            = aws_security_group.monitoring.id
  description                  = "Scrape coordinator metrics"
  ip_protocol                  = "tcp"
  from_port                    = 9464
  to_port                      = 9464
  referenced_security_group_id = aws_security_group.coordinator.id
}

resource "aws_vpc_security_group_egress_rule" "monitoring_scrape_agents" {
  security_group_id            = aws_security_group.monitoring.id
  description                  = "Scrape agent metrics"
  ip_protocol                  = "tcp"
  from_port                    = 9465
  to_port                      = 9465
  referenced_security_group_id = aws_security_group.agent.id
}

resource "aws_vpc_security_group_egress_rule" "monitoring_web" {
  for_each = local.web_ports

  security_group_id = aws_security_group.monitoring.id
  description       = "Monitoring ${each.key} out: packages, EC2 API for discovery, SSM"
  ip_protocol       = "tcp"
  from_port         = each.value
  to_port           = each.value
  cidr_ipv4         = "0.0.0.0/0"
}

# --- SSH, only when admin_ssh_cidrs is set ----------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each = local.ssh_rules

  security_group_id = local.ssh_groups[each.value.group]
  description       = "SSH from an administrator network"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value.cidr
}
