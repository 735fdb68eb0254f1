output "coordinator_security_group_id" {
  description = "Group of the coordinator and etcd hosts."
  value       = aws_security_group.coordinator.id
}

output "agent_security_group_id" {
  description = "Group of the GPU agents."
  value       = aws_security_group.agent.id
}

output "monitoring_security_group_id" {
  description = "Group of the Prometheus and Grafana host."
  value       = aws_security_group.monitoring.id
}
