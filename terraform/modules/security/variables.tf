variable "name" {
  description = "Prefix for resource names (the cluster name)."
  type        = string
}

variable "vpc_id" {
  description = "The VPC the groups belong to."
  type        = string
}

variable "client_cidrs" {
  description = "Networks whose users reach the coordinators over QUIC (7070/udp)."
  type        = list(string)
}

variable "dashboard_cidrs" {
  description = "Networks that may open Grafana (3000/tcp) and Prometheus (9090/tcp)."
  type        = list(string)
}

variable "admin_ssh_cidrs" {
  description = "Networks that may SSH to every host; empty means no SSH rule at all."
  type        = list(string)
}

variable "agents_use_etcd" {
  description = "Open etcd's client port to agents, which need it for checkpoint leases (agent --etcd)."
  type        = bool
}
